"""Spawn options apart from the constructor, handles that never shadow methods, placement by
cpus/memory, stopping one actor, and spawns that fail or are cancelled (issue 8, items 5, 6, 8,
10, 11 and 14), on the test system."""

from __future__ import annotations

import pytest
import trio
import trio.testing

import bigactor
from bigactor import ActorHandle, Environ, MachineLost, ServiceNotFound, State
from bigactor.testing import TestSystem


class Named:
    """An actor whose constructor and methods use the names spawn and handles used to take."""

    def __init__(self, name: str, machine: str = "m0") -> None:
        self._name = name
        self._machine = machine

    async def name(self) -> str:
        return self._name

    async def machine(self) -> str:
        return self._machine

    def options(self) -> str:
        return "mine"


class Env:
    async def get(self, key: str) -> str | None:
        import os

        return os.environ.get(key)


class Stoppable:
    """Records its shutdown hook's run in a list the test can read through another actor."""

    def __init__(self, hang: bool = False) -> None:
        self.hang = hang
        self.stopped = False

    async def ping(self) -> str:
        return "pong"

    async def shutdown(self) -> None:
        if self.hang:
            await trio.sleep_forever()
        self.stopped = True


class Broken:
    def __init__(self) -> None:
        raise RuntimeError("constructor failed")


class Slow:
    async def init(self, ctx: bigactor.Context) -> None:
        await trio.sleep(10)


async def test_options_never_take_the_constructors_arguments(cluster: bigactor.Cluster) -> None:
    """`name` and `machine` reach the constructor; the actor's own name comes from options."""
    h = await cluster.options(name="n1").spawn(Named, "ctor-name", machine="ctor-machine")
    assert await h.name() == "ctor-name"
    assert await h.machine() == "ctor-machine"
    assert await h.options() == "mine"
    assert bigactor.name_of(h) == "n1"
    assert isinstance(bigactor.machine_of(h), bigactor.Machine)
    again = await cluster.actor("n1")
    assert await again.name() == "ctor-name"


async def test_handle_attributes_never_shadow_methods(cluster: bigactor.Cluster) -> None:
    """An actor method called `name` or `machine` is called through the handle, and a handle
    without such methods still answers the old attributes, with a DeprecationWarning."""
    h = await cluster.spawn(Named, "x")
    assert await h.name() == "x"
    plain = await cluster.spawn(Env)
    with pytest.warns(DeprecationWarning, match=r"bigactor\.name_of"):
        assert plain.name == bigactor.name_of(plain)
    with pytest.warns(DeprecationWarning, match=r"bigactor\.machine_of"):
        assert plain.machine is bigactor.machine_of(plain)


async def test_old_spawn_keywords_still_work_with_a_warning(cluster: bigactor.Cluster) -> None:
    machines = await cluster.start(1)
    with pytest.warns(DeprecationWarning, match=r"cluster\.options\(machine=\.\.\., name=\.\.\.\)"):
        h = await cluster.spawn(Env, machine=machines[0], name="old")
    assert bigactor.machine_of(h) is machines[0]
    assert bigactor.name_of(await cluster.actor("old")) == "old"


async def test_bad_options_fail_before_anything_starts(
    cluster: bigactor.Cluster, test_system: TestSystem
) -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
        cluster.options(colour="red")
    with pytest.raises(ValueError, match="max_concurrency must be an int >= 1"):
        cluster.options(max_concurrency=0)
    with pytest.raises(ValueError, match="cpus must be a positive number"):
        cluster.options(cpus=-1)
    with pytest.raises(ValueError, match="env= sets the environment of a new machine"):
        cluster.options(machine="test:1", env={"A": "1"})
    with pytest.raises(TypeError, match=r"restart= takes a bigactor\.Restart or an int"):
        cluster.options(restart="always")
    assert test_system.n() == 0


async def test_env_goes_to_the_new_machine(cluster: bigactor.Cluster, test_system: TestSystem) -> None:
    """(The local system's test checks the worker's os.environ: test_actor_tree.py.)"""
    h = await cluster.options(env=Environ(["COLOUR=red"])).spawn(Env)
    assert test_system.environ(bigactor.machine_of(h)).items() >= {"COLOUR": "red"}.items()
    h2 = await cluster.options(env={"COLOUR": "blue"}).spawn(Env)
    assert test_system.environ(bigactor.machine_of(h2)).items() >= {"COLOUR": "blue"}.items()


async def test_unknown_actor_names_the_cluster_and_what_it_has(cluster: bigactor.Cluster) -> None:
    await cluster.options(name="known").spawn(Env)
    with pytest.raises(ServiceNotFound) as info:
        await cluster.actor("nope")
    assert "no actor named 'nope' in this cluster (named actors: known)" in str(info.value)
    assert "machine :" not in str(info.value)


async def test_a_failed_spawn_stops_the_machine_it_started(
    cluster: bigactor.Cluster, test_system: TestSystem
) -> None:
    with pytest.raises(RuntimeError, match="constructor failed"):
        await cluster.spawn(Broken)
    assert test_system.n() == 0
    assert cluster.machines() == []


async def test_a_cancelled_spawn_stops_the_machine_it_started(test_system: TestSystem) -> None:
    async with bigactor.open_cluster(test_system) as cluster:
        with trio.move_on_after(0.2) as scope:
            await cluster.spawn(Slow)
        assert scope.cancelled_caught
        assert test_system.n() == 0
        assert cluster.machines() == []


async def test_a_failed_spawn_on_a_given_machine_leaves_it_running(
    cluster: bigactor.Cluster, test_system: TestSystem
) -> None:
    [m] = await cluster.start(1)
    with pytest.raises(RuntimeError, match="constructor failed"):
        await cluster.options(machine=m).spawn(Broken)
    assert m.state == State.RUNNING
    assert test_system.n() == 1


# -- placement ---------------------------------------------------------------------------------


async def test_cpus_place_actors_where_there_is_room() -> None:
    system = TestSystem(maxprocs=2, memory=1000)
    async with bigactor.open_cluster(system) as cluster:
        [bare] = await cluster.start(1)
        a = await cluster.options(cpus=1).spawn(Env)
        b = await cluster.options(cpus=1, memory=500).spawn(Env)
        assert bigactor.machine_of(a) is bare
        assert bigactor.machine_of(b) is bare
        c = await cluster.options(cpus=0.5).spawn(Env)  # bare is full: a new machine
        assert bigactor.machine_of(c) is not bare
        d = await cluster.options(cpus=1, memory=600).spawn(Env)  # fits c's machine's memory
        assert bigactor.machine_of(d) is bigactor.machine_of(c)
        e = await cluster.options(memory=600).spawn(Env)  # c's machine has 400 bytes left
        assert bigactor.machine_of(e) not in (bare, bigactor.machine_of(c))
        # A dedicated machine (plain spawn) is never chosen for another actor.
        alone = await cluster.spawn(Env)
        f = await cluster.options(cpus=0.1).spawn(Env)
        assert bigactor.machine_of(f) is not bigactor.machine_of(alone)
        # Stopping an actor frees its room.
        await cluster.stop(a)
        g = await cluster.options(cpus=1).spawn(Env)
        assert bigactor.machine_of(g) is bare


async def test_a_request_no_machine_can_hold_is_a_clear_error() -> None:
    system = TestSystem(maxprocs=2, memory=1000)
    async with bigactor.open_cluster(system) as cluster:
        with pytest.raises(ValueError, match=r"cpus=3.*has 2 CPUs and 1000 bytes"):
            await cluster.options(cpus=3).spawn(Env)
        with pytest.raises(ValueError, match=r"memory=2000"):
            await cluster.options(memory=2000).spawn(Env)
        assert system.n() == 0


# -- stopping one actor ------------------------------------------------------------------------


class Witness:
    """Reads another actor's `stopped` flag before and after; lives on its own machine."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def note(self, text: str) -> None:
        self.seen.append(text)

    async def notes(self) -> list[str]:
        return self.seen


class Hooked:
    def __init__(self, witness: ActorHandle, hang: bool = False) -> None:
        self.witness = witness
        self.hang = hang

    async def ping(self) -> str:
        return "pong"

    async def shutdown(self) -> None:
        await self.witness.note("shutdown began")
        if self.hang:
            await trio.sleep_forever()
        await self.witness.note("shutdown done")


async def test_stop_runs_the_hook_and_frees_a_machine_it_was_alone_on(
    cluster: bigactor.Cluster, test_system: TestSystem
) -> None:
    witness = await cluster.spawn(Witness)
    h = await cluster.spawn(Hooked, witness)
    m = bigactor.machine_of(h)
    assert await h.ping() == "pong"
    await cluster.stop(h)
    assert await witness.notes() == ["shutdown began", "shutdown done"]
    assert m.state == State.STOPPED
    with pytest.raises(MachineLost):
        await h.ping()
    await cluster.stop(h)  # stopping again does nothing
    assert [a["state"] for a in cluster.actors()] == ["running", "stopped"]


async def test_stop_bounds_the_hook_by_its_grace(
    autojump_clock: trio.testing.MockClock, test_system: TestSystem
) -> None:
    async with bigactor.open_cluster(test_system) as cluster:
        witness = await cluster.spawn(Witness)
        h = await cluster.spawn(Hooked, witness, hang=True)
        t0 = trio.current_time()
        await cluster.stop(h, grace=3.0)
        assert trio.current_time() - t0 == pytest.approx(3.0, abs=0.1)
        assert await witness.notes() == ["shutdown began"]


async def test_stop_keeps_a_shared_machine_running(cluster: bigactor.Cluster) -> None:
    [m] = await cluster.start(1)
    a = await cluster.options(machine=m).spawn(Env)
    b = await cluster.options(machine=m).spawn(Env)
    await cluster.stop(a)
    assert m.state == State.RUNNING
    assert await b.get("NOPE") is None
    with pytest.raises(ServiceNotFound):
        await a.get("NOPE")
    await cluster.stop(b)
    assert m.state == State.RUNNING  # started by cluster.start: the user's to stop


class Pair:
    """Two calls of `meet` return only if they run at once (on two threads)."""

    def __init__(self) -> None:
        import threading

        self.barrier = threading.Barrier(2, timeout=5)

    def meet(self) -> int:
        return self.barrier.wait()


@pytest.mark.slow
async def test_max_concurrency_from_options_reaches_the_actor() -> None:
    """(Real threads: the test system runs sync methods inline.)"""
    async with bigactor.open_cluster() as cluster:
        pair = await cluster.options(max_concurrency=2).spawn(Pair)
        assert sorted(await bigactor.gather(pair.meet(), pair.meet())) == [0, 1]
