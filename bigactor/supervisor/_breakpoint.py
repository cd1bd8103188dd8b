"""``breakpoint()`` in an actor: a pdb session in the driver's terminal.

A local worker's standard input is one end of a socket pair whose other end the driver holds
(nothing else can write to it: it was never anywhere but in the two processes). The worker's
``sys.breakpointhook`` starts :class:`RemotePdb` on the caller's frame, with that socket as
its terminal: pdb's output and prompts go to the driver as messages, and each line it reads
comes back from the driver's terminal (``bigactor._console``). The I/O is plain blocking
socket I/O in the thread that called ``breakpoint()``, so it works the same in a sync method
(on the actor's thread, while the machine serves on) and in an async one (where the machine's
event loop waits with it).

Messages are JSON lines. Worker to driver: ``{"t": "open", "where": ...}`` when pdb stops,
``{"t": "out", "d": text}``, ``{"t": "in"}`` when pdb waits for a line, ``{"t": "close"}``
when the program runs on. Driver to worker: ``{"d": line}`` (``""`` at the driver's end of
input), or ``{"intr": true}`` for a Ctrl-C in the driver's terminal, raised as
KeyboardInterrupt in pdb's prompt (pdb says so and prompts again).

Several threads may stop at once: one session at a time per worker (a lock), and the driver
shows one session at a time across the cluster.
"""

from __future__ import annotations

import json
import linecache
import math
import os
import pdb
import queue
import socket
import stat
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import trio

_lock = threading.RLock()  # one session at a time in this worker (re-entered by its own steps)
_channel: _Channel | None = None
_on_resume: Callable[[], None] = lambda: None  # noqa: E731 - set by install


class _Channel:
    """pdb's terminal: a file-like object whose lines travel to and from the driver."""

    def send(self, message: dict[str, Any]) -> None:
        raise NotImplementedError

    def receive(self) -> dict[str, Any] | None:
        """The driver's next reply (None: the driver is gone)."""
        raise NotImplementedError

    def refusal(self) -> str | None:
        """Why no session can start in this thread, or None."""
        return None

    # -- what pdb uses of stdin and stdout --
    def write(self, text: str) -> int:
        if text:
            self.send({"t": "out", "d": text})
        return len(text)

    def flush(self) -> None:
        pass

    def readline(self) -> str:
        self.send({"t": "in"})
        reply = self.receive()
        if reply is None:
            return ""  # the driver is gone: pdb reads end of input and continues
        if reply.get("intr"):
            raise KeyboardInterrupt
        line: str = reply.get("d", "")
        return line


class _SocketChannel(_Channel):
    """Over a local worker's standard input, a socket whose other end the driver holds: plain
    blocking I/O, so it works in any thread, the event loop's included."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._reader = sock.makefile("rb")

    def send(self, message: dict[str, Any]) -> None:
        self._sock.sendall(json.dumps(message).encode() + b"\n")

    def receive(self) -> dict[str, Any] | None:
        raw = self._reader.readline()
        return json.loads(raw) if raw else None


class ConnectionChannel(_Channel):
    """Over the machine's authenticated connection (a machine on another host): the driver
    follows ``Supervisor.debugger`` and answers with ``Supervisor.debugger_input``. The event
    loop carries the messages, so a session cannot start on the loop's own thread (an async
    method): it would stop the loop, and the connection with it."""

    def __init__(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._loop_thread = threading.get_ident()
        self._send, self.outbox = trio.open_memory_channel[dict[str, Any]](math.inf)
        self.inbox: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()

    def send(self, message: dict[str, Any]) -> None:
        self._token.run_sync_soon(self._send.send_nowait, message)

    def receive(self) -> dict[str, Any] | None:
        return self.inbox.get()

    def refusal(self) -> str | None:
        if threading.get_ident() != self._loop_thread:
            return None
        return (
            "bigactor: breakpoint() in an async method of a machine on another host is skipped: "
            "it would stop the machine's event loop, and with it the connection the debugger "
            "needs. Put it in a sync method (def), or run the actor on a local machine."
        )


class RemotePdb(pdb.Pdb):
    """pdb with the driver's terminal (see the module)."""

    def __init__(self, channel: _Channel) -> None:
        super().__init__(stdin=channel, stdout=channel)  # type: ignore[arg-type]
        self.use_rawinput = False
        self.prompt = "(Pdb) "
        self._channel = channel

    def interaction(self, frame: FrameType | None, tb: Any) -> None:
        with _lock:
            shown = frame
            if shown is None and tb is not None:
                while tb.tb_next is not None:
                    tb = tb.tb_next
                shown = tb.tb_frame
            where = f"{_source(shown)}:{shown.f_lineno}" if shown is not None else "?"
            if frame is None:
                where = f"{where} (post mortem)"
            self._channel.send({"t": "open", "where": where, "thread": threading.current_thread().name})
            try:
                super().interaction(frame, tb)
            finally:
                self._channel.send({"t": "close"})
                _on_resume()


def _source(frame: FrameType) -> str:
    """The file ``frame``'s code is from; for code that travelled by value (cloudpickle names
    it ``<dynamic-code>``), its module's file, whose lines pdb then lists."""
    name = frame.f_code.co_filename
    path = frame.f_globals.get("__file__")
    if name != _DYNAMIC or not isinstance(path, str):
        return name
    try:
        with open(path) as f:
            lines = f.readlines()
    except OSError:
        return name
    # No modification time: linecache.checkcache leaves the entry alone.
    linecache.cache[_DYNAMIC] = (sum(map(len, lines)), None, lines, path)
    return path


_DYNAMIC = "<dynamic-code>"


def _hook(*args: Any, **kwargs: Any) -> None:
    channel = _channel
    if channel is None:  # pragma: no cover - installed only with a channel
        return
    why = channel.refusal()
    if why is not None:
        print(why, file=sys.stderr, flush=True)
        return
    RemotePdb(channel).set_trace(sys._getframe(1))


def post_mortem(exc: BaseException) -> None:
    """Open a post-mortem session on ``exc``'s traceback (``open_cluster(debug=True)``)."""
    if _channel is not None and exc.__traceback__ is not None and _channel.refusal() is None:
        debugger = RemotePdb(_channel)
        debugger.reset()
        debugger.interaction(None, exc.__traceback__)


def install(on_resume: Callable[[], None], over_connection: bool = False) -> _Channel | None:
    """Make ``breakpoint()`` open a session in the driver's terminal, unless
    ``PYTHONBREAKPOINT`` chooses otherwise: over this worker's standard input when it is the
    driver's debug socket (a local worker), else, with ``over_connection`` (a machine on another
    host), over the machine's connection (call from the event loop's thread). ``on_resume``
    runs after each session (the worker's watchdog forgives the pause). Returns the channel,
    or None if there is none."""
    global _channel, _on_resume
    if "PYTHONBREAKPOINT" in os.environ:
        return None
    try:
        local = stat.S_ISSOCK(os.fstat(0).st_mode)
    except OSError:
        local = False
    if local:
        _channel = _SocketChannel(socket.socket(fileno=os.dup(0)))
    elif over_connection:
        _channel = ConnectionChannel()
    else:
        return None
    _on_resume = on_resume
    sys.breakpointhook = _hook
    return _channel
