"""A worker's own stdout and stderr, captured for a driver that cannot read its process's pipes.

On the local system the driver reads each worker's output from a pipe; a worker on another host
has no such pipe, so it captures its own: file descriptors 1 and 2 become the write end of one
pipe (both streams, in the order written, as the local system's single pipe gives them), and a
thread reads it into a bounded buffer that the driver drains through ``Supervisor.output``.

The thread reads whatever the process writes, from Python or C, at once: a writer never waits
for the driver. ``sys.stdout`` and ``sys.stderr`` write through while captured (as a local
worker's, started with ``PYTHONUNBUFFERED``), so a line printed is a line the driver can see.

The buffer holds at most ``limit`` bytes (1 MiB by default); when a driver that does not keep
up lets it fill, the oldest output is dropped, counted (``dropped_bytes``), and
the driver's next read begins with a line saying how much (``[... 123 bytes of output dropped on
the machine: the driver did not read them in time ...]``). So a slow or absent driver costs the
worker at most ``limit`` bytes of memory, never a blocked write.

At a clean shutdown (:meth:`OutputCapture.finish`) the descriptors are given back, everything
written before is read, the sync marker goes last, and the worker waits (bounded) for the driver
to close its stream after reading it: only then can it exit without losing a line.
"""

from __future__ import annotations

import contextlib
import functools
import io
import os
import select
import sys
import threading
from collections import deque
from typing import Any

import trio

#: bytes of output held for the driver at most
LIMIT = 1 << 20
#: the most bytes handed out in one piece
PIECE = 256 * 1024
#: seconds a clean shutdown waits for what was written to be read, then for the driver to
#: take the last of it (the driver itself waits 5 s before it kills the machine)
FINISH_GRACE = 2.0


class OutputCapture:
    """The capture of this process's fds 1 and 2; see the module docstring.

    Run it with ``await nursery.start(capture.run)``: fds 1 and 2 are captured once it has
    started and given back when it is cancelled. One per process.
    """

    def __init__(self, limit: int = LIMIT) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._chunks: deque[bytes] = deque()  # guarded by _lock, as the three below
        self._size = 0
        self._unreported = 0  # bytes dropped since the driver was last told
        self._signalled = False  # a wake-up is on its way to the Trio thread
        #: bytes dropped so far because the buffer was full
        self.dropped_bytes = 0
        self._newline = True  # the last byte handed out ended a line
        self._wake = trio.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._saved: tuple[int, int] | None = None
        self._streams: tuple[Any, Any, Any, Any] | None = None  # sys's streams: before, ours
        self._eof = trio.Event()
        self._ended = False  # the sync marker is in: nothing comes after it
        self._taken = trio.Event()  # the driver closed its stream after the end
        self._reader = 0  # the subscriber now reading (a newer one replaces an older)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Capture fds 1 and 2 until cancelled, then give them back and stop the reader thread."""
        self._token = trio.lowlevel.current_trio_token()
        read_end, write_end = os.pipe()
        stop_r, stop_w = os.pipe()
        try:
            with contextlib.suppress(Exception):  # a closed or broken stream has nothing to flush
                sys.stdout.flush()
                sys.stderr.flush()
            self._saved = (os.dup(1), os.dup(2))
            os.dup2(write_end, 1)
            os.dup2(write_end, 2)
            os.close(write_end)
            write_end = -1
            out, err = _unbuffered(sys.stdout, 1), _unbuffered(sys.stderr, 2)
            self._streams = (sys.stdout, sys.stderr, out, err)
            sys.stdout, sys.stderr = out, err
            async with trio.open_nursery() as nursery:
                reader = functools.partial(trio.to_thread.run_sync, self._read, read_end, stop_r)
                nursery.start_soon(reader, name="output capture")
                task_status.started()
                try:
                    await trio.sleep_forever()
                finally:
                    self.release()
                    os.write(stop_w, b"x")  # the thread reads what is left, then returns
        finally:
            for fd in (read_end, write_end, stop_r, stop_w, *(self._saved or ())):
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            self._saved = None

    def release(self) -> None:
        """Give fds 1 and 2 back to what they were (idempotent): once every other process that
        inherited them has closed them too, the reader sees the end of the pipe."""
        saved, self._saved = self._saved, None
        if saved is None:
            return
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        streams, self._streams = self._streams, None
        if streams is not None:
            # Only streams still ours go back: the program may have replaced them since.
            if sys.stdout is streams[2]:
                sys.stdout = streams[0]
            if sys.stderr is streams[3]:
                sys.stderr = streams[1]
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)

    # -- the reader thread ---------------------------------------------------------------

    def _read(self, fd: int, stop: int) -> None:
        """Read ``fd`` into the buffer until its end, or until ``stop`` is readable (then read
        what is there without waiting)."""
        poll = select.poll()
        poll.register(fd, select.POLLIN)
        poll.register(stop, select.POLLIN)
        try:
            while True:
                ready = {f for f, _ in poll.poll()}
                if fd in ready:
                    data = os.read(fd, 65536)
                    if not data:
                        return
                    self._add(data)
                elif stop in ready:
                    os.set_blocking(fd, False)
                    with contextlib.suppress(BlockingIOError):
                        while data := os.read(fd, 65536):
                            self._add(data)
                    return
        finally:
            self._signal(self._eof.set)

    def _add(self, data: bytes) -> None:
        with self._lock:
            self._chunks.append(data)
            self._size += len(data)
            while self._size > self._limit and len(self._chunks) > 1:
                old = self._chunks.popleft()
                self._size -= len(old)
                self._unreported += len(old)
                self.dropped_bytes += len(old)
            if self._signalled:
                return
            self._signalled = True
        self._signal(self._notify)

    def _signal(self, fn: Any) -> None:
        assert self._token is not None
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(fn)

    # -- the Trio side -------------------------------------------------------------------

    def _notify(self) -> None:
        with self._lock:
            self._signalled = False
        self._wake.set()
        self._wake = trio.Event()

    def subscribe(self) -> int:
        """Become the one reader (an older reader's :meth:`take` returns None from now on)."""
        self._reader += 1
        self._notify()
        return self._reader

    async def take(self, reader: int) -> bytes | None:
        """The output captured since the last take (at most ``PIECE`` bytes), waiting for some;
        None once a newer reader took over. After the end it waits forever: the reader is to
        close its stream, which :meth:`closed` reports."""
        while reader == self._reader:
            with self._lock:
                parts: list[bytes] = []
                size = 0
                while self._chunks and size < PIECE:
                    chunk = self._chunks.popleft()
                    if size + len(chunk) > PIECE:
                        cut = PIECE - size
                        self._chunks.appendleft(chunk[cut:])
                        chunk = chunk[:cut]
                    parts.append(chunk)
                    size += len(chunk)
                self._size -= size
                dropped, self._unreported = self._unreported, 0
            if dropped:
                parts.insert(
                    0,
                    f"{'' if self._newline else chr(10)}[... {dropped} bytes of output dropped on "
                    "the machine: the driver did not read them in time ...]\n".encode(),
                )
            if parts:
                data = b"".join(parts)
                self._newline = data.endswith(b"\n")
                return data
            await self._wake.wait()
        return None

    def closed(self, reader: int) -> None:
        """The stream of ``reader`` ended (its driver closed it, or its connection broke)."""
        if reader == self._reader and self._ended:
            with self._lock:
                empty = not self._chunks
            if empty:
                self._taken.set()

    async def finish(self, marker: str, grace: float = FINISH_GRACE) -> None:
        """End the output with ``marker`` (its last line) and wait until the driver took it.

        Gives fds 1 and 2 back, waits up to ``grace`` s for what was written before to be read
        (longer only if another process still holds them), puts the marker last, then waits up
        to ``grace`` s for the driver to close its stream after reading it. Cancelling it stops
        the waits.
        """
        self.release()
        with trio.move_on_after(grace):
            await self._eof.wait()
        self._add(f"{marker}\n".encode())  # after a line left open too, as on a pipe
        self._ended = True
        self._notify()
        with trio.move_on_after(grace):
            await self._taken.wait()


def _unbuffered(stream: Any, fd: int) -> io.TextIOWrapper:
    """A text stream on ``fd`` that writes through (no buffer to lose at exit), with the
    encoding and error handler of ``stream``, the one it replaces."""
    return io.TextIOWrapper(
        io.FileIO(fd, "w", closefd=False),
        encoding=getattr(stream, "encoding", None) or "utf-8",
        errors=getattr(stream, "errors", None) or "backslashreplace",
        write_through=True,
    )
