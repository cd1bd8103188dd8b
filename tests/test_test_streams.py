"""The test system's in-memory streams: bytes in order, the websocket's fast path, and how
closing either end reads on the other."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import bigactor
from bigactor.testing import TestSystem
from bigactor.testing._streams import stream_pair


async def test_bytes_arrive_in_order_whichever_way_they_were_sent() -> None:
    a, b = stream_pair()
    assert a.try_send(b"one ") == 4  # the fast path takes it all, at once
    await a.send_all(memoryview(b"two "))
    assert a.try_send(bytearray(b"three")) == 5
    assert await b.receive_some(6) == b"one tw"
    assert await b.receive_some() == b"o three"
    await b.send_all(b"back")
    assert await a.receive_some(100) == b"back"


async def test_a_receive_waits_for_the_peer() -> None:
    a, b = stream_pair()
    got: list[bytes] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: _receive_into(b, got))
        await trio.testing.wait_all_tasks_blocked()
        assert got == []
        a.try_send(b"late")
    assert got == [b"late"]


async def _receive_into(stream: trio.abc.ReceiveStream, got: list[bytes]) -> None:
    got.append(await stream.receive_some(10))


async def test_closing_one_end_ends_the_other_after_what_was_sent() -> None:
    a, b = stream_pair()
    a.try_send(b"last words")
    await a.aclose()
    assert await b.receive_some(100) == b"last words"
    assert await b.receive_some(100) == b""  # end of stream, every time
    assert await b.receive_some(100) == b""
    assert b.try_send(b"x") == 0  # the fast path declines; the slow path says why
    with pytest.raises(trio.BrokenResourceError):
        await b.send_all(b"x")
    assert a.try_send(b"x") == 0
    with pytest.raises(trio.ClosedResourceError):
        await a.send_all(b"x")
    with pytest.raises(trio.ClosedResourceError):
        await a.receive_some(1)


async def test_closing_an_end_wakes_its_own_waiting_receive() -> None:
    a, _ = stream_pair()
    async with trio.open_nursery() as nursery:

        async def receive() -> None:
            with pytest.raises(trio.ClosedResourceError):
                await a.receive_some(1)

        nursery.start_soon(receive)
        await trio.testing.wait_all_tasks_blocked()
        a.close()


async def test_test_machines_serve_calls_over_them(autojump_clock: trio.testing.MockClock) -> None:
    system = TestSystem()
    async with bigactor.open_cluster(system) as cluster:
        [m] = await cluster.start(1)
        assert (await m.info()).pid > 0
        system.kill(m)  # its end of every stream closes: a call fails at once, never hangs
        with pytest.raises(bigactor.TransportError):
            await m.call("Supervisor.getpid")
