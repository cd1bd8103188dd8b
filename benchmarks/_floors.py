"""The transport floors: the bare stack bigactor is built on, doing the same workloads.

Two echo servers, each in its own process (:mod:`benchmarks._floor_server`):

* raw trio TCP with 4-byte length-prefixed frames: the cost of trio and the kernel;
* trio-websocket with the limits raised: trio TCP plus wsproto framing.

Each client connection offers the three shapes the workloads need: a direct round trip
(send, then read in the same task), id-matched calls for pipelining (one reader task per
connection hands each reply to the task waiting for its id), and a bulk echo.
"""

from __future__ import annotations

import struct
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import trio

from ._floor_server import WS_MAX_MESSAGE, WS_RECEIVE_BUFFER
from ._framing import FrameReader, send_frame

REPO = Path(__file__).resolve().parent.parent
CALL = struct.Struct("!QQ")  # call id + an 8-byte argument: a 16-byte message
WS_CHUNK = 1 << 20  # bulk over ws goes as pipelined 1 MiB messages (the default message limit)


class FloorServer:
    """An echo server process; ``await FloorServer.start("tcp")``, then ``.port``."""

    def __init__(self, kind: str, process: trio.Process, port: int) -> None:
        self.kind = kind
        self.process = process
        self.port = port

    @classmethod
    async def start(cls, kind: str, lifetime: float) -> FloorServer:
        """Start a server of ``kind`` ("tcp" or "ws") that exits after ``lifetime`` seconds."""
        argv = [sys.executable, "-m", "benchmarks._floor_server", kind, "--lifetime", str(lifetime)]
        process = await trio.lowlevel.open_process(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=str(REPO)
        )
        assert process.stdout is not None
        line = b""
        with trio.fail_after(30):
            while not line.endswith(b"\n"):
                chunk = await process.stdout.receive_some(1)
                if not chunk:
                    break
                line += chunk
        if not line.startswith(b"LISTENING "):
            process.kill()
            raise RuntimeError(f"floor server {kind} did not start: {line!r}")
        return cls(kind, process, int(line.split()[1]))

    async def aclose(self) -> None:
        """Close its stdin (it exits by itself); kill it if it lingers."""
        if self.process.stdin is not None:
            await self.process.stdin.aclose()
        with trio.move_on_after(5):
            await self.process.wait()
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


class _Messages(Protocol):
    async def send(self, message: bytes) -> None: ...
    async def receive(self) -> bytes: ...


class Mux:
    """Id-matched calls over one connection: ``await mux.call(i)`` returns ``i``."""

    def __init__(self, messages: _Messages) -> None:
        self._messages = messages
        self._waiting: dict[int, list[Any]] = {}

    async def reader(self) -> None:
        """Hand every reply to the call waiting for its id (run as a task)."""
        while True:
            call_id, value = CALL.unpack(await self._messages.receive())
            slot = self._waiting.pop(call_id)
            slot[1] = value
            slot[0].set()

    async def call(self, i: int) -> int:
        """Send call ``i`` and wait for its reply."""
        slot: list[Any] = [trio.Event(), None]
        self._waiting[i] = slot
        await self._messages.send(CALL.pack(i, i))
        await slot[0].wait()
        return int(slot[1])


class TcpConn:
    """A client connection to the raw trio TCP echo server."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._reader = FrameReader(stream)
        self._lock = trio.StrictFIFOLock()

    @classmethod
    async def connect(cls, port: int) -> TcpConn:
        """Connect to the server on loopback ``port``."""
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def send(self, message: bytes) -> None:
        """Send one frame (concurrent senders take turns)."""
        async with self._lock:
            await send_frame(self._stream, message)

    async def receive(self) -> bytes:
        """Receive one frame."""
        return await self._reader.read()

    async def roundtrip(self, i: int) -> int:
        """One small call, sent and read in this task."""
        await send_frame(self._stream, CALL.pack(i, i))
        return CALL.unpack(await self._reader.read())[1]  # type: ignore[no-any-return]

    async def echo(self, payload: bytes) -> bytes:
        """Echo ``payload`` as one frame, sending and receiving concurrently."""
        result: list[bytes] = []

        async def receive() -> None:
            result.append(await self._reader.read())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            await send_frame(self._stream, payload)
        return result[0]

    async def aclose(self) -> None:
        """Close the connection."""
        await self._stream.aclose()


class WsConn:
    """A client connection to the trio-websocket echo server (limits raised)."""

    def __init__(self, ws: Any) -> None:
        self._ws = ws

    async def send(self, message: bytes) -> None:
        """Send one message."""
        await self._ws.send_message(message)

    async def receive(self) -> bytes:
        """Receive one message."""
        message: bytes = await self._ws.get_message()
        return message

    async def roundtrip(self, i: int) -> int:
        """One small call, sent and read in this task."""
        await self._ws.send_message(CALL.pack(i, i))
        return CALL.unpack(await self._ws.get_message())[1]  # type: ignore[no-any-return]

    async def echo(self, payload: bytes) -> bytes:
        """Echo ``payload`` as pipelined 1 MiB messages; the server echoes each as it comes."""
        view = memoryview(payload)
        count = (len(payload) + WS_CHUNK - 1) // WS_CHUNK
        parts: list[bytes] = []

        async def receive() -> None:
            parts.extend([await self._ws.get_message() for _ in range(count)])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            for k in range(count):
                await self._ws.send_message(bytes(view[k * WS_CHUNK : (k + 1) * WS_CHUNK]))
        return b"".join(parts)


async def hold_ws(port: int, task_status: trio.TaskStatus[WsConn] = trio.TASK_STATUS_IGNORED) -> None:
    """Open a ws connection to ``port``, hand it over, keep it open until cancelled."""
    from trio_websocket import open_websocket_url

    async with open_websocket_url(
        f"ws://127.0.0.1:{port}/", max_message_size=WS_MAX_MESSAGE, receive_buffer_size=WS_RECEIVE_BUFFER
    ) as ws:
        task_status.started(WsConn(ws))
        await trio.sleep_forever()


async def with_mux(
    conns: list[Any], body: Callable[[list[Callable[[int], Awaitable[int]]]], Awaitable[Any]]
) -> Any:
    """Run ``body(calls)`` while a reader task matches replies on each connection."""
    muxes = [Mux(c) for c in conns]
    async with trio.open_nursery() as nursery:
        for mux in muxes:
            nursery.start_soon(mux.reader)
        result = await body([m.call for m in muxes])
        nursery.cancel_scope.cancel()
    return result
