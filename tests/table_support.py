"""An ``ActorTable`` served in this process over a real Unix socket, and raw calls to it: for
tests of the machine's side of the wire with real threads and sockets but no worker process."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator
from typing import Any

import trio

from bigactor import _codec, _rpc
from bigactor._rpc import Kind


class Client:
    """Raw calls over one authenticated connection."""

    def __init__(self, conn: _rpc.Connection, addr: str) -> None:
        self.conn = conn
        self.addr = addr

    async def call(self, target: str, *args: Any) -> Any:
        kind, flags, data = await self.conn.call(_codec.encode_call(target, args, {}))
        if kind == Kind.REPLY:
            return _codec.decode(data, flags)
        raise _rpc.decode_error(data, self.addr)


@contextlib.asynccontextmanager
async def hosting(
    actors: dict[str, tuple[Any, int | None]], run_sync: _rpc.RunSync = _rpc.run_in_thread
) -> AsyncIterator[tuple[Client, _rpc.ActorTable]]:
    """Host ``{name: (instance, max_concurrency)}`` on a Unix socket; yield a client and the table."""
    directory = tempfile.mkdtemp(prefix="bigactor-test-")  # short: a socket path has 108 bytes
    path = os.path.join(directory, "m.sock")
    addr = f"unix:{path}"
    key = secrets.token_bytes(32)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.bind(path)
        sock.listen()
        async with trio.open_nursery() as nursery:
            table = _rpc.ActorTable(addr, nursery, run_sync)
            for name, (instance, n) in actors.items():
                table.add(name, instance, max_concurrency=n)

            admission = _rpc.Admission(addr=addr, transport=_rpc.Transport())

            async def handle(stream: trio.abc.Stream) -> None:
                await _rpc.serve_stream(stream, admission, key, table, run_sync)

            await nursery.start(trio.serve_listeners, handle, [trio.SocketListener(sock)])
            conn, _ = await _rpc.connect(nursery, addr, key, transport=_rpc.Transport())
            yield Client(conn, addr), table
            await conn.aclose()
            nursery.cancel_scope.cancel()
    finally:
        sock.close()
        shutil.rmtree(directory, ignore_errors=True)
