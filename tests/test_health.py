"""Health of workers: an OOM kill named as such."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

import bigactor
from bigactor import MachineLost, Services, State

pytestmark = pytest.mark.slow

MEMORY_CGROUP = Path("/sys/fs/cgroup/memory")


class Hog:
    """Allocates until something stops it."""

    def pid(self) -> int:
        return os.getpid()

    def allocate(self, mib: int) -> int:
        blocks = [bytearray(1 << 20) for _ in range(mib)]  # touched: bytearray zero-fills
        return len(blocks)


@pytest.fixture
def small_cgroup() -> Iterator[Path]:
    """A cgroup-v1 memory cgroup limited to 100 MB (needs root and a writable hierarchy)."""
    if os.geteuid() != 0 or not os.access(MEMORY_CGROUP, os.W_OK):
        pytest.skip("needs root and a writable cgroup-v1 memory hierarchy")
    path = MEMORY_CGROUP / f"bigactor-test-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    try:
        (path / "memory.limit_in_bytes").write_text(str(100 * 1000 * 1000))
        swap = path / "memory.memsw.limit_in_bytes"
        if swap.exists():
            swap.write_text(str(100 * 1000 * 1000))
        yield path
    finally:
        for pid in (path / "cgroup.procs").read_text().split():
            (MEMORY_CGROUP / "cgroup.procs").write_text(pid)
        path.rmdir()


async def test_worker_killed_by_the_oom_killer_says_so(small_cgroup: Path) -> None:
    """A worker OOM-killed under a 100 MB memory cgroup stops with an error naming the OOM kill."""
    async with bigactor.open_cluster() as cluster:
        [m] = await cluster.start(1, Services(hog=Hog()))
        pid = await m.call("hog.pid")
        (small_cgroup / "cgroup.procs").write_text(str(pid))
        with trio.fail_after(30), pytest.raises(MachineLost):
            await m.call("hog.allocate", 400)
        assert m.state == State.STOPPED
        assert "OOM killer" in str(m.error)
        assert str(pid) in str(m.error)


async def test_unhealthy_worker_is_logged_once_per_episode_with_what_it_holds(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker over its memory threshold is logged once, with its object counts, not per keepalive."""
    from bigactor.supervisor import WatchdogConfig
    from bigactor.testing import TestSystem

    system = TestSystem(
        keepalive=bigactor.KeepaliveConfig(period=2, timeout=4, rpc_timeout=1),
        watchdog=WatchdogConfig(tick=1, unhealthy_memory_percent=0.0),  # any use is too much
    )
    async with bigactor.open_cluster(system) as cluster:
        [m] = await cluster.start(1, Services(hog=Hog()))
        await m.wait(State.RUNNING)
        await trio.sleep(20)  # ten keepalives after the worker turned unhealthy
        assert m.state == State.RUNNING
    warnings = [r for r in caplog.records if "unhealthy" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].levelname == "WARNING"
    assert "live objects by type" in warnings[0].getMessage()


async def test_unhealthy_local_worker_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    """On real processes too: one warning, naming the machine, across many keepalives."""
    from bigactor.supervisor import WatchdogConfig

    async with bigactor.open_cluster(
        keepalive=bigactor.KeepaliveConfig(period=0.2, timeout=5, rpc_timeout=2),
        watchdog=WatchdogConfig(tick=0.1, unhealthy_memory_percent=0.0),
    ) as cluster:
        [m] = await cluster.start(1, Services(hog=Hog()))
        await trio.sleep(2.0)  # real time: keepalives go out every 0.1 s
        assert len(m.keepalive_reply_times) == 10  # the ring of the last ten is full
    warnings = [r for r in caplog.records if "unhealthy" in r.getMessage()]
    assert len(warnings) == 1
    assert m.addr in warnings[0].getMessage()
