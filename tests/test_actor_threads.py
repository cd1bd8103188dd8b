"""An actor's sync methods run on threads of its own, fed by a queue, and their outcomes come
back to the event loop in batches. Hosted by an ``ActorTable`` in this process over a real Unix
socket, with real threads."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import trio
from table_support import hosting

from bigactor._rpc._server import _Job

pytestmark = pytest.mark.slow  # real threads and sockets


class Where:
    """Sync methods that say where they run, or wait to be let go."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.holding = threading.Event()

    def where(self) -> tuple[int, str]:
        return threading.get_ident(), threading.current_thread().name

    def hold(self) -> str:
        self.holding.set()
        self.go.wait(30)
        return "let go"


def _threads_named(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == name]


async def _stopped(actor: Any) -> None:
    """Wait (at most 10 s) for the actor's threads to leave their loops."""
    assert await trio.to_thread.run_sync(actor._own.stopped.wait, 10)


async def test_sync_methods_run_on_the_actors_own_named_thread() -> None:
    async with hosting({"w": (Where(), None), "two": (Where(), 2)}) as (client, _):
        seen = {await client.call("w.where") for _ in range(20)}
        assert seen == {(next(iter(seen))[0], "bigactor actor w")}  # one thread, always
        assert len(_threads_named("bigactor actor two")) == 2  # max_concurrency=2: its two
        idents = {(await client.call("two.where"))[0] for _ in range(20)}
        assert idents <= {t.ident for t in _threads_named("bigactor actor two")}


async def test_outcomes_that_finish_together_come_back_in_one_batch() -> None:
    async with hosting({"w": (Where(), None)}) as (_, table):
        own = table.actors["w"]._own
        assert own is not None
        drains = 0
        drain = own._drain

        def counting() -> None:
            nonlocal drains
            drains += 1
            drain()

        own._drain = counting  # type: ignore[method-assign]
        results: list[Any] = []

        async def call() -> None:
            results.append(await table.actors["w"].run_sync(lambda: threading.current_thread().name))

        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(call)
            await trio.lowlevel.checkpoint()  # every call is queued...
            # ...and runs while the event loop is held: 50 outcomes wait for it.
            time.sleep(0.5)  # noqa: ASYNC251 - holding the loop is the point
        assert results == ["bigactor actor w"] * 50
        assert drains <= 2  # one wake-up for the batch (two if the first came early)


async def test_stopping_an_actor_ends_its_threads_after_the_queued_work() -> None:
    where = Where()
    async with hosting({"w": (where, None)}) as (client, table):
        actor = table.actors["w"]
        async with trio.open_nursery() as nursery:
            results: list[str] = []

            async def hold() -> None:
                results.append(await client.call("w.hold"))

            nursery.start_soon(hold)
            await trio.sleep(0.2)
            actor.close()  # the held call was queued before: it still runs
            with pytest.raises(trio.ClosedResourceError, match="actor w has stopped"):
                await actor.run_sync(time.time)
            where.go.set()
        assert results == ["let go"]
        await _stopped(actor)


async def test_a_cancelled_table_does_not_wait_for_a_method_that_runs_on() -> None:
    where = Where()
    with trio.fail_after(10):
        async with hosting({"w": (where, None)}) as (_, table):
            actor = table.actors["w"]
            # Queued, never cancelled: no MethodCancelled is raised into the thread (a pending
            # one would slow every thread under coverage's tracer until hold() returns).
            actor.submit(_Job(where.hold, (), {}, lambda ok, value: None))
            while not where.holding.is_set():
                await trio.to_thread.run_sync(where.holding.wait, 1)
        # The hosting nursery was cancelled with hold() still running in its thread.
    assert not actor._own.stopped.is_set()
    where.go.set()
    await _stopped(actor)
