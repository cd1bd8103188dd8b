"""Draining notices: a worker tells the driver its machine will go away soon (a spot instance
being reclaimed); the driver marks the machine draining, runs the cluster's callback, and names
the notice when the machine is lost."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing
from channel_support import RemoteLikeSystem
from imds_support import Metadata

import bigactor
from bigactor import MachineLost, State
from bigactor._machine import Machine, Notice
from bigactor._system import KeepaliveConfig
from bigactor.systems._remote._worker import IMDS_EXTRA, IMDS_PERIOD_EXTRA
from bigactor.testing import TestSystem

SPOT = "spot interruption: instance action terminate at 12:02:05 UTC"


class Echo:
    async def echo(self, x: Any) -> Any:
        return x


async def test_a_notice_marks_the_machine_draining_at_once(autojump_clock: trio.testing.MockClock) -> None:
    """The notice reaches the driver with no time passing; the machine stays RUNNING and keeps
    serving; the callback gets the machine and the notice."""
    seen: list[tuple[Machine, Notice]] = []
    system = TestSystem()
    async with bigactor.open_cluster(system, on_draining=lambda m, n: seen.append((m, n))) as cluster:
        [m] = await cluster.start(1, bigactor.Services(echo=Echo()))
        await m.wait(State.RUNNING)
        assert not m.draining
        start = trio.current_time()
        system.notice(m, "interruption", SPOT)
        await m.draining_event.wait()
        assert trio.current_time() == start
        assert m.draining
        assert m.state == State.RUNNING
        [notice] = m.notices
        assert (notice.kind, notice.message) == ("interruption", SPOT)
        assert seen == [(m, notice)]
        assert await m.call("echo.echo", 7) == 7
        [entry] = await cluster.status()
        assert entry["draining"] is True
        assert entry["notices"] == [str(notice)]


async def test_the_loss_of_a_draining_machine_names_its_notice(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """When the machine goes away after its notice, machine.error says what it had been told."""
    system = TestSystem(keepalive=KeepaliveConfig(period=10.0, timeout=5.0, rpc_timeout=1.0))
    async with bigactor.open_cluster(system) as cluster:
        [m] = await cluster.start(1)
        await m.wait(State.RUNNING)
        system.notice(m, "interruption", SPOT)
        await m.draining_event.wait()
        when = datetime.datetime.fromtimestamp(m.notices[0].time, datetime.UTC).strftime("%H:%M:%S")
        system.kill(m)
        await m.wait(State.STOPPED)
        assert isinstance(m.error, MachineLost)
        assert str(m.error).endswith(f"(after its interruption notice at {when} UTC: {SPOT})")
        assert m.error.args == (m.addr, m.error.message)  # pickles as it reads


async def test_a_notice_given_before_the_driver_listens_is_not_lost(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A notice the worker gives while the driver is still booting it arrives once it runs;
    a clean shutdown afterwards is not blamed on it."""
    system = TestSystem()
    async with bigactor.open_cluster(system) as cluster:
        [m] = await cluster.start(1)
        system.notice(m, "interruption", "first")
        system.notice(m, "maintenance", "second")
        await m.draining_event.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert [(n.kind, n.message) for n in m.notices] == [
            ("interruption", "first"),
            ("maintenance", "second"),
        ]
        await m.shutdown()
        assert m.error is not None
        assert "notice" not in str(m.error)


async def test_an_async_callback_runs_as_a_task_of_the_cluster(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A coroutine function as on_draining runs in the cluster's nursery: it may outlive the
    machine, and it is cancelled only with the cluster."""
    done: list[str] = []
    finished = trio.Event()

    async def migrate(machine: Machine, notice: Notice) -> None:
        await machine.wait(State.STOPPED)
        await trio.sleep(1)
        done.append(f"{machine.addr} {notice.kind}")
        finished.set()

    system = TestSystem()
    async with bigactor.open_cluster(system) as cluster:
        cluster.on_draining = migrate
        [m] = await cluster.start(1)
        await m.wait(State.RUNNING)
        system.notice(m, "interruption", SPOT)
        await m.draining_event.wait()
        stopped = trio.current_time()
        m.cancel()
        await finished.wait()
        assert trio.current_time() == stopped + 1  # it ran on after the machine stopped
    assert done == [f"{m.addr} interruption"]


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_a_spot_interruption_on_a_remote_worker_reaches_the_driver(
    tmp_path: Path, imds: tuple[str, Metadata]
) -> None:
    """A real remote-style worker watching a metadata service passes its spot interruption
    notice on within a second of the notice appearing; when the instance then goes, the
    machine's error names the interruption."""
    url, metadata = imds
    seen: list[Notice] = []
    system = RemoteLikeSystem(
        directory=tmp_path,
        extra={IMDS_EXTRA: url, IMDS_PERIOD_EXTRA: "0.1"},
        keepalive=KeepaliveConfig(period=2.0, timeout=3.0, rpc_timeout=1.0),
    )
    async with bigactor.open_cluster(system, on_draining=lambda m, n: seen.append(n)) as cluster:
        [m] = await cluster.start(1, bigactor.Services(echo=Echo()))
        with trio.fail_after(60):
            assert await m.call("echo.echo", 1) == 1
        assert not m.draining
        metadata.action = json.dumps({"action": "terminate", "time": "2026-12-03T12:02:05Z"})
        with trio.fail_after(1.0):
            await m.draining_event.wait()
        assert [(n.kind, n.message) for n in seen] == [("interruption", SPOT)]
        assert await m.call("echo.echo", 2) == 2  # still serving
        system.instances[0].kill()  # the instance is reclaimed
        with trio.fail_after(30):
            await m.wait(State.STOPPED)
        assert isinstance(m.error, MachineLost)
        assert "(after its interruption notice at " in str(m.error)
        assert str(m.error).endswith(f"UTC: {SPOT})")
