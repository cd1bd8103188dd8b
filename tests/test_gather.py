"""Many calls at once: ``gather``, ``as_completed`` and ``ActorPool``.

Logic runs on the test system under ``autojump_clock`` (virtual times are exact); the last
tests run the same helpers over real worker processes. ``Worker`` keeps its own account of
what happened to each call (started, finished, how it ended, most at once), so the tests
check on the machine that a call said to be cancelled was cancelled there.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import bigactor
import bigactor._gather
from bigactor.testing import TestSystem


class Worker:
    """An actor that records every call: when it started and ended, how, and how many at once."""

    def __init__(self) -> None:
        self.running = 0
        self.most = 0
        self.started: list[Any] = []
        self.finished: list[Any] = []
        self.cancelled: list[Any] = []
        self.changed = trio.Event()

    def _note(self, log: list[Any], key: Any) -> None:
        log.append(key)
        self.changed.set()
        self.changed = trio.Event()

    async def work(self, key: Any, delay: float = 0.0) -> Any:
        """Return ``key`` after ``delay`` seconds."""
        self.running += 1
        self.most = max(self.most, self.running)
        self._note(self.started, key)
        try:
            await trio.sleep(delay)
        except trio.Cancelled:
            self._note(self.cancelled, key)
            raise
        finally:
            self.running -= 1
        self._note(self.finished, key)
        return key

    async def fail(self, message: str, delay: float = 0.0) -> None:
        await trio.sleep(delay)
        raise ValueError(message)

    async def numbers(self, n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    async def wait_cancelled(self, n: int) -> list[Any]:
        """Wait until ``n`` calls were cancelled here; return their keys in order."""
        while len(self.cancelled) < n:
            await self.changed.wait()
        return self.cancelled

    async def report(self) -> dict[str, Any]:
        return {
            "started": self.started,
            "finished": self.finished,
            "cancelled": self.cancelled,
            "running": self.running,
            "most": self.most,
        }

    def die(self) -> None:
        """End this worker's process at once (real processes only)."""
        os.kill(os.getpid(), signal.SIGKILL)


def exactly(seconds: float) -> Any:
    return pytest.approx(seconds, abs=1e-6)


async def spawn(cluster: bigactor.Cluster, n: int) -> list[Any]:
    return await bigactor.gather(*(functools.partial(cluster.spawn, Worker) for _ in range(n)))


# -- gather -----------------------------------------------------------------------------------


async def test_gather_returns_results_in_submission_order_when_later_calls_finish_first(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """Results follow the order of the calls, though the machine finished them in reverse."""
    worker = await cluster.spawn(Worker)
    t0 = trio.current_time()
    results = await bigactor.gather(*(worker.work(i, delay=10 - i) for i in range(10)))
    assert results == list(range(10))
    assert trio.current_time() - t0 == exactly(10)  # concurrent: the longest call's time
    assert (await worker.report())["finished"] == list(reversed(range(10)))


async def test_gather_takes_async_functions_as_well_as_coroutines(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """A coroutine, a partial, a lambda and a local async function can be mixed."""
    worker = await cluster.spawn(Worker)

    async def local() -> str:
        await trio.sleep(1)
        return "local"

    results = await bigactor.gather(
        worker.work("coroutine", delay=3),
        functools.partial(worker.work, "partial", delay=2),
        lambda: worker.work("lambda", delay=1),
        local,
    )
    assert results == ["coroutine", "partial", "lambda", "local"]


async def test_gather_raises_the_only_error_as_itself_and_cancels_the_rest_on_the_machine(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """The first error leaves as itself at once, and the other calls end cancelled remotely."""
    worker, other = await spawn(cluster, 2)
    t0 = trio.current_time()
    with pytest.raises(ValueError, match="third call failed") as info:
        await bigactor.gather(
            worker.work("a", delay=100),
            other.work("b", delay=100),
            worker.fail("third call failed", delay=5),
            other.work("done", delay=1),
        )
    assert isinstance(info.value, bigactor.RemoteError)
    assert trio.current_time() - t0 == exactly(5)
    with trio.fail_after(1):
        assert await worker.wait_cancelled(1) == ["a"]
        assert await other.wait_cancelled(1) == ["b"]
    assert (await worker.report())["running"] == 0
    assert (await other.report())["finished"] == ["done"]


async def test_gather_raises_errors_that_happen_together_as_one_group_in_order() -> None:
    """Two calls failing before cancellation can reach them leave as one ExceptionGroup."""

    async def boom(message: str) -> None:
        raise KeyError(message)  # before any checkpoint: no cancellation can stop the second

    finished = []

    async def slow() -> None:
        try:
            await trio.sleep_forever()
        finally:
            finished.append("slow")

    with pytest.raises(ExceptionGroup) as info:
        await bigactor.gather(slow, functools.partial(boom, "one"), functools.partial(boom, "two"))
    assert sorted(e.args for e in info.value.exceptions) == [("one",), ("two",)]
    assert "2 errors" in str(info.value)
    assert finished == ["slow"]


async def test_gather_closes_every_coroutine_when_an_argument_is_not_a_call(
    cluster: bigactor.Cluster,
) -> None:
    """A bad argument raises TypeError before anything starts; no coroutine is left unawaited."""
    worker = await cluster.spawn(Worker)
    first, last = worker.work(1), worker.work(2)
    with pytest.raises(TypeError, match=r"argument 1 \(int\) is neither an awaitable"):
        await bigactor.gather(first, 42, last)
    assert inspect.getcoroutinestate(first) == inspect.CORO_CLOSED
    assert inspect.getcoroutinestate(last) == inspect.CORO_CLOSED

    listed = [worker.work(3), worker.work(4)]
    with pytest.raises(TypeError, match=r"separate arguments, gather\(\*calls\)"):
        await bigactor.gather(listed)
    assert all(inspect.getcoroutinestate(c) == inspect.CORO_CLOSED for c in listed)

    with pytest.raises(TypeError, match="stream is iterated with `async for`, not awaited"):
        await bigactor.gather(worker.numbers(3))
    assert (await worker.report())["started"] == []


async def test_cancelling_gather_cancels_every_call_on_its_machine(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """A caller's deadline cancels every call of a gather, remotely too."""
    worker = await cluster.spawn(Worker)
    with trio.move_on_after(2) as scope:
        await bigactor.gather(*(worker.work(i, delay=100) for i in range(4)))
    assert scope.cancelled_caught
    with trio.fail_after(1):
        assert sorted(await worker.wait_cancelled(4)) == [0, 1, 2, 3]


async def test_gather_of_nothing_is_an_empty_list_and_a_checkpoint() -> None:
    """``await gather()`` returns [] and, like every trio async function, checkpoints."""
    with trio.testing.assert_checkpoints():
        assert await bigactor.gather() == []


# -- as_completed -----------------------------------------------------------------------------


async def test_as_completed_yields_index_and_result_as_calls_finish(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """Pairs arrive in completion order, each at the time its call finished."""
    worker = await cluster.spawn(Worker)
    t0 = trio.current_time()
    seen = []
    async with bigactor.as_completed(*(worker.work(f"v{i}", delay=5 - i) for i in range(5))) as completed:
        async for index, value in completed:
            seen.append((index, value, trio.current_time() - t0))
    assert seen == [(i, f"v{i}", exactly(5 - i)) for i in reversed(range(5))]


async def test_break_out_of_as_completed_cancels_the_rest_and_leaves_nothing_running(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """An early ``break`` cancels the calls still running (remotely) before the block exits."""
    worker = await cluster.spawn(Worker)
    t0 = trio.current_time()
    task = trio.lowlevel.current_task()
    nurseries = list(task.child_nurseries)
    async with bigactor.as_completed(*(worker.work(i, delay=i + 1) for i in range(5))) as completed:
        async for index, _ in completed:
            assert index == 0
            assert len(task.child_nurseries) == len(nurseries) + 1  # the calls run in the caller's task
            break
    assert trio.current_time() - t0 == exactly(1)
    assert task.child_nurseries == nurseries  # no call outlives the block
    with trio.fail_after(1):
        assert sorted(await worker.wait_cancelled(4)) == [1, 2, 3, 4]
    assert (await worker.report())["finished"] == [0]


async def test_an_error_in_the_as_completed_body_cancels_the_calls_and_leaves_as_itself(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """The body's own exception leaves the block unwrapped, after the calls were cancelled."""
    worker = await cluster.spawn(Worker)
    with pytest.raises(LookupError, match="body"):  # noqa: PT012
        async with bigactor.as_completed(worker.work(0, delay=1), worker.work(1, delay=50)) as completed:
            async for _ in completed:
                raise LookupError("body")
    with trio.fail_after(1):
        assert await worker.wait_cancelled(1) == [1]


async def test_a_failing_call_cancels_the_as_completed_body(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """A call's error cancels the body where it waits, and leaves the block as itself."""
    worker = await cluster.spawn(Worker)
    got = []
    with pytest.raises(ValueError, match="late"):  # noqa: PT012
        async with bigactor.as_completed(worker.work(0, delay=1), worker.fail("late", delay=2)) as completed:
            async for index, _ in completed:
                got.append(index)
                await trio.sleep(100)  # the body is busy when the error comes
    assert got == [0]


# -- ActorPool --------------------------------------------------------------------------------


async def test_pool_map_keeps_input_order_and_caps_the_calls_on_each_actor(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """Results come in input order; each actor ran exactly ``per_actor`` calls at most at once."""
    workers = await spawn(cluster, 3)
    pool = bigactor.ActorPool(workers, per_actor=2)
    values = list(range(30))
    async with pool.map(lambda w, v: w.work(v, delay=(v * 7) % 5 + 1), values) as results:
        assert [r async for r in results] == values
    reports = await bigactor.gather(*(w.report() for w in workers))
    assert [r["most"] for r in reports] == [2, 2, 2]
    assert sorted(v for r in reports for v in r["finished"]) == values
    assert all(r["running"] == 0 for r in reports)


async def test_pool_map_unordered_yields_results_as_they_finish(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """The unordered map yields each result when its call ends, not in input order."""
    workers = await spawn(cluster, 2)
    pool = bigactor.ActorPool(workers, per_actor=2)
    async with pool.map_unordered(lambda w, v: w.work(v, delay=4 - v), range(4)) as results:
        assert [r async for r in results] == [3, 2, 1, 0]


async def test_the_per_actor_cap_holds_across_maps_running_at_once(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """Two maps on one pool share its slots: still one call per actor at a time."""
    workers = await spawn(cluster, 2)
    pool = bigactor.ActorPool(workers)

    async def run(tag: str) -> list[Any]:
        async with pool.map(lambda w, v: w.work((tag, v), delay=1), range(6)) as results:
            return [r async for r in results]

    t0 = trio.current_time()
    a, b = await bigactor.gather(functools.partial(run, "a"), functools.partial(run, "b"))
    assert trio.current_time() - t0 == exactly(6)  # 12 one-second calls on 2 slots
    assert a == [("a", v) for v in range(6)]
    assert b == [("b", v) for v in range(6)]
    assert [r["most"] for r in await bigactor.gather(*(w.report() for w in workers))] == [1, 1]


async def test_a_pool_runs_ahead_of_a_slow_consumer_by_at_most_two_results_per_slot(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """With 2 slots, no more than 4 results wait for the consumer: long maps hold bounded memory."""
    worker = await cluster.spawn(Worker)
    pool = bigactor.ActorPool([worker], per_actor=2)
    async with pool.map(lambda w, v: w.work(v), range(100)) as results:
        started = []
        async for r in results:
            await trio.sleep(10)  # a slow consumer: every call finished long ago
            started.append(len((await worker.report())["started"]))
            if r == 3:
                break
    assert started == [5, 6, 7, 8]  # 4 ahead, plus one for each result taken


async def test_break_out_of_a_pool_map_cancels_the_calls_in_flight_and_frees_their_slots(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """After an early ``break`` the calls in flight end cancelled, and the pool works again."""
    workers = await spawn(cluster, 2)
    pool = bigactor.ActorPool(workers, per_actor=2)
    # Four values for four slots (round robin: 0 and 2 on the first actor, 1 and 3 on the
    # second), so that no value is dispatched after the first result.
    async with pool.map(lambda w, v: w.work(v, delay=1 if v == 0 else 100), range(4)) as results:
        async for r in results:
            assert r == 0
            break
    with trio.fail_after(1):
        assert await workers[0].wait_cancelled(1) == [2]
        assert sorted(await workers[1].wait_cancelled(2)) == [1, 3]
    t0 = trio.current_time()
    async with pool.map(lambda w, v: w.work(v, delay=1), range(8)) as results:
        assert [r async for r in results] == list(range(8))
    assert trio.current_time() - t0 == exactly(2)  # all four slots free again: two rounds
    assert [r["most"] for r in await bigactor.gather(*(w.report() for w in workers))] == [2, 2]


async def test_a_lost_machine_ends_the_map_with_an_error_at_once(
    cluster: bigactor.Cluster, test_system: TestSystem, autojump_clock: trio.testing.MockClock
) -> None:
    """Killing one pool actor's machine mid-map raises its error at the moment of the kill."""
    workers = await spawn(cluster, 3)
    pool = bigactor.ActorPool(workers)
    t0 = trio.current_time()
    got = []

    async def kill() -> None:
        await trio.sleep(4.5)
        assert test_system.kill()  # any of them: every live machine hosts a pool actor

    async with trio.open_nursery() as nursery:
        nursery.start_soon(kill)
        with trio.fail_after(60), pytest.raises(bigactor.MachineError) as info:  # noqa: PT012
            async with pool.map(lambda w, v: w.work(v, delay=1), range(30)) as results:
                async for r in results:
                    got.append(r)  # noqa: PERF401 (a comprehension would lose what came before the error)
    assert isinstance(info.value, bigactor.TransportError | bigactor.MachineLost)
    assert trio.current_time() - t0 == exactly(4.5)
    assert got == list(range(12))  # every result before the kill arrived; none after


async def test_an_error_reading_the_values_ends_the_map_as_itself(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """``values`` is read as slots free up; its error cancels the calls in flight and leaves as itself."""
    worker = await cluster.spawn(Worker)
    pool = bigactor.ActorPool([worker], per_actor=3)

    def values() -> Any:
        yield from range(3)
        raise OSError("input went away")  # read when the first call ends, at t=1

    got = []
    t0 = trio.current_time()
    with pytest.raises(OSError, match="input went away"):  # noqa: PT012
        async with pool.map(lambda w, v: w.work(v, delay=[1, 2, 10][v]), values()) as results:
            async for r in results:
                got.append(r)  # noqa: PERF401 (a comprehension would lose what came before the error)
    assert got == [0]
    assert trio.current_time() - t0 == exactly(1)
    with trio.fail_after(1):
        assert sorted(await worker.wait_cancelled(2)) == [1, 2]


async def test_no_call_starts_after_the_first_error(autojump_clock: trio.testing.MockClock) -> None:
    """The slot a failed call frees is not used again: a call that would fail at once (as
    every call to a lost machine does) never starts, so the first error leaves alone."""
    started = []

    async def call(actor: str, v: int) -> None:
        started.append(v)
        if v == 0:
            await trio.sleep(1)
        raise KeyError(f"call {v}")  # after the first, fails before any checkpoint

    with pytest.raises(KeyError, match="call 0"):  # noqa: PT012
        async with bigactor.ActorPool(["dead"]).map(call, range(3)) as results:
            async for _ in results:
                pass
    assert started == [0]


async def test_a_map_whose_last_call_fails_does_not_end_as_if_complete(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """When the last call fails, the loop does not end quietly: the body is cancelled there."""
    worker = await cluster.spawn(Worker)
    # Two slots: the first call's slot lets the map see there is no third value, so the
    # failing call is the last one holding the results channel open.
    pool = bigactor.ActorPool([worker], per_actor=2)
    got = []
    loop_ended = False

    async def call(w: Any, v: int) -> Any:
        return await (w.fail("last", delay=1) if v == 1 else w.work(v))

    with pytest.raises(ValueError, match="last"):  # noqa: PT012
        async with pool.map(call, range(2)) as results:
            async for r in results:
                got.append(r)  # noqa: PERF401 (a comprehension would lose what came before the error)
            loop_ended = True
    assert got == [0]
    assert not loop_ended


async def test_a_pool_needs_actors_and_a_positive_cap() -> None:
    """An empty pool or a cap below one is refused when the pool is made."""
    with pytest.raises(ValueError, match="at least one actor"):
        bigactor.ActorPool([])
    with pytest.raises(ValueError, match="per_actor must be at least 1, not 0"):
        bigactor.ActorPool(["a"], per_actor=0)
    pool = bigactor.ActorPool("ab", per_actor=3)
    assert (pool.actors, pool.per_actor) == (("a", "b"), 3)
    assert repr(pool) == "<ActorPool of 2 actors, 3 calls each>"


async def test_a_pool_maps_over_anything_fn_can_call() -> None:
    """Actors need not be handles: the pool only hands them to ``fn``."""

    async def double(actor: str, v: int) -> str:
        await trio.lowlevel.checkpoint()
        return f"{actor}{2 * v}"

    pool = bigactor.ActorPool(["x"])
    async with pool.map(double, range(3)) as results:
        assert [r async for r in results] == ["x0", "x2", "x4"]


# -- the documentation runs -------------------------------------------------------------------


def code_block(doc: str) -> str:
    """The first literal block (after a line ending in ``::``) of a docstring, dedented."""
    lines = doc.split("::\n", 1)[1].splitlines()
    block = []
    for line in lines:
        if line.strip() and not line.startswith(" "):
            break
        block.append(line)
    return textwrap.dedent("\n".join(block)).strip() + "\n"


def test_the_docstring_examples_run_and_print_what_they_say(tmp_path: Path) -> None:
    """The module's example program and each helper's example run as a program, printing
    what their comments say."""
    program = code_block(bigactor._gather.__doc__ or "")
    assert program.endswith("trio.run(main)\n")
    script = program.removesuffix("trio.run(main)\n") + "\nasync def examples():\n    await main()\n"
    for obj in (bigactor.gather, bigactor.as_completed, bigactor.ActorPool):
        example = code_block(inspect.getdoc(obj) or "")
        script += "    async with bigactor.open_cluster() as cluster:\n"
        script += textwrap.indent(example, " " * 8)
        program += example
    script += "\ntrio.run(examples)\n"
    path = tmp_path / "examples.py"
    path.write_text(script)
    env = {**os.environ, "BIGACTOR_SYSTEM": "test"}
    out = subprocess.run(
        [sys.executable, str(path)], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert out.returncode == 0, out.stderr
    expected = re.findall(r"print\(.*\)\s+# (.*)", program)
    assert len(expected) == 4
    assert out.stdout.splitlines() == expected


# -- over real worker processes ---------------------------------------------------------------


@pytest.mark.slow
async def test_gather_and_a_pool_over_real_processes_keep_order_and_cap() -> None:
    """On the local system: gather keeps order, a pool keeps order and its per-actor cap."""
    async with bigactor.open_cluster("local") as cluster:
        *workers, other = await spawn(cluster, 3)
        results = await bigactor.gather(*(other.work(i, delay=0.05 * (4 - i)) for i in range(5)))
        assert results == list(range(5))
        assert (await other.report())["finished"] == [4, 3, 2, 1, 0]
        pool = bigactor.ActorPool(workers, per_actor=3)
        async with pool.map(lambda w, v: w.work(v, delay=0.02 * (v % 4)), range(40)) as squares:
            assert [r async for r in squares] == list(range(40))
        assert [r["most"] for r in await bigactor.gather(*(w.report() for w in workers))] == [3, 3]


@pytest.mark.slow
async def test_a_pool_actor_whose_process_dies_raises_machine_lost_over_real_processes() -> None:
    """On the local system a SIGKILLed pool actor ends the map with MachineLost, promptly."""
    async with bigactor.open_cluster("local") as cluster:
        workers = await spawn(cluster, 2)
        pool = bigactor.ActorPool(workers)

        async def call(worker: Any, v: int) -> Any:
            if v == 5:
                return await worker.die()
            return await worker.work(v, delay=0.01)

        got: list[Any] = []
        with trio.fail_after(10), pytest.raises(bigactor.MachineLost) as info:  # noqa: PT012
            async with pool.map(call, range(20)) as results:
                async for r in results:
                    got.append(r)  # noqa: PERF401 (a comprehension would lose what came before the error)
        assert "SIGKILL" in str(info.value)
        assert got == list(range(len(got)))  # in order, and nothing from value 5 on
        assert len(got) <= 5
