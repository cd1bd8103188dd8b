"""An actor's whole life runs on its own thread: its constructor, its sync methods and its
sync ``shutdown()`` hook. Classes that keep thread-bound state work: an ``sqlite3`` connection
made in ``__init__`` (which refuses use from any other thread), ``threading.local`` data."""

from __future__ import annotations

import sqlite3
import threading

import pytest

import bigactor

pytestmark = pytest.mark.slow  # real worker processes


#: in each worker process: the name of the thread each Ledger's hooks ran on
SEEN: dict[str, str] = {}


class Ledger:
    """Keeps its rows in an in-memory SQLite database opened by its constructor."""

    def __init__(self) -> None:
        self.db = sqlite3.connect(":memory:")  # check_same_thread: only this thread may use it
        self.db.execute("create table rows (k text, v integer)")
        self.born_on = threading.get_ident()
        SEEN["init"] = threading.current_thread().name

    def add(self, k: str, v: int) -> int:
        self.db.execute("insert into rows values (?, ?)", (k, v))
        return int(self.db.execute("select sum(v) from rows").fetchone()[0])

    def threads(self) -> tuple[int, int]:
        return self.born_on, threading.get_ident()

    def shutdown(self) -> None:
        SEEN["shutdown"] = threading.current_thread().name
        self.db.close()  # raises ProgrammingError from any other thread


class Probe:
    """Reads what the Ledgers of its worker process saw."""

    def seen(self) -> dict[str, str]:
        return dict(SEEN)


async def test_an_actor_built_on_its_thread_keeps_thread_bound_state() -> None:
    async with bigactor.open_cluster() as cluster:
        [m] = await cluster.start(1)
        ledger = await cluster.options(machine=m, name="ledger").spawn(Ledger)
        probe = await cluster.options(machine=m).spawn(Probe)
        assert (await probe.seen())["init"] == "bigactor actor ledger"
        assert await ledger.add("a", 1) == 1
        assert await ledger.add("b", 2) == 3
        born_on, now_on = await ledger.threads()
        assert born_on == now_on
        two = await cluster.options(max_concurrency=2).spawn(Ledger)  # N threads: built on one
        born_on, _ = await two.threads()
        assert born_on  # constructed, and answering


async def test_the_sync_shutdown_hook_runs_on_the_actors_thread() -> None:
    async with bigactor.open_cluster() as cluster:
        [m] = await cluster.start(1)
        ledger = await cluster.options(machine=m, name="ledger").spawn(Ledger)
        probe = await cluster.options(machine=m).spawn(Probe)
        await ledger.add("a", 1)
        await cluster.stop(ledger)  # the hook closes the database: from its own thread only
        assert (await probe.seen())["shutdown"] == "bigactor actor ledger"
        assert set(await m.call("Supervisor.actors")) == {"Supervisor", bigactor.name_of(probe)}


class Failing:
    def __init__(self) -> None:
        raise RuntimeError("no luck")


async def test_a_constructor_that_raises_hosts_nothing() -> None:
    async with bigactor.open_cluster() as cluster:
        [m] = await cluster.start(1)
        with pytest.raises(RuntimeError, match="no luck"):
            await cluster.options(machine=m, name="f").spawn(Failing)
        assert set(await m.call("Supervisor.actors")) == {"Supervisor"}
        ledger = await cluster.options(machine=m, name="f").spawn(Ledger)  # the name is free
        assert await ledger.add("x", 5) == 5
