"""``max_concurrency`` on the machine's side: an actor's sync methods on N threads, at most N of
its async methods at once. The actors are hosted by an ``ActorTable`` served in this process
over a real Unix socket, their sync methods in real threads; the test reaches into the hosted
instances to watch them, and measures overlap with barriers and events, never with sleeps."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator

import pytest
import trio
import trio.testing
from table_support import hosting

from bigactor import _codec, _rpc
from bigactor._rpc import Kind
from bigactor.testing._system import run_inline

pytestmark = pytest.mark.slow  # real threads and sockets


class Meeting:
    """Sync methods that meet at a barrier, and count how many run at once."""

    def __init__(self, parties: int) -> None:
        self.barrier = threading.Barrier(parties, timeout=10)
        self._lock = threading.Lock()
        self.active = 0
        self.most = 0
        self.started: list[int] = []
        self.finished: list[str] = []
        self.second_done = threading.Event()
        self.release = threading.Event()

    def meet(self) -> int:
        with self._lock:
            self.active += 1
            self.most = max(self.most, self.active)
        try:
            self.barrier.wait()  # BrokenBarrierError after 10 s if fewer threads ever meet
        finally:
            with self._lock:
                self.active -= 1
        return threading.get_ident()

    def slow(self) -> None:
        with self._lock:
            self.active += 1
            self.most = max(self.most, self.active)
        time.sleep(0.01)  # the work; overlap, if any, would show in `most`
        with self._lock:
            self.active -= 1

    def start(self, i: int) -> None:
        self.started.append(i)  # first, and atomic: no lock whose wake-up order would blur it

    def hold(self) -> None:
        assert self.release.wait(10), "never released"

    def first(self) -> None:
        assert self.second_done.wait(10), "second() never ran beside first()"
        self.finished.append("first")

    def second(self) -> None:
        self.finished.append("second")
        self.second_done.set()


class Holder:
    """Async methods that hold until released, and count how many run at once."""

    def __init__(self) -> None:
        self.release = trio.Event()
        self.active = 0
        self.entered = 0
        self.most = 0

    async def hold(self) -> str:
        self.entered += 1
        self.active += 1
        self.most = max(self.most, self.active)
        try:
            await self.release.wait()
        finally:
            self.active -= 1
        return "held"


class Spinners:
    """Sync methods that spin in Python until their caller gives up."""

    def __init__(self, n: int) -> None:
        self.spinning = threading.Barrier(n + 1, timeout=10)  # n spinners and the test
        self.stopped = threading.Semaphore(0)

    def spin(self, seconds: float) -> None:
        try:
            self.spinning.wait()
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                pass
        finally:
            self.stopped.release()

    def ping(self) -> str:
        return "pong"


class Napper:
    """A sync generator whose second step is a C call that a cancellation cannot stop."""

    def __init__(self) -> None:
        self.closed = threading.Event()

    def naps(self, seconds: float) -> Iterator[int]:
        try:
            yield 0
            time.sleep(seconds)
            yield 1
        finally:
            self.closed.set()

    def ping(self) -> str:
        return "pong"


async def test_add_rejects_a_max_concurrency_that_is_not_a_positive_int(nursery: trio.Nursery) -> None:
    """0, negatives, floats, strings and bools are a ValueError; nothing is hosted."""
    table = _rpc.ActorTable("unix:nowhere", nursery, _rpc.run_in_thread)
    for bad in (0, -1, 1.5, "2", True):
        with pytest.raises(
            ValueError, match=r"max_concurrency of a Meeting actor must be None or an int >= 1"
        ):
            table.add("m", Meeting(1), max_concurrency=bad)  # type: ignore[arg-type]
    assert table.actors == {}
    for good in (None, 1, 3):
        assert table.add(f"m{good}", Meeting(1), max_concurrency=good).name == f"m{good}"


async def test_sync_methods_run_on_n_threads_at_once_and_never_more() -> None:
    """With N=4, four sync calls meet at a barrier (run at once); never five at once."""
    meeting = Meeting(4)
    async with hosting({"m": (meeting, 4)}) as (client, table):
        threads: list[int] = []

        async def meet() -> None:
            threads.append(await client.call("m.meet"))

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for _ in range(8):
                    nursery.start_soon(meet)
        assert meeting.most == 4
        assert len(set(threads)) >= 4
        assert table.metrics.get("m.meet").count == 8  # metrics per method, as with one thread


async def test_more_threads_than_trios_default_limit_run_at_once() -> None:
    """N=48 sync calls run at once: the actor's queue bounds its threads, not Trio's 40."""
    meeting = Meeting(48)
    async with hosting({"m": (meeting, 48)}) as (client, _):
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for _ in range(48):
                    nursery.start_soon(client.call, "m.meet")
        assert meeting.most == 48


@pytest.mark.parametrize("n", [None, 1])
async def test_default_runs_sync_methods_one_at_a_time(n: int | None) -> None:
    """Without max_concurrency (or with 1), sync calls never overlap."""
    meeting = Meeting(1)
    async with hosting({"m": (meeting, n)}) as (client, _):
        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(client.call, "m.slow")
        assert meeting.most == 1


async def test_sync_calls_start_in_the_order_sent_with_n_threads() -> None:
    """With N=3, calls start in the order they were sent."""
    meeting = Meeting(1)
    async with hosting({"m": (meeting, 3)}) as (client, _):
        async with trio.open_nursery() as nursery:
            for i in range(60):
                nursery.start_soon(client.call, "m.start", i)
                # Call i is on the wire before call i+1 is issued.
                await trio.testing.wait_all_tasks_blocked()
        assert meeting.started == list(range(60))


async def test_n_threads_on_the_test_systems_inline_runner_run_calls_one_by_one() -> None:
    """Run inline on the event loop (as the test system runs sync methods), N=3 neither
    deadlocks nor reorders: calls run one at a time in the order sent."""
    meeting = Meeting(1)
    async with hosting({"m": (meeting, 3)}, run_inline) as (client, _):
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for i in range(60):
                    nursery.start_soon(client.call, "m.start", i)
                    await trio.testing.wait_all_tasks_blocked()
                for _ in range(10):
                    nursery.start_soon(client.call, "m.slow")
        assert meeting.started == list(range(60))
        assert meeting.most == 1


async def test_a_queued_call_cancelled_before_it_starts_holds_up_no_later_call() -> None:
    """With N=2 threads busy, a queued call given up never runs, and the call after it does."""
    meeting = Meeting(1)
    gives_up = trio.CancelScope()

    async def start_then_give_up() -> None:
        with gives_up:
            await client.call("m.start", 3)

    async with hosting({"m": (meeting, 2)}) as (client, _):
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for _ in range(2):
                    nursery.start_soon(client.call, "m.hold")
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(start_then_give_up)
                await trio.testing.wait_all_tasks_blocked()  # queued behind the two holds
                gives_up.cancel()
                nursery.start_soon(client.call, "m.start", 4)
                await trio.testing.wait_all_tasks_blocked()
                meeting.release.set()
        assert gives_up.cancelled_caught
        assert meeting.started == [4]


async def test_sync_calls_overlap_and_may_finish_out_of_order_with_n_threads() -> None:
    """With N=2, a call sent first can wait for one sent after it, which finishes first."""
    meeting = Meeting(1)
    async with hosting({"m": (meeting, 2)}) as (client, _):
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.call, "m.first")
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(client.call, "m.second")
        assert meeting.finished == ["second", "first"]


async def test_sync_calls_cancelled_together_on_n_threads_all_stop() -> None:
    """With N=3, three spinning calls given up at once all stop, and the actor answers."""
    spinners = Spinners(3)
    async with hosting({"s": (spinners, 3)}) as (client, _):
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(client.call, "s.spin", 30)
            await trio.to_thread.run_sync(spinners.spinning.wait)
            t0 = time.monotonic()
            nursery.cancel_scope.cancel()
        with trio.fail_after(10):
            for _ in range(3):
                assert await trio.to_thread.run_sync(spinners.stopped.acquire, True, 10)
            assert await client.call("s.ping") == "pong"
        assert time.monotonic() - t0 < 2


async def test_at_most_n_async_methods_run_at_once() -> None:
    """With N=2, two of five async calls run; the others wait for a slot, then run."""
    holder = Holder()
    async with hosting({"h": (holder, 2)}) as (client, _):
        results: list[str] = []

        async def hold() -> None:
            results.append(await client.call("h.hold"))

        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(hold)
            # Everything in this process is blocked: every call has arrived and either runs
            # (waiting to be released) or waits for a slot.
            await trio.testing.wait_all_tasks_blocked()
            assert holder.active == 2
            holder.release.set()
        assert results == ["held"] * 5
        assert holder.most == 2


async def test_default_does_not_limit_async_methods() -> None:
    """Without max_concurrency (or with 1), async calls are not limited."""
    for n in (None, 1):
        holder = Holder()
        async with hosting({"h": (holder, n)}) as (client, _), trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(client.call, "h.hold")
            await trio.testing.wait_all_tasks_blocked()
            assert holder.active == 5
            holder.release.set()


async def test_a_call_waiting_for_a_slot_is_cancelled_cleanly() -> None:
    """A call cancelled while it waits for a slot never runs and takes no slot with it."""
    holder = Holder()
    async with hosting({"h": (holder, 2)}) as (client, table):
        slots = table.actors["h"].slots
        assert slots is not None
        cancelled = trio.CancelScope()

        async def gives_up() -> None:
            with cancelled:
                await client.call("h.hold")

        async with trio.open_nursery() as nursery:
            for _ in range(2):
                nursery.start_soon(client.call, "h.hold")
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(gives_up)
            await trio.testing.wait_all_tasks_blocked()
            assert slots.statistics().tasks_waiting == 1
            cancelled.cancel()
            await trio.testing.wait_all_tasks_blocked()
            # The machine got the CANCEL: the wait ended, and the method never started.
            assert slots.statistics().tasks_waiting == 0
            holder.release.set()
        assert cancelled.cancelled_caught
        assert holder.entered == 2
        assert slots.value == 2

        # Both slots are free again, and still only two.
        holder.release = trio.Event()
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(client.call, "h.hold")
            await trio.testing.wait_all_tasks_blocked()
            assert holder.active == 2
            holder.release.set()
        assert holder.most == 2


async def test_cancelled_stream_closes_its_generator_after_the_running_step(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With N=2, a stream given up during a step in C code closes its generator only once that
    step has ended, on the same thread: never beside it ("generator already executing")."""
    napper = Napper()
    caplog.set_level(logging.WARNING, logger="bigactor.rpc")
    async with hosting({"n": (napper, 2)}) as (client, _):
        call_id = client.conn.open_stream(_codec.encode_call("n.naps", (0.5,), {}))
        kind, _flags, _data = await client.conn.next_item(call_id)
        assert kind == Kind.STREAM_DATA  # item 0; the next step is asleep in time.sleep
        client.conn.close_stream(call_id)
        with trio.fail_after(10):
            assert await trio.to_thread.run_sync(napper.closed.wait, 10)
            assert await client.call("n.ping") == "pong"
    assert not [r for r in caplog.records if "closing a generator raised" in r.getMessage()]
