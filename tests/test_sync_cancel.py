"""Sync methods whose caller gives up stop: in real worker processes, the cancellation is raised
in the method's thread at its next bytecode; C code runs to its end first. Also: the handshake
that keeps that exception inside the method, and a sync method that returns a coroutine."""

from __future__ import annotations

import queue
import random
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import trio

import bigactor
from bigactor import RemoteError
from bigactor._rpc import _threads
from bigactor._rpc._threads import MethodCancelled, ThreadCall

# -- actors hosted by the workers (module level: they travel by reference) ---------------------


def busy(seconds: float) -> None:
    """Pure-Python work for ``seconds``: bytecode all the way, no C call that blocks."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


class Spinner:
    """Sync methods that run long in Python or in C, and what their ends left behind."""

    def __init__(self) -> None:
        self.finally_ran = 0
        self.seen: list[bool] = []
        self.swallowed = 0
        self.interrupted = 0
        self.completed = 0

    def spin(self, seconds: float) -> None:
        self.seen.append(bigactor.cancelled())
        try:
            busy(seconds)
        finally:
            self.seen.append(bigactor.cancelled())
            self.finally_ran += 1

    def stubborn(self, seconds: float) -> None:
        """Catches every Exception of its loop: a cancellation is not one."""
        end = time.monotonic() + seconds
        try:
            while time.monotonic() < end:
                try:
                    busy(0.001)
                except Exception:
                    self.swallowed += 1
        finally:
            self.finally_ran += 1

    def nap_then_spin(self, nap: float, seconds: float) -> None:
        try:
            time.sleep(nap)  # C code: runs to its end whatever happens to the caller
            busy(seconds)
        finally:
            self.finally_ran += 1

    def items(self, seconds: float) -> Iterator[int]:
        try:
            yield 0
            busy(seconds)
            yield 1
        finally:
            self.finally_ran += 1

    def short(self, seconds: float) -> str:
        try:
            busy(seconds)
        except MethodCancelled:
            self.interrupted += 1
            raise
        self.completed += 1
        return "done"

    def add(self, a: int, b: int) -> int:
        return a + b

    def report(self) -> dict[str, Any]:
        return {"finally_ran": self.finally_ran, "seen": self.seen, "swallowed": self.swallowed}

    def outcomes(self) -> tuple[int, int]:
        return self.interrupted, self.completed

    async def cancelled_in_async(self) -> bool:
        return bigactor.cancelled()


pytestmark = pytest.mark.slow

# -- real worker processes ----------------------------------------------------------------------


async def test_cancelled_sync_method_stops_and_the_actor_answers_at_once() -> None:
    """``spin(30)`` given up after 0.5 s stops: its ``finally`` runs, the next call answers."""
    async with bigactor.open_cluster() as cluster:
        spinner = await cluster.spawn(Spinner)
        with trio.move_on_after(0.5) as scope:
            await spinner.spin(30)
        assert scope.cancelled_caught  # the caller saw trio.Cancelled, as for a local call
        t0 = time.monotonic()
        with trio.fail_after(10):  # a bound: without the fix this call waits ~29.5 s
            report = await spinner.report()
        assert time.monotonic() - t0 < 2
        assert report["finally_ran"] == 1
        # bigactor.cancelled() flips: False while the caller waited, True once it gave up.
        assert report["seen"] == [False, True]
        assert await spinner.add(2, 3) == 5


async def test_cancelled_is_false_outside_a_cancelled_sync_method() -> None:
    """``bigactor.cancelled()`` is False in the driver and in async methods."""
    assert not bigactor.cancelled()
    async with bigactor.open_cluster() as cluster:
        spinner = await cluster.spawn(Spinner)
        assert await spinner.cancelled_in_async() is False
        await spinner.spin(0)
        assert (await spinner.report())["seen"] == [False, False]


async def test_except_exception_in_the_method_does_not_swallow_the_cancellation() -> None:
    """A method whose loop catches every Exception still stops when its caller gives up."""
    async with bigactor.open_cluster() as cluster:
        spinner = await cluster.spawn(Spinner)
        with trio.move_on_after(0.5):
            await spinner.stubborn(30)
        t0 = time.monotonic()
        with trio.fail_after(10):
            report = await spinner.report()
        assert time.monotonic() - t0 < 2
        assert report["finally_ran"] == 1
        assert report["swallowed"] == 0


async def test_c_code_runs_to_its_end_then_the_method_stops() -> None:
    """``time.sleep(2)`` is not interrupted; the method stops at the bytecode after it."""
    async with bigactor.open_cluster() as cluster:
        spinner = await cluster.spawn(Spinner)
        t0 = time.monotonic()
        with trio.move_on_after(0.3):
            await spinner.nap_then_spin(2.0, 30)
        with trio.fail_after(10):
            report = await spinner.report()
        answered = time.monotonic() - t0
        # Not before the nap ended (the sleep ran to its end), and not 30 s later either.
        assert 2.0 <= answered < 4.0
        assert report["finally_ran"] == 1


async def test_cancelled_stream_stops_the_step_it_is_running() -> None:
    """A sync generator stream given up while a step runs stops that step; ``finally`` runs."""
    async with bigactor.open_cluster() as cluster:
        spinner = await cluster.spawn(Spinner)
        got = []
        with trio.move_on_after(0.5) as scope:
            async with spinner.items(30) as stream:
                async for item in stream:
                    got.append(item)  # noqa: PERF401 -- one by one: the loop is cancelled midway
        assert scope.cancelled_caught
        assert got == [0]
        t0 = time.monotonic()
        with trio.fail_after(10):
            report = await spinner.report()
        assert time.monotonic() - t0 < 2
        assert report["finally_ran"] == 1


async def test_cancellations_racing_the_end_of_calls_never_reach_later_calls() -> None:
    """300 short calls given up around the moment they end; every call after each one succeeds."""
    rng = random.Random(12)
    async with bigactor.open_cluster() as cluster:
        spinner = await cluster.spawn(Spinner)
        for i in range(300):
            # Around 10 ms: a method that holds the GIL lets the worker's event loop read the
            # CANCEL only at the interpreter's next switch (every 5 ms).
            with trio.move_on_after(rng.uniform(0, 0.02)):
                await spinner.short(rng.uniform(0, 0.02))
            with trio.fail_after(10):
                assert await spinner.add(i, 1) == i + 1
        interrupted, completed = await spinner.outcomes()
        # Both sides of the race were hit: calls stopped inside, and calls that ended first.
        assert interrupted > 0
        assert completed > 0


# -- the handshake between canceller and thread, in this process --------------------------------


@pytest.fixture
def fast_switching() -> Iterator[None]:
    """Switch the GIL every microsecond, so that a cancel can land between any two bytecodes."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def test_a_cancel_racing_the_end_of_a_call_never_lands_after_it(
    fast_switching: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """5,000 cancels at random moments around the end of calls: each cancellation is raised
    inside its call (or the wrapper around it), never in the code the thread runs next."""
    rng = random.Random(19)
    interrupt = _threads._interrupt

    def slow_interrupt(thread: int) -> int:
        if rng.random() < 0.5:
            # Widen the race: the canceller holds the call's lock a moment before it sets the
            # exception, while the call's thread runs on and may come to its end.
            time.sleep(0)
        return interrupt(thread)

    monkeypatch.setattr(_threads, "_interrupt", slow_interrupt)
    jobs: queue.SimpleQueue[ThreadCall | None] = queue.SimpleQueue()
    outcomes: queue.SimpleQueue[str] = queue.SimpleQueue()
    started = threading.Event()

    def work(n: int) -> int:
        total = 0
        for i in range(n):
            total += i
        return total

    returned = False

    def job(n: int) -> int:
        nonlocal returned
        started.set()
        total = work(n)
        returned = True
        return total

    def thread() -> None:
        while True:
            try:
                call = jobs.get()
                if call is None:
                    return
                outcome = "returned"
                try:
                    call.run()
                except MethodCancelled:
                    outcome = "interrupted"
                work(200)  # what the thread runs next: a leaked exception lands here
                outcomes.put(outcome)
            except MethodCancelled:
                outcomes.put("leaked")

    worker = threading.Thread(target=thread, daemon=True)
    worker.start()
    counts = {"returned": 0, "interrupted": 0, "leaked": 0}
    interrupted_late = 0  # after the method's last line: in the wrapper, as it returned
    try:
        for _ in range(5000):
            call = ThreadCall(job, (rng.randrange(0, 3000),), {})
            started.clear()
            returned = False
            jobs.put(call)
            assert started.wait(10), "the thread stopped taking calls"
            work(rng.randrange(0, 1000))
            call.cancel()
            outcome = outcomes.get(timeout=10)
            counts[outcome] += 1
            interrupted_late += outcome == "interrupted" and returned
    finally:
        jobs.put(None)
        worker.join(10)
    assert counts["leaked"] == 0, counts
    assert outcomes.empty()  # no call reported twice
    # Every path of the race was taken: stopped inside, ended first, set as it ended.
    assert counts["interrupted"] > 0, counts
    assert counts["returned"] > 0, counts
    assert interrupted_late > 0


def test_a_call_cancelled_inside_c_code_ends_under_a_trace_function() -> None:
    """Under a trace function (as under coverage or a debugger), a call cancelled inside C code
    stops after it, and its thread goes on to run other code."""
    sleeping = threading.Event()
    outcome: list[str] = []

    def nap() -> None:
        sleeping.set()
        time.sleep(0.3)  # C code: the cancellation waits for it
        busy(30)

    def tracer(frame: Any, event: str, arg: Any) -> Any:
        return tracer

    def thread() -> None:
        sys.settrace(tracer)
        try:
            call.run()
        except MethodCancelled:
            outcome.append("interrupted")
        busy(0.01)  # the thread's next work
        outcome.append("went on")
        sys.settrace(None)

    call = ThreadCall(nap, (), {})
    worker = threading.Thread(target=thread, daemon=True)
    worker.start()
    assert sleeping.wait(10)
    call.cancel()
    worker.join(10)
    assert not worker.is_alive(), "the thread is stuck after a cancelled call"
    assert outcome == ["interrupted", "went on"]


def test_a_call_cancelled_before_it_starts_never_runs() -> None:
    """``cancel()`` before ``run()``: the function is not called, MethodCancelled is raised."""
    ran: list[int] = []
    call = ThreadCall(ran.append, (1,), {})
    call.cancel()
    with pytest.raises(MethodCancelled):
        call.run()
    assert ran == []


def test_a_call_cannot_cancel_itself_from_its_own_thread() -> None:
    """A call run inline (as the test system does) is not interrupted by its own thread."""
    calls: list[ThreadCall] = []

    def cancel_myself() -> str:
        calls[0].cancel()
        busy(0.01)
        return "finished"

    calls.append(ThreadCall(cancel_myself, (), {}))
    assert calls[0].run() == "finished"
    assert calls[0].requested


# -- a sync method that returns a coroutine (test system: a RuntimeWarning would fail here) -----


class Forgetful:
    """Methods that forget an ``await``."""

    async def add(self, k: int) -> int:
        return k + 1

    def add_sync(self, k: int) -> Any:
        return self.add(k)  # forgot `async def` and `await`

    async def add_async(self, k: int) -> Any:
        return self.add(k)  # forgot `await`

    async def items(self) -> Any:
        yield self.add(1)  # forgot `await`


async def test_sync_method_returning_a_coroutine_gets_a_clear_error(cluster: bigactor.Cluster) -> None:
    """The caller is told to use ``async def`` or await; the coroutine is closed (no warning)."""
    forgetful = await cluster.spawn(Forgetful)
    with pytest.raises(
        TypeError, match=r"Forgetful\.add_sync is a sync method but returned a coroutine: "
    ) as info:
        await forgetful.add_sync(1)
    assert isinstance(info.value, RemoteError)
    assert "define it with `async def` or await the coroutine" in str(info.value)
    assert await forgetful.add(1) == 2


async def test_async_method_returning_a_coroutine_gets_a_clear_error(cluster: bigactor.Cluster) -> None:
    """An async method returning an unawaited coroutine fails with a TypeError saying so."""
    forgetful = await cluster.spawn(Forgetful)
    with pytest.raises(TypeError, match=r"Forgetful\.add_async returned a coroutine without awaiting it"):
        await forgetful.add_async(1)


async def test_generator_yielding_a_coroutine_gets_a_clear_error(cluster: bigactor.Cluster) -> None:
    """A generator method that yields an unawaited coroutine fails its stream with a TypeError."""
    forgetful = await cluster.spawn(Forgetful)
    with pytest.raises(TypeError, match="yielded a coroutine"):
        async for _ in forgetful.items():
            pass
