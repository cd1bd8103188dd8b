"""The driver's side of ``breakpoint()`` in an actor: one debugger session at a time, in the
driver's terminal (the worker's side, and the messages, are in ``supervisor._breakpoint``).

Each machine that can stop in a debugger has a stream to the driver (a local worker's
standard input). :meth:`Console.serve` reads it; when pdb stops there, the session waits its
turn (one at a time across the cluster: the others queue, and a line says how many wait), then
the terminal is the machine's: a header names the machine and where it stopped, pdb's output is
written to the driver's stdout, and each line typed goes back. While a session runs, its
machine is paused (its keepalives may go unanswered without the machine being declared lost),
and Ctrl-C in the terminal interrupts pdb's prompt instead of the program.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import trio

from ._errors import BigActorError
from ._machine import Machine, State

log = logging.getLogger("bigactor.console")


class Console:
    """The cluster's debugger sessions, shown one at a time in the driver's terminal."""

    def __init__(self) -> None:
        self._turn = trio.Lock()
        self._waiting = 0
        self._lines: trio.MemoryReceiveChannel[str] | None = None
        self._nursery: trio.Nursery | None = None
        self._last = ""

    def bind(self, nursery: trio.Nursery) -> None:
        """Run the terminal reader in ``nursery`` (the cluster's) once a session needs it."""
        self._nursery = nursery

    async def serve_stream(self, addr: str, stream: trio.abc.Stream, pause: Callable[[bool], None]) -> None:
        """Serve the debugger sessions of the local machine at ``addr``, whose messages come on
        ``stream`` (its worker's standard input), until the stream ends; ``pause(True)`` and
        ``pause(False)`` bracket each session."""

        async def reply(message: dict[str, Any]) -> None:
            await stream.send_all(json.dumps(message).encode() + b"\n")

        try:
            await self._serve(addr, _messages(stream), reply, pause)
        finally:
            await trio.aclose_forcefully(stream)

    async def serve_machine(self, machine: Machine) -> None:
        """Serve the debugger sessions of a machine on another host, over its connection
        (``Supervisor.debugger`` and ``Supervisor.debugger_input``), from when it runs until
        it stops."""
        if await machine.wait(State.RUNNING) != State.RUNNING:
            return

        async def reply(message: dict[str, Any]) -> None:
            await machine.call("Supervisor.debugger_input", message)

        try:
            async with machine.stream("Supervisor.debugger") as messages:
                await self._serve(machine.addr, messages, reply, machine.pause)
        except BigActorError as exc:  # the machine stopped, or its connection broke for good
            log.debug("%s: debugger sessions end: %s", machine.addr, exc)

    async def _serve(
        self,
        addr: str,
        messages: AsyncIterator[dict[str, Any]],
        reply: Callable[[dict[str, Any]], Awaitable[None]],
        pause: Callable[[bool], None],
    ) -> None:
        async for message in messages:
            if message.get("t") != "open":
                continue  # pdb's output outside a session: none is expected
            # Held from now, also while it waits its turn: its silence is no lapse.
            pause(True)
            self._waiting += 1
            counted = True
            try:
                if self._turn.locked():
                    _say(f"bigactor: {addr} stopped in the debugger; it waits for the session before it")
                async with self._turn:
                    self._waiting -= 1
                    counted = False
                    await self._session(addr, message, messages, reply)
            finally:
                if counted:
                    self._waiting -= 1
                pause(False)

    async def _session(
        self,
        addr: str,
        opened: dict[str, Any],
        messages: AsyncIterator[dict[str, Any]],
        reply: Callable[[dict[str, Any]], Awaitable[None]],
    ) -> None:
        where = f"{addr} ({opened.get('thread', '?')}) at {opened.get('where', '?')}"
        if where != self._last:
            _say(f"\n--- bigactor: breakpoint on {where}; the machine waits (c to continue) ---")
            self._last = where
        lines = self._terminal()
        with _interrupts() as interrupts:
            async for message in messages:
                kind = message.get("t")
                if kind == "out":
                    sys.stdout.write(message.get("d", ""))
                    sys.stdout.flush()
                elif kind == "in":
                    await reply(await _next_line(lines, interrupts))
                elif kind == "close":
                    if self._waiting:
                        _say(f"--- bigactor: {self._waiting} more machine(s) stopped in the debugger ---")
                    return

    def _terminal(self) -> trio.MemoryReceiveChannel[str]:
        if self._lines is None:
            send, self._lines = trio.open_memory_channel[str](0)
            assert self._nursery is not None, "Console.bind was not called"
            self._nursery.start_soon(self._read_terminal, send, name="debugger terminal")
        return self._lines

    async def _read_terminal(self, send: trio.MemorySendChannel[str]) -> None:
        # A thread blocked in readline cannot be interrupted; it is abandoned at exit (reading
        # a line has no side effect worth waiting for).
        async with send:  # closed at the end of input: every later prompt reads end of input
            while line := await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True):
                await send.send(line)


async def _next_line(lines: trio.MemoryReceiveChannel[str], interrupts: _Signals | _Never) -> dict[str, Any]:
    """The next line typed, or an interrupt (Ctrl-C) if one comes first."""
    result: dict[str, Any] = {}
    async with trio.open_nursery() as nursery:

        async def line() -> None:
            try:
                result["d"] = await lines.receive()
            except trio.EndOfChannel:
                result["d"] = ""
            nursery.cancel_scope.cancel()

        async def interrupt() -> None:
            await interrupts.receive()
            result["intr"] = True
            nursery.cancel_scope.cancel()

        nursery.start_soon(line)
        nursery.start_soon(interrupt)
    return result


class _Signals:
    """SIGINT while a session runs, one ``receive()`` at a time."""

    def __init__(self, signals: Any) -> None:
        self._signals = signals

    async def receive(self) -> int:
        async for signum in self._signals:
            return int(signum)
        await trio.sleep_forever()
        raise AssertionError("unreachable")


class _Never:
    async def receive(self) -> int:
        await trio.sleep_forever()
        raise AssertionError("unreachable")


@contextlib.contextmanager
def _interrupts() -> Iterator[_Signals | _Never]:
    """Ctrl-C as messages while a session runs, so that it interrupts pdb's prompt and not the
    program; nothing where signals cannot be caught (off the main thread)."""
    if threading.current_thread() is threading.main_thread():
        with trio.open_signal_receiver(signal.SIGINT) as signals:
            yield _Signals(signals)
        return
    yield _Never()


async def _messages(stream: trio.abc.Stream) -> AsyncIterator[dict[str, Any]]:
    """The JSON lines the worker sends, until its stream ends."""
    buffer = b""
    while True:
        try:
            data = await stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        if not data:
            return
        buffer += data
        while b"\n" in buffer:
            raw, _, buffer = buffer.partition(b"\n")
            with contextlib.suppress(ValueError):
                message = json.loads(raw)
                if isinstance(message, dict):
                    yield message


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
