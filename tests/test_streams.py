"""Streamed replies on the test system: order, back-pressure, early exit, errors, size."""

from __future__ import annotations

import hashlib
import random

import pytest
import trio
import trio.testing
from support import Recorder, Service, since, start_one

import bigactor
from bigactor import (
    MachineLost,
    RemoteError,
)
from bigactor._rpc._connection import STREAM_BYTES, STREAM_WINDOW


async def test_async_generator_streams_items_in_order(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """An async generator method streams its items in order."""
    recorder = await cluster.spawn(Recorder)
    assert [x async for x in recorder.numbers(100)] == list(range(100))


async def test_empty_stream_ends_at_once(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """A generator that yields nothing ends the caller's loop at once."""
    recorder = await cluster.spawn(Recorder)
    t0 = trio.current_time()
    assert [x async for x in recorder.numbers(0)] == []
    assert since(t0) == 0


async def test_sync_generator_streams(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """A plain generator method streams like an async one."""
    recorder = await cluster.spawn(Recorder)
    assert [x async for x in recorder.sync_numbers(50)] == list(range(50))


async def test_machine_stream_iterates_a_service_generator(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """``machine.stream`` iterates a service's generator method."""
    machine = await start_one(cluster, svc=Service())
    async with machine.stream("svc.numbers", 5) as stream:
        assert [x async for x in stream] == [0, 1, 2, 3, 4]


async def test_breaking_out_of_a_stream_stops_the_generator(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """Leaving ``async with`` early stops the remote generator (its ``finally`` runs)."""
    recorder = await cluster.spawn(Recorder)
    seen = []
    async with recorder.forever() as stream:
        async for x in stream:
            seen.append(x)
            if x == 4:
                break
    assert seen == [0, 1, 2, 3, 4]
    with trio.fail_after(1):
        assert await recorder.stream_has_ended()


async def test_stream_is_back_pressured(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """The generator runs at most about one window of items ahead of the consumer."""
    recorder = await cluster.spawn(Recorder)
    consumed = 0
    async with recorder.forever() as stream:
        async for _ in stream:
            consumed += 1
            if consumed in (3, 40, 200):
                await trio.testing.wait_all_tasks_blocked()
                produced = await recorder.produced_count()
                # A window of items in flight, plus the one the generator is holding.
                assert consumed < produced <= consumed + STREAM_WINDOW + 1
            if consumed == 200:
                break


async def test_stream_error_arrives_after_the_items_before_it(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """A generator that fails after 3 items delivers those 3, then raises its exception."""
    recorder = await cluster.spawn(Recorder)
    async with recorder.three_then_fail() as stream:
        assert [await anext(stream) for _ in range(3)] == [0, 1, 2]
        with pytest.raises(ValueError, match=r"^failed after three") as info:
            await anext(stream)
    assert isinstance(info.value, RemoteError)


async def test_cancel_fails_a_pending_stream_with_machine_lost(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """A stream waiting for its next item raises MachineLost when its machine is cancelled."""
    machine = await start_one(cluster, svc=Service())
    async with machine.stream("svc.numbers", 3) as stream:
        assert await anext(stream) == 0
    recorder = await cluster.spawn(Recorder)
    async with recorder.wait_forever_stream() as stream, trio.open_nursery() as nursery:

        async def cancel_soon() -> None:
            await trio.testing.wait_all_tasks_blocked()
            bigactor.machine_of(recorder).cancel()

        nursery.start_soon(cancel_soon)
        t0 = trio.current_time()
        with pytest.raises(MachineLost):
            await anext(stream)
        assert since(t0) == 0


async def test_generator_and_plain_methods_cannot_be_mixed_up(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """Calling a generator method, or streaming a plain one, is a clear TypeError."""
    machine = await start_one(cluster, svc=Service())
    with pytest.raises(TypeError, match=r"generator method.*async for"):
        await machine.call("svc.numbers", 3)
    async with machine.stream("svc.method") as stream:
        with pytest.raises(TypeError, match=r"plain method.*await it"):
            await anext(stream)
    with pytest.raises(TypeError, match="await"):
        await machine.stream("svc.numbers", 3)  # type: ignore[misc]
    assert await machine.call("svc.method") == 0


async def test_32_mib_stream_arrives_intact(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """A 32 MiB streamed reply arrives complete and unchanged."""
    recorder = await cluster.spawn(Recorder)
    n, size = 32, 1 << 20
    expected = hashlib.sha256()
    for i in range(n):
        expected.update(random.Random(i).randbytes(size))
    got = hashlib.sha256()
    total = 0
    async with recorder.chunks(n, size) as stream:
        async for chunk in stream:
            total += len(chunk)
            got.update(chunk)
    assert total == n * size
    assert got.hexdigest() == expected.hexdigest()


async def test_32_mib_argument_and_reply_round_trip(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """A 32 MiB argument echoed back arrives unchanged (chunked on the wire)."""
    machine = await start_one(cluster, svc=Service())
    blob = random.Random(7).randbytes(32 << 20)
    assert await machine.call("svc.echo", blob) == blob


# -- ordering and concurrency ----------------------------------------------------------------


async def test_buffer_larger_than_the_message_limit_still_travels(
    cluster: bigactor.Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An out-of-band buffer may exceed the message limit: its size was announced by its sender."""
    from bigactor._rpc import _transport

    monkeypatch.setattr(_transport, "MAX_MESSAGE", 1 << 20)  # connections opened from now on
    machine = await start_one(cluster, svc=Service())
    data = bytes(range(256)) * (3 * (1 << 20) // 256)
    assert await machine.call("svc.echo", data) == data


async def test_stream_back_pressure_counts_bytes_too(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """Big items: the producer stops at STREAM_BYTES in flight, not at 32 items (20 MB items
    took the driver to +640 MB)."""
    recorder = await cluster.spawn(Recorder)
    size = 3 << 20
    consumed = 0
    async with recorder.big_forever(size) as stream:
        async for item in stream:
            assert len(item) == size
            consumed += 1
            await trio.testing.wait_all_tasks_blocked()
            produced = await recorder.produced_count()
            # What fits in the byte window, plus one over it, plus the one being made.
            assert produced <= consumed + STREAM_BYTES // size + 2
            if consumed == 10:
                break
