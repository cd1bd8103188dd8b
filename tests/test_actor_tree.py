"""Actors that spawn actors (issue 8, item 7): the request travels back over the connection the
driver opened, the driver owns every machine, and children share their parent's fate."""

from __future__ import annotations

import os
import signal

import psutil
import pytest
import trio

import bigactor
from bigactor import ActorHandle, MachineLost, State
from bigactor.testing import TestSystem

pytestmark = pytest.mark.slow


class Leaf:
    def __init__(self, value: int) -> None:
        self.value = value

    async def get(self) -> int:
        return self.value

    async def pid(self) -> int:
        return os.getpid()

    async def env(self, key: str) -> str | None:
        return os.environ.get(key)


class Node:
    """A tree of actors: each node spawns `fanout` children down to `depth`, through the
    cluster its machine has (``bigactor.current_cluster()`` would do as well as ctx)."""

    def __init__(self, depth: int, fanout: int) -> None:
        self.depth = depth
        self.fanout = fanout
        self.children: list[ActorHandle] = []

    async def init(self, ctx: bigactor.Context) -> None:
        self.cluster = ctx.cluster

    async def grow(self) -> int:
        """Spawn the subtree; return how many actors it holds (this one included)."""
        if self.depth == 0:
            return 1
        async with trio.open_nursery() as nursery:
            for _ in range(self.fanout):
                nursery.start_soon(self._child)
        total = 1
        for child in self.children:
            total += await child.grow()
        return total

    async def _child(self) -> None:
        self.children.append(await self.cluster.spawn(Node, self.depth - 1, self.fanout))

    async def leaf(self, value: int, detached: bool = False, **env: str) -> ActorHandle:
        handle: ActorHandle = await self.cluster.options(detached=detached, env=env).spawn(Leaf, value)
        return handle

    async def pid(self) -> int:
        return os.getpid()

    def sync_leaf(self, value: int) -> ActorHandle:
        """A sync method spawns through the same cluster (from its worker thread)."""
        return trio.from_thread.run(bigactor.current_cluster().spawn, Leaf, value)

    async def stop_child(self, child: ActorHandle) -> None:
        await self.cluster.stop(child)


async def test_a_tree_of_actors_on_the_local_system() -> None:
    async with bigactor.open_cluster() as cluster:
        root = await cluster.spawn(Node, 2, 2)
        assert await root.grow() == 7
        # Every machine belongs to the driver's cluster: it started and watches all seven.
        owned = [m for m in cluster.machines() if m.owned]
        assert len(owned) == 7
        assert all(m.state == State.RUNNING for m in owned)
        assert [a["state"] for a in cluster.actors()] == ["running"] * 7
        assert sum(1 for a in cluster.actors() if a["parent"] is None) == 1


async def test_a_sync_method_spawns_through_current_cluster() -> None:
    async with bigactor.open_cluster() as cluster:
        assert bigactor.current_cluster() is cluster
        parent = await cluster.spawn(Node, 0, 0)
        leaf = await parent.sync_leaf(3)
        assert await leaf.get() == 3
    with pytest.raises(RuntimeError, match="no bigactor cluster here"):
        bigactor.current_cluster()


async def test_a_child_gets_its_env_and_calls_come_back_to_the_caller() -> None:
    async with bigactor.open_cluster() as cluster:
        parent = await cluster.spawn(Node, 0, 0)
        leaf = await parent.leaf(5, COLOUR="green")
        assert await leaf.get() == 5
        assert await leaf.env("COLOUR") == "green"
        assert await leaf.pid() != await parent.pid()


async def test_children_stop_with_their_parent_unless_detached() -> None:
    async with bigactor.open_cluster() as cluster:
        parent = await cluster.spawn(Node, 0, 0)
        child = await parent.leaf(1)
        free = await parent.leaf(2, detached=True)
        child_pid = await child.pid()
        await cluster.stop(parent)
        with pytest.raises(MachineLost):
            await child.get()
        assert not psutil.pid_exists(child_pid) or psutil.Process(child_pid).status() == "zombie"
        assert await free.get() == 2


async def test_a_killed_parents_children_stop() -> None:
    async with bigactor.open_cluster() as cluster:
        parent = await cluster.spawn(Node, 0, 0)
        child = await parent.leaf(1)
        os.kill(await parent.pid(), signal.SIGKILL)
        with trio.fail_after(10):
            await bigactor.machine_of(child).wait(State.STOPPED)
        with pytest.raises(MachineLost):
            await child.get()
        states = {a["name"]: a["state"] for a in cluster.actors()}
        assert states == {"Node-1": "dead", "Leaf-1": "stopped"}
        [leaf] = [a for a in cluster.actors() if a["name"] == "Leaf-1"]
        assert "the machine of its parent actor 'Node-1' stopped" in leaf["error"]


async def test_an_actor_can_stop_its_child(test_system: TestSystem) -> None:
    async with bigactor.open_cluster(test_system) as cluster:
        parent = await cluster.spawn(Node, 0, 0)
        child = await parent.leaf(1)
        await parent.stop_child(child)
        with pytest.raises(MachineLost):
            await child.get()
        assert test_system.n() == 1


async def test_a_machine_that_no_driver_started_cannot_spawn() -> None:
    """The worker-side cluster only spawns through its driver's connection."""
    async with trio.open_nursery() as nursery:
        from bigactor._cluster import Cluster
        from bigactor._rpc import Link

        orphan = Cluster(nursery, b"k" * 32, driver=Link())
        with pytest.raises(bigactor.CallNotSent, match="no connection from the driver"):
            await orphan.spawn(Leaf, 1)
        nursery.cancel_scope.cancel()


async def test_stopping_a_parent_that_shares_its_machine_stops_only_its_children(
    test_system: TestSystem,
) -> None:
    async with bigactor.open_cluster(test_system) as cluster:
        [m] = await cluster.start(1)
        first = await cluster.options(machine=m).spawn(Node, 0, 0)
        second = await cluster.options(machine=m).spawn(Node, 0, 0)
        mine = await first.leaf(1)
        theirs = await second.leaf(2)
        await cluster.stop(first)
        with pytest.raises(MachineLost, match="was stopped"):
            await mine.get()
        assert await theirs.get() == 2
        assert m.state == State.RUNNING


async def test_a_restarted_parents_children_stop() -> None:
    async with bigactor.open_cluster() as cluster:
        parent = await cluster.options(restart=1).spawn(Node, 0, 0)
        child = await parent.leaf(1)
        machine = bigactor.machine_of(parent)
        pid = await parent.pid()
        os.kill(pid, signal.SIGKILL)
        await machine.wait(State.STOPPED)
        with trio.fail_after(10):
            await bigactor.machine_of(child).wait(State.STOPPED)
            assert await parent.pid() != pid  # the parent is back
        states = sorted((a["type"], a["state"]) for a in cluster.actors())
        assert states == [("Leaf", "stopped"), ("Node", "running")]
