"""A relayed handshake: a driver that dials an attacker's address must not hand the attacker an
authenticated connection to a real worker.

The attacker listens on a Unix socket of its own and relays every byte both ways to a real
worker. Once the worker's OK has passed, it injects a CALL frame of its own whose pickle creates a
marker directory on the worker. The handshake binds both proofs to the address the driver meant
to reach, so the driver refuses the worker's proof (and the worker would refuse the driver's).
"""

from __future__ import annotations

import os
import pickle
import socket
import struct
from pathlib import Path
from typing import Any

import pytest
import trio
from local_support import Echo

import bigactor
from bigactor import MachineLost, Services, State
from bigactor._rpc import Kind, _frames

pytestmark = pytest.mark.slow

#: The worker's OK as a server sends it: an unmasked, final binary frame of two bytes.
OK_FRAME = b"\x82\x02OK"


class _MakesDir:
    """Unpickling this creates the directory ``path``: the payload the attacker injects."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (str(self.path),))


def _client_frame(payload: bytes) -> bytes:
    """One binary websocket frame as a client sends it (masked with the zero key)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x82, 0x80 | n))
    elif n < 65536:
        head = struct.pack("!BBH", 0x82, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x82, 0x80 | 127, n)
    return head + b"\0\0\0\0" + payload


class Attacker:
    """Relays each connection made to ``path`` to ``target``; injects ``evil`` after OK."""

    def __init__(self, path: str, target: str, evil: bytes) -> None:
        self.path = path
        self.target = target
        self.evil = evil
        self.relayed = 0  # bytes relayed from the worker to the driver
        self.injected = False

    async def serve(
        self, *, task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await sock.bind(self.path)
        sock.listen()
        await trio.serve_listeners(self._relay, [trio.SocketListener(sock)], task_status=task_status)

    async def _relay(self, driver: trio.abc.Stream) -> None:
        worker = await trio.open_unix_socket(self.target)
        to_worker = trio.Lock()  # the driver's bytes and the injection share the worker's side
        async with driver, worker, trio.open_nursery() as nursery:

            async def up() -> None:
                async for data in driver:
                    async with to_worker:
                        await worker.send_all(data)
                nursery.cancel_scope.cancel()

            async def down() -> None:
                seen = b""
                async for data in worker:
                    seen = (seen + data)[-64 * 1024 :]
                    if not self.injected and OK_FRAME in seen:
                        # The handshake passed: what follows on this connection is trusted.
                        async with to_worker:
                            await worker.send_all(self.evil)
                        self.injected = True
                    self.relayed += len(data)
                    await driver.send_all(data)
                nursery.cancel_scope.cancel()

            nursery.start_soon(up)
            nursery.start_soon(down)


async def test_relayed_handshake_gives_the_attacker_nothing(tmp_path: Path) -> None:
    """A driver dialing a relay to a real worker refuses it; the injected pickle never runs."""
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_MakesDir(control)))
    assert control.is_dir()  # the payload is live: unpickling it creates the directory
    marker = tmp_path / "pwned"
    call = pickle.dumps(_MakesDir(marker))
    evil = _client_frame(
        b"".join(bytes(p) for frame in _frames.encode(Kind.CALL, 1 << 40, call) for p in frame)
    )
    attacker_path = str(tmp_path / "attacker.sock")

    async with bigactor.open_cluster() as cluster:
        [m] = await cluster.start(1, Services(echo=Echo()))
        assert await m.call("echo.echo", 1) == 1
        attacker = Attacker(attacker_path, m.addr.partition(":")[2], evil)
        async with trio.open_nursery() as nursery:
            await nursery.start(attacker.serve)
            error: MachineLost | None = None
            with trio.fail_after(30):
                try:
                    relayed = await cluster.dial("unix:" + attacker_path)
                    # Reached only through a working relay: a reply read after the injection.
                    await relayed.call("echo.echo", 2)
                except MachineLost as exc:
                    error = exc
            nursery.cancel_scope.cancel()

        assert not marker.exists(), "the attacker's pickle ran on the worker"
        assert not attacker.injected
        assert error is not None
        assert "failed authentication" in str(error)
        assert attacker.relayed > 0  # the worker's upgrade and WELCOME did reach the driver
        assert await m.call("echo.echo", 3) == 3
        assert m.state == State.RUNNING
