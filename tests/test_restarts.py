"""Restarts (issue 8, item 13): an actor spawned with a restart policy is rebuilt on a new
machine when its machine dies (here: real worker processes, killed with SIGKILL), and every
handle keeps working."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import trio

import bigactor
from bigactor import ActorHandle, MachineLost, Restart, State

pytestmark = pytest.mark.slow


class Counter:
    def __init__(self, start: int) -> None:
        self.n = start

    async def add(self, k: int) -> int:
        self.n += k
        return self.n

    async def get(self) -> int:
        return self.n

    async def pid(self) -> int:
        return os.getpid()

    async def hang(self) -> None:
        await trio.sleep_forever()

    async def hang_safely(self) -> int:
        """Hangs on the first instance (n == start) only: safe to repeat by policy."""
        if self.n == 10:
            await trio.sleep_forever()
        return self.n


class User:
    """Holds a handle passed to it (pickled into this actor's machine)."""

    def __init__(self, counter: ActorHandle) -> None:
        self.counter = counter

    async def add(self, k: int) -> int:
        result: int = await self.counter.add(k)
        return result

    async def by_name(self) -> int:
        found = await bigactor.current_cluster().actor("counter")
        result: int = await found.get()
        return result


async def _kill(handle: ActorHandle) -> str:
    """SIGKILL the actor's worker and wait until the driver has seen it die (a call made
    before that is in flight at the death); return the address it had."""
    machine = bigactor.machine_of(handle)
    os.kill(await handle.pid(), signal.SIGKILL)
    with trio.fail_after(10):
        await machine.wait(State.STOPPED)
    return machine.addr


async def test_a_killed_actor_is_rebuilt_and_every_handle_follows() -> None:
    async with bigactor.open_cluster() as cluster:
        counter = await cluster.options(name="counter", restart=3).spawn(Counter, 10)
        user = await cluster.spawn(User, counter)
        assert await counter.add(1) == 11
        assert await user.add(1) == 12
        seen = set()
        for round_ in range(3):
            seen.add(await _kill(counter))
            # The rebuilt actor has its constructor's state again (same arguments).
            assert await counter.add(1) == 11
            assert await user.add(1) == 12
            assert await user.by_name() == 12
            named = await cluster.actor("counter")
            assert await named.get() == 12
            assert bigactor.machine_of(counter).addr not in seen
            [life] = cluster.actors()[:1]
            assert life["restarts"] == round_ + 1
            assert len(life["causes"]) == round_ + 1
            assert "SIGKILL" in life["causes"][-1]["cause"]
        status = await cluster.status()
        [here] = [e for e in status if e["addr"] == bigactor.machine_of(counter).addr]
        assert [(life["name"], life["restarts"]) for life in here["lives"]] == [("counter", 3)]


async def test_a_call_in_flight_fails_at_the_death() -> None:
    """Fail fast: a call whose method the policy does not name fails when the machine dies;
    it is not sent again to the new instance."""
    async with bigactor.open_cluster() as cluster:
        counter = await cluster.options(restart=2).spawn(Counter, 10)
        pid = await counter.pid()
        failed: list[tuple[float, MachineLost]] = []

        async def hang() -> None:
            try:
                await counter.hang()
            except MachineLost as exc:
                failed.append((trio.current_time(), exc))

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(hang)
                await trio.sleep(0.3)
                t0 = trio.current_time()
                os.kill(pid, signal.SIGKILL)
        [(at, error)] = failed
        assert at - t0 < 0.9
        assert "SIGKILL" in str(error)
        assert await counter.get() == 10  # and the actor is back


class Flaky:
    """Its `work` hangs until the machine dies, on the first instance only."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    async def pid(self) -> int:
        return os.getpid()

    def work(self) -> int:
        marker = Path(self.marker)
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            time.sleep(60)  # until the machine is killed
        return os.getpid()


async def test_a_repeatable_call_in_flight_is_resent_to_the_new_instance(tmp_path: Path) -> None:
    async with bigactor.open_cluster() as cluster:
        marker = str(tmp_path / "ran")
        flaky = await cluster.options(restart=Restart(repeat="work")).spawn(Flaky, marker)
        first = await flaky.pid()
        result: list[int] = []
        async with trio.open_nursery() as nursery:

            async def work() -> None:
                result.append(await flaky.work())

            nursery.start_soon(work)
            with trio.fail_after(5):
                while not await trio.Path(marker).exists():  # noqa: ASYNC110 - another process writes it
                    await trio.sleep(0.01)
            os.kill(first, signal.SIGKILL)
        assert int(await trio.Path(marker).read_text()) == first  # it ran on the first instance
        assert len(result) == 1
        assert result[0] != first
        assert result[0] == await flaky.pid()


class SlowToRestart:
    """Its second instance takes a second to start (its init sleeps)."""

    def __init__(self, marker: str) -> None:
        self.marker = Path(marker)

    async def init(self, ctx: bigactor.Context) -> None:
        if await trio.Path(self.marker).exists():
            await trio.sleep(1.0)
        await trio.Path(self.marker).write_text("started")

    async def pid(self) -> int:
        return os.getpid()


async def test_calls_wait_for_the_restart_within_their_own_deadline(tmp_path: Path) -> None:
    async with bigactor.open_cluster() as cluster:
        actor = await cluster.options(restart=1).spawn(SlowToRestart, str(tmp_path / "m"))
        first = await _kill(actor)
        # The new instance takes 1 s to start: a caller with 0.2 s to spare gives up, as it
        # asked; one with time waits and is served by the new instance.
        with pytest.raises(trio.TooSlowError), trio.fail_after(0.2):
            await actor.pid()
        with trio.fail_after(10):
            await actor.pid()
        assert bigactor.machine_of(actor).addr != first


def test_backoff_starts_at_once_then_grows_to_five_seconds() -> None:
    policy = Restart()
    assert [policy.backoff(n) for n in range(1, 8)] == [0.0, 1.0, 1.5, 2.25, 3.375, 5.0, 5.0]


async def test_restarts_run_out_with_every_cause() -> None:
    async with bigactor.open_cluster() as cluster:
        counter = await cluster.options(restart=Restart(max_restarts=1, window=60)).spawn(Counter, 10)
        first = await _kill(counter)
        assert await counter.get() == 10
        second = await _kill(counter)
        await bigactor.machine_of(counter).wait(State.STOPPED)
        with pytest.raises(MachineLost) as info:
            await counter.get()
        message = str(info.value)
        assert "died 2 times" in message
        assert "allows 1 in 60 s" in message
        assert first in message
        assert second in message
        assert len(info.value.causes) == 2  # type: ignore[attr-defined]
        assert cluster.actors()[0]["state"] == "dead"


async def test_without_a_policy_a_dead_actor_stays_dead() -> None:
    async with bigactor.open_cluster() as cluster:
        counter = await cluster.spawn(Counter, 10)
        await _kill(counter)
        with pytest.raises(MachineLost, match="SIGKILL"):
            await counter.get()
        assert cluster.actors()[0]["state"] == "dead"
        assert len(cluster.machines()) == 0
