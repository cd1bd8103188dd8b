"""A program whose main is ``asyncio.run(main())`` uses bigactor with the same API: bigactor
runs as a Trio guest on the asyncio loop. Real workers; each test is a real asyncio program."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import psutil
import pytest

import bigactor

pytestmark = pytest.mark.slow  # real worker processes


class Counter:
    def __init__(self, start: int = 0) -> None:
        self.n = start
        self.stopped = False

    async def add(self, k: int) -> int:
        self.n += k
        return self.n

    def total(self) -> int:
        return self.n

    async def count(self, n: int):  # type: ignore[no-untyped-def]
        for i in range(n):
            yield i

    async def pid(self) -> int:
        return os.getpid()

    def spin(self) -> None:
        try:
            while True:  # stopped by MethodCancelled, raised here when its caller is cancelled
                time.sleep(0.001)
        finally:
            self.stopped = True

    def was_stopped(self) -> bool:
        deadline = time.monotonic() + 5
        while not self.stopped and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.stopped

    async def fail(self) -> None:
        raise ValueError("from the actor")

    async def ask(self, other: bigactor.ActorHandle) -> int:
        return int(await other.add(100))


def test_the_same_api_works_under_asyncio_run() -> None:
    """Spawn, async and sync methods, streams, gather in order, options, a handle passed to
    another actor, cluster.start with services, status: all from asyncio."""

    async def main() -> None:
        async with bigactor.open_cluster() as cluster:
            c = await cluster.spawn(Counter, 10)
            assert await c.add(5) == 15
            assert await c.total() == 15
            assert [x async for x in c.count(3)] == [0, 1, 2]
            results = await bigactor.gather(*(c.add(1) for _ in range(4)))
            assert sorted(results) == [16, 17, 18, 19]
            assert list(await asyncio.gather(c.total(), c.total())) == [19, 19]
            named = await cluster.options(name="other").spawn(Counter)
            assert bigactor.name_of(named) == "other"
            assert await (await cluster.actor("other")).add(1) == 1
            assert await c.ask(named) == 101  # the handle travelled as a handle
            [m] = await cluster.start(1, bigactor.Services(counter=Counter(7)))
            assert await m.call("counter.add", 1) == 8
            assert {e["addr"] for e in await cluster.status()} >= {m.addr}
            assert bigactor.machine_of(c).state == bigactor.State.RUNNING

    asyncio.run(main())


def test_cancelling_the_asyncio_task_stops_the_remote_method() -> None:
    """asyncio.wait_for's timeout cancels the call, and the method on the machine stops."""

    async def main() -> None:
        async with bigactor.open_cluster() as cluster:
            c = await cluster.options(max_concurrency=2).spawn(Counter)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(c.spin(), 0.5)
            assert await c.was_stopped()

    asyncio.run(main())


def test_errors_arrive_as_their_own_types_and_a_killed_machine_fails_fast() -> None:
    """A remote ValueError is caught by ``except ValueError``; a pending call on a machine that
    dies (SIGKILL) raises MachineLost at once."""

    async def main() -> None:
        async with bigactor.open_cluster() as cluster:
            c = await cluster.options(max_concurrency=2).spawn(Counter)
            with pytest.raises(ValueError, match="from the actor"):
                await c.fail()
            pending = asyncio.ensure_future(c.spin())
            await asyncio.sleep(0.3)
            os.kill(await c.pid(), signal.SIGKILL)
            with pytest.raises(bigactor.MachineLost):
                await asyncio.wait_for(pending, 10)

    asyncio.run(main())


def test_leaving_the_block_stops_every_worker_and_two_clusters_share_the_loop() -> None:
    """Two clusters open at once on one loop; when each block ends its workers are gone."""
    pids: list[int] = []

    async def main() -> None:
        async with bigactor.open_cluster() as one, bigactor.open_cluster() as two:
            a = await one.spawn(Counter)
            b = await two.spawn(Counter)
            pids.extend([await a.pid(), await b.pid()])
            assert await a.add(1) == await b.add(1) == 1
        for pid in pids:
            assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE

    asyncio.run(main())
    assert len(pids) == 2


def test_trio_only_helpers_say_what_to_use_under_asyncio() -> None:
    """as_completed and ActorPool need Trio; under asyncio they say so and what to use."""

    async def main() -> None:
        async with bigactor.open_cluster() as cluster:
            c = await cluster.spawn(Counter)
            with pytest.raises(RuntimeError, match=r"runs under Trio; under asyncio use bigactor\.gather"):
                async with bigactor.as_completed(c.add(1)):
                    pass
            pool = bigactor.ActorPool([c])
            with pytest.raises(RuntimeError, match=r"bigactor\.ActorPool runs under Trio"):
                async with pool.map(lambda a, v: a.add(v), [1]):
                    pass

    asyncio.run(main())
