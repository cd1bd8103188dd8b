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
import os
import pdb
import socket
import stat
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

_lock = threading.RLock()  # one session at a time in this worker (re-entered by its own steps)
_channel: _Channel | None = None
_on_resume: Callable[[], None] = lambda: None  # noqa: E731 - set by install


class _Channel:
    """pdb's terminal: a file-like object over the socket to the driver."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._reader = sock.makefile("rb")

    def send(self, message: dict[str, Any]) -> None:
        self._sock.sendall(json.dumps(message).encode() + b"\n")

    # -- what pdb uses of stdin and stdout --
    def write(self, text: str) -> int:
        if text:
            self.send({"t": "out", "d": text})
        return len(text)

    def flush(self) -> None:
        pass

    def readline(self) -> str:
        self.send({"t": "in"})
        raw = self._reader.readline()
        if not raw:
            return ""  # the driver is gone: pdb reads end of input and continues
        reply = json.loads(raw)
        if reply.get("intr"):
            raise KeyboardInterrupt
        line: str = reply.get("d", "")
        return line


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
    RemotePdb(channel).set_trace(sys._getframe(1))


def post_mortem(exc: BaseException) -> None:
    """Open a post-mortem session on ``exc``'s traceback (``open_cluster(debug=True)``)."""
    if _channel is not None and exc.__traceback__ is not None:
        debugger = RemotePdb(_channel)
        debugger.reset()
        debugger.interaction(None, exc.__traceback__)


def install(on_resume: Callable[[], None]) -> bool:
    """Make ``breakpoint()`` open a session in the driver's terminal, if this worker's standard
    input is the driver's debug socket and ``PYTHONBREAKPOINT`` does not choose otherwise;
    ``on_resume`` runs after each session (the worker's watchdog forgives the pause). Returns
    whether it did."""
    global _channel, _on_resume
    if "PYTHONBREAKPOINT" in os.environ:
        return False
    try:
        if not stat.S_ISSOCK(os.fstat(0).st_mode):
            return False
    except OSError:
        return False
    _channel = _Channel(socket.socket(fileno=os.dup(0)))
    _on_resume = on_resume
    sys.breakpointhook = _hook
    return True
