"""Small gaps an adversarial review found, each on real worker processes."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.lowlevel
import trio.testing
from local_support import run_script

import bigactor
from bigactor import MachineLost, State, TransportError, _codec
from bigactor._rpc import _frames
from bigactor._rpc._connection import MAX_MESSAGE, Connection
from bigactor._rpc._frames import Kind
from bigactor._rpc._websocket import WebSocket, client_upgrade, server_upgrade

pytestmark = pytest.mark.slow


class Slow:
    def __init__(self) -> None:
        self.closed_on: str | None = None
        self.stepping = threading.Event()

    def steps(self) -> Iterator[int]:
        try:
            yield 0
            self.stepping.set()
            time.sleep(0.5)  # the caller gives up while this step runs
            yield 1
        finally:
            self.closed_on = threading.current_thread().name

    async def wait_stepping(self) -> None:
        await trio.to_thread.run_sync(self.stepping.wait)

    async def closed_where(self) -> str | None:
        return self.closed_on

    async def ping(self) -> str:
        return "pong"


async def test_sync_generator_cancelled_mid_step_runs_its_finally_at_once_on_its_thread() -> None:
    """Cancelled inside next(): the finally runs when that step ends, on the actor's thread,
    without waiting for another sync call (it used to wait for one, on the loop's thread)."""
    async with bigactor.open_cluster() as cluster:
        slow = await cluster.spawn(Slow)
        with trio.move_on_after(5) as scope:
            async with trio.open_nursery() as nursery:

                async def consume() -> None:
                    async with slow.steps() as stream:
                        async for _ in stream:
                            pass

                nursery.start_soon(consume)
                await slow.wait_stepping()
                nursery.cancel_scope.cancel()  # the caller leaves in the middle of next()
        assert not scope.cancelled_caught
        with trio.fail_after(5):
            while (where := await slow.closed_where()) is None:  # noqa: ASYNC110
                await trio.sleep(0.05)  # only async calls: nothing else reaches the sync queue
        assert where != "MainThread"


async def test_stream_on_a_killed_machine_raises_machine_lost() -> None:
    """A stream opened right after its machine was SIGKILLed says MachineLost, never the
    refused connection (TransportError) that comes first."""
    async with bigactor.open_cluster() as cluster:
        for _ in range(5):
            slow = await cluster.spawn(Slow)
            machine = bigactor.machine_of(slow)
            pid = (await machine.info()).pid
            conn = machine._conn
            assert conn is not None
            os.kill(pid, signal.SIGKILL)
            with trio.fail_after(5):
                while not conn.broken:
                    await trio.lowlevel.checkpoint()
            with pytest.raises(MachineLost):
                async for _ in slow.steps():
                    pass
            assert machine.state == State.STOPPED


class _Evil:
    """The machine side of a connection that answers every call with absurd buffer lengths."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.conn: Connection | None = None

    def call_received(self, conn: Connection, call_id: int, payload: memoryview, flags: int) -> None:
        head = (1).to_bytes(4, "little") + self.length.to_bytes(8, "little") + b"pickle"
        conn.send(Kind.REPLY, call_id, head, _frames.OOB)

    def cancel_received(self, call_id: int) -> None:
        pass

    def credit_received(self, call_id: int, n: int) -> None:
        pass

    def closed(self) -> None:
        pass


@pytest.mark.parametrize("length", [2**64 - 1, 2**63 - 1, 2**41])
async def test_absurd_out_of_band_lengths_from_a_peer_are_a_protocol_error(length: int) -> None:
    """An authenticated peer announcing a 2**64-1 byte buffer closes that connection with a
    protocol error; the caller gets TransportError (it crashed the driver with SystemError or
    OverflowError before)."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        upgrade = trio.Event()
        sides: dict[str, WebSocket] = {}

        async def serve() -> None:
            sides["server"] = await server_upgrade(server_stream)
            upgrade.set()

        nursery.start_soon(serve)
        client_ws = await client_upgrade(client_stream, "bigactor")
        await upgrade.wait()
        for ws in (client_ws, sides["server"]):
            ws.max_message = MAX_MESSAGE  # as after the handshake
        caller = Connection(client_ws, "test:evil")
        machine = Connection(sides["server"], "test:evil", _Evil(length))
        nursery.start_soon(caller.run)
        nursery.start_soon(machine.run)
        with trio.fail_after(5), pytest.raises(TransportError, match="announced") as info:
            await caller.call(_codec.encode_call("x.y", (), {}))
        assert not isinstance(info.value, bigactor.CallNotSent)
        nursery.cancel_scope.cancel()


class Hungry:
    """Takes and gives large buffers; can cap its own address space for a real MemoryError."""

    def cap_memory(self, headroom: int) -> None:
        import resource

        import psutil

        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(resource.RLIMIT_AS, (psutil.Process().memory_info().vms + headroom, hard))

    async def size(self, data: bytes) -> int:
        return len(data)

    async def ping(self) -> str:
        return "pong"


async def test_an_argument_too_big_to_allocate_fails_that_call_and_the_machine_serves_on() -> None:
    """A real MemoryError receiving a 600 MB argument fails that one call with CodecError; the
    same connection goes on serving."""
    async with bigactor.open_cluster() as cluster:
        hungry = await cluster.spawn(Hungry)
        await hungry.cap_memory(300 << 20)
        with pytest.raises(bigactor.CodecError, match="no memory"):
            await hungry.size(bytes(600 << 20))
        assert await hungry.ping() == "pong"
        assert await hungry.size(bytes(1 << 20)) == 1 << 20
        assert bigactor.machine_of(hungry).state == State.RUNNING


CAPPED_DRIVER = """
    import resource, psutil, trio, bigactor

    class Big:
        async def blob(self, mb):
            return bytes(mb << 20)

        async def ping(self):
            return "pong"

    async def main():
        async with bigactor.open_cluster() as cluster:
            big = await cluster.spawn(Big)
            assert await big.ping() == "pong"
            _, hard = resource.getrlimit(resource.RLIMIT_AS)
            resource.setrlimit(resource.RLIMIT_AS, (psutil.Process().memory_info().vms + (300 << 20), hard))
            try:
                await big.blob(600)
            except bigactor.CodecError as exc:
                print("REFUSED:", exc, flush=True)
            assert await big.ping() == "pong"
            assert len(await big.blob(1)) == 1 << 20
            print("SERVED ON", flush=True)

    trio.run(main)
"""


async def test_a_reply_too_big_to_allocate_fails_that_call_and_the_driver_goes_on(tmp_path: Path) -> None:
    """A driver with no memory for a 600 MB reply gets CodecError for that call, and its
    other calls on the same connection keep working (a MemoryError crashed the driver)."""
    result = await run_script(tmp_path, CAPPED_DRIVER)
    out = result.stdout.decode()
    assert "REFUSED:" in out
    assert "no memory" in out
    assert "SERVED ON" in out
