"""``ps`` and ``top`` show what bigactor's processes are: each worker its address and actors
(kept current), the fork server as the fork server. Real processes; titles read from /proc."""

from __future__ import annotations

import os

import psutil
import pytest

import bigactor

pytestmark = pytest.mark.slow  # real worker processes


class Named:
    async def pid(self) -> int:
        return os.getpid()


def title(pid: int) -> str:
    """What ``ps -o args`` shows for ``pid``."""
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode().strip()


def comm(pid: int) -> str:
    """What ``top`` shows for ``pid`` (15 characters at most)."""
    with open(f"/proc/{pid}/comm") as f:
        return f.read().strip()


async def test_a_worker_shows_its_address_and_actors_as_they_come_and_go() -> None:
    """Spawning and stopping actors updates the worker's title; the fork server is named."""
    async with bigactor.open_cluster() as cluster:
        first = await cluster.options(name="ingest").spawn(Named)
        machine = bigactor.machine_of(first)
        pid = await first.pid()
        assert title(pid) == f"bigactor worker {machine.addr}: ingest"
        assert comm(pid) == "bigactor worker"
        second = await cluster.options(name="scorer", machine=machine).spawn(Named)
        assert title(pid) == f"bigactor worker {machine.addr}: ingest, scorer"
        await cluster.stop(first)
        assert title(pid) == f"bigactor worker {machine.addr}: scorer"
        assert await second.pid() == pid
        server = psutil.Process(pid).ppid()
        assert title(server) == f"bigactor fork server (driver {os.getpid()})"


async def test_a_fresh_worker_is_titled_too() -> None:
    """A worker started as a fresh interpreter (no fork server) shows the same title."""
    async with bigactor.open_cluster(forkserver=False) as cluster:
        h = await cluster.options(name="solo").spawn(Named)
        pid = await h.pid()
        assert title(pid) == f"bigactor worker {bigactor.machine_of(h).addr}: solo"


def test_a_crowded_worker_names_some_actors_and_counts_the_rest() -> None:
    """Past 8 actors the title counts the rest; the Supervisor service is never shown."""
    from bigactor._title import worker_title

    names = ["Supervisor", *(f"a{i}" for i in range(10))]
    assert (
        worker_title("unix:/w", names) == "bigactor worker unix:/w: a0, a1, a2, a3, a4, a5, a6, a7 and 2 more"
    )
    assert worker_title("unix:/w", ["Supervisor"]) == "bigactor worker unix:/w"
