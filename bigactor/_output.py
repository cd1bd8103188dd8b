"""One machine's output on its way to the driver's stderr.

Lines are queued as the machine's output is read and written by a task of their own, so a
driver whose stderr is slow or blocked never stops the reading, and so never blocks a worker on
a full pipe. Past ``limit`` bytes of queued output the oldest lines are dropped and counted; the
next write says so (``addr: [... 123 lines (4567 bytes) of output dropped ...]``).

Lines printed before the machine answers its first call (interpreter start-up noise) are held,
not shown; they are shown only if the machine fails to boot (they also go into its error).

Output trouble never touches the cluster: a driver whose stderr is closed (``2>&-``, so
``sys.stderr`` is None), broken (``prog 2>&1 | head``) or failing in any other way loses the
lines it cannot write, and they are counted (``dropped_lines``, ``dropped_bytes``; the machine's
status shows them), never raised.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections import deque
from collections.abc import Callable

import trio

log = logging.getLogger("bigactor.output")

LIMIT = 512 * 1024
HELD_LINES = 200
#: the longest line passed on whole; a longer one is passed on in pieces of this size
MAX_LINE = 64 * 1024


class Unwritable(Exception):
    """The driver has no stderr to write to (it was closed before the program started)."""


def _write_stderr(text: str) -> None:
    # Looked up at each write: the program may replace sys.stderr at any time. Never fd 2
    # itself: when stderr was closed at start-up, fd 2 may since have been reused by a socket.
    stream = sys.stderr
    if stream is None:
        raise Unwritable("sys.stderr is None")
    stream.write(text)
    stream.flush()


class LineSplitter:
    """Split a byte stream into text lines, in time linear in its length.

    A line longer than ``MAX_LINE`` bytes is passed on in pieces of ``MAX_LINE`` (nothing is
    lost, and a 100 MB line with no newline costs one pass, not a quadratic re-scan).
    """

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self._max = max_line
        self._parts: list[bytes] = []
        self._size = 0
        self._continued = False  # pieces of the current line were passed on already

    def feed(self, chunk: bytes) -> list[str]:
        """The lines completed by ``chunk``."""
        out: list[str] = []
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            self._add(chunk[start:end], out)
            out.extend(self._flush(whole=True))
            start = end + 1
        self._add(chunk[start:], out)
        return out

    def _add(self, data: bytes, out: list[str]) -> None:
        if data:
            self._parts.append(data)
            self._size += len(data)
        if self._size >= self._max:
            out.extend(self._flush(whole=False))

    def _flush(self, whole: bool) -> list[str]:
        data = b"".join(self._parts)
        cut = len(data) if whole else len(data) - len(data) % self._max
        pieces = [data[i : min(i + self._max, cut)] for i in range(0, cut, self._max)] or [b""]
        rest = data[cut:]
        self._parts = [rest] if rest else []
        self._size = len(rest)
        continued, self._continued = self._continued, not whole
        if not pieces[0] and (continued or not whole):
            return []  # the newline right after a line's last full piece ends it: no empty line
        return [p.decode(errors="replace") for p in pieces]

    def finish(self) -> list[str]:
        """What is left after the stream ended (a last line with no newline)."""
        return self._flush(whole=True) if self._size else []


class Output:
    """A machine's queued output lines; see the module docstring."""

    def __init__(self, prefix: str, write: Callable[[str], None] = _write_stderr, limit: int = LIMIT) -> None:
        self._prefix = prefix
        self._write = write
        self._limit = limit
        self._lines: deque[str] = deque()
        self._bytes = 0
        self._dropped_lines = 0
        self._dropped_bytes = 0
        #: lines (and their bytes) lost so far: to a full queue, or to a stderr that failed
        self.dropped_lines = 0
        self.dropped_bytes = 0
        self._write_failed = False
        self._held: deque[str] | None = deque(maxlen=HELD_LINES)
        self._wake = trio.Event()
        self._closed = False
        self._drained = trio.Event()
        self._drained.set()

    def line(self, text: str) -> None:
        """Queue one line (never blocks)."""
        if self._held is not None:
            self._held.append(text)
            return
        self._push(text)

    def _push(self, text: str) -> None:
        self._lines.append(text)
        self._bytes += len(text)
        while self._bytes > self._limit and len(self._lines) > 1:
            old = self._lines.popleft()
            self._bytes -= len(old)
            self._dropped_lines += 1
            self._dropped_bytes += len(old) + 1
            self.dropped_lines += 1
            self.dropped_bytes += len(old) + 1
        self._drained = trio.Event() if self._drained.is_set() else self._drained
        self._wake.set()

    def start_printing(self) -> None:
        """The machine is up: drop the held start-up lines and show what comes next."""
        self._held = None

    def show_held(self) -> None:
        """The machine failed to boot: show the held start-up lines after all."""
        held, self._held = self._held, None
        for text in held or ():
            self._push(text)

    def close(self) -> None:
        """No more lines will come; the writer ends once it has written the queue."""
        if self._held:
            self.show_held()
        self._closed = True
        self._wake.set()

    async def drained(self) -> None:
        """Wait until every queued line is written."""
        await self._drained.wait()

    async def run(self) -> None:
        """Write queued lines until closed and empty (the lines of one batch in one write)."""
        while True:
            if not self._lines:
                self._drained.set()
                if self._closed:
                    return
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            batch = []
            if self._dropped_lines:
                batch.append(
                    f"{self._prefix}[... {self._dropped_lines} lines ({self._dropped_bytes} bytes) "
                    "of output dropped: the driver's stderr did not keep up ...]\n"
                )
                self._dropped_lines = self._dropped_bytes = 0
            lines = len(self._lines)
            while self._lines:
                text = self._lines.popleft()
                self._bytes -= len(text)
                batch.append(f"{self._prefix}{text}\n")
            text = "".join(batch)
            try:
                # A thread, so that a blocked stderr blocks only this writer.
                await trio.to_thread.run_sync(self._write, text, abandon_on_cancel=True)
            except Exception as exc:
                # Closed, broken or failing stderr: these lines are lost, counted, not raised.
                self.dropped_lines += lines
                self.dropped_bytes += len(text)
                if not self._write_failed:
                    self._write_failed = True
                    # A handler on that same broken stderr may raise too (logging lets a
                    # closed stream's ValueError out): a log line is not worth the cluster.
                    with contextlib.suppress(Exception):
                        log.warning(
                            "%scannot write output to the driver's stderr (%r); counting what is dropped",
                            self._prefix,
                            exc,
                        )
