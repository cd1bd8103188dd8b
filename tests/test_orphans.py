"""No orphans: when the driver dies, every worker is gone within 2 s, whatever it is doing.

The workers here are real processes, the driver a real program killed with SIGKILL. The
workers are made as hard to kill from inside as a user's code can make them: an async method
that blocks the Trio loop with ``time.sleep``, a regex that holds the GIL, a SIGSTOPped process.
Only something outside the worker can end those; the guardian process is that something.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import psutil
import pytest
import trio
from local_support import Echo, first_line, gone, wait_gone

import bigactor
from bigactor import MachineLost, Services, State

pytestmark = pytest.mark.slow

DRIVER = """
    import json, os, re, sys, time
    import trio
    import bigactor

    class Blocker:
        def __init__(self, flag_dir):
            self.flag_dir = flag_dir

        async def block(self, how):
            open(os.path.join(self.flag_dir, f"blocking-{os.getpid()}"), "w").close()
            if how == "sleeping":
                time.sleep(600)  # blocks the worker's Trio loop: its own lifeline cannot run
            elif how == "regex":
                re.match(r"(a+)+$", "a" * 40 + "b")  # minutes inside C, holding the GIL
            else:
                await trio.sleep_forever()

        def pid(self):
            return os.getpid()

    async def main(how, forkserver, flag_dir):
        async with bigactor.open_cluster(forkserver=forkserver) as cluster:
            handles = [await cluster.spawn(Blocker, flag_dir) for _ in range(2)]
            pids = [await h.pid() for h in handles]
            system = cluster.system
            async with trio.open_nursery() as nursery:
                for h in handles:
                    nursery.start_soon(h.block, how)
                with trio.fail_after(30):
                    while len(os.listdir(flag_dir)) < len(handles):
                        await trio.sleep(0.01)
                print(json.dumps({
                    "dir": system._dir,
                    "workers": pids,
                    "guardian": system._guardian.process.pid,
                    "forkserver": system._server.process.pid if system._server else None,
                }), flush=True)
                await trio.sleep_forever()

    trio.run(main, sys.argv[1], sys.argv[2] == "fork", sys.argv[3])
"""


class Driver:
    """A driver program run as a subprocess, with what it reported of its cluster."""

    def __init__(self, proc: trio.Process, report: dict[str, Any]) -> None:
        self.proc = proc
        self.report = report
        self.workers: list[int] = report["workers"]

    def children_named(self, name: str) -> list[int]:
        found = []
        for child in psutil.Process(self.proc.pid).children():
            with contextlib.suppress(psutil.Error):  # a zombie not reaped yet has no cmdline
                if name in " ".join(child.cmdline()):
                    found.append(child.pid)
        return found


async def start_driver(tmp_path: Path, how: str, forkserver: bool) -> Driver:
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(DRIVER))
    flags = tmp_path / "flags"
    flags.mkdir()
    proc = await trio.lowlevel.open_process(
        [sys.executable, str(script), how, "fork" if forkserver else "fresh", str(flags)],
        stdout=subprocess.PIPE,
        cwd=tmp_path,
    )
    out = await first_line(proc, "its workers")
    assert proc.stdout is not None
    await proc.stdout.aclose()
    return Driver(proc, json.loads(out))


async def kill_driver_expect_no_orphans(driver: Driver) -> None:
    """SIGKILL the driver; every worker must be gone within 2 s, and the socket directory."""
    pids = list(driver.workers)
    try:
        driver.proc.kill()
        await driver.proc.wait()
        with trio.fail_after(2):  # the contract's bound
            await wait_gone(pids)
        with trio.fail_after(2):
            while os.path.exists(driver.report["dir"]):  # noqa: ASYNC110, ASYNC240 - nothing to wait on
                await trio.sleep(0.01)
    finally:
        for pid in pids:  # only if the test failed: leave nothing behind
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("forkserver", [True, False], ids=["forked", "fresh"])
@pytest.mark.parametrize("how", ["sleeping", "regex", "stopped"])
async def test_driver_sigkill_leaves_no_worker_whatever_the_worker_is_doing(
    tmp_path: Path, how: str, forkserver: bool
) -> None:
    """Blocked loop, GIL held in C, SIGSTOPped: all gone within 2 s of a driver SIGKILL."""
    driver = await start_driver(tmp_path, "idle" if how == "stopped" else how, forkserver)
    if how == "stopped":
        for pid in driver.workers:
            os.kill(pid, signal.SIGSTOP)
    await kill_driver_expect_no_orphans(driver)


async def test_guardian_that_dies_is_replaced_and_still_kills_blocked_workers(tmp_path: Path) -> None:
    """A guardian killed on its own is replaced; the new one knows every worker."""
    driver = await start_driver(tmp_path, "sleeping", forkserver=True)
    old = driver.report["guardian"]
    os.kill(old, signal.SIGKILL)
    with trio.fail_after(10):
        while not [p for p in driver.children_named("_guardian.py") if p != old]:  # noqa: ASYNC110
            await trio.sleep(0.01)
    assert not any(gone(pid) for pid in driver.workers)  # the guardian's death killed nobody
    await kill_driver_expect_no_orphans(driver)


async def test_fork_server_that_dies_kills_no_worker_and_loses_none(tmp_path: Path) -> None:
    """Killing the fork server leaves its workers alive and guarded."""
    driver = await start_driver(tmp_path, "sleeping", forkserver=True)
    os.kill(driver.report["forkserver"], signal.SIGKILL)
    with trio.fail_after(5):
        while not gone(driver.report["forkserver"]):  # noqa: ASYNC110 - not our child
            await trio.sleep(0.01)
    assert not any(gone(pid) for pid in driver.workers)
    await kill_driver_expect_no_orphans(driver)


async def test_machines_outlive_their_fork_server_and_new_ones_still_fork() -> None:
    """The fork server's death is not its workers': they keep serving, and a worker that dies
    later is still seen at once; the next machine forks from a new fork server."""
    async with bigactor.open_cluster() as cluster:
        machines = await cluster.start(2, Services(echo=Echo()))
        for m in machines:
            assert await m.wait(State.RUNNING) == State.RUNNING
        system = cluster.system
        assert isinstance(system, bigactor.systems.LocalSystem)
        assert system._server is not None
        old = system._server.process
        old.kill()
        await old.wait()
        await trio.sleep(0.5)  # time for a wrong "lost" verdict to arrive, if one would
        assert [m.state for m in machines] == [State.RUNNING, State.RUNNING]
        assert [await m.call("echo.echo", i) for i, m in enumerate(machines)] == [0, 1]
        [fresh] = await cluster.start(1, Services(echo=Echo()))
        assert await fresh.call("echo.echo", "new") == "new"
        assert system._server.process is not old
        parent = psutil.Process((await fresh.info()).pid).ppid()
        assert parent == system._server.process.pid  # forked from the new fork server
        os.kill((await machines[0].info()).pid, signal.SIGKILL)
        with trio.fail_after(2):
            assert await machines[0].wait(State.STOPPED) == State.STOPPED
        assert isinstance(machines[0].error, MachineLost)
        assert "exit status was lost with its fork server" in str(machines[0].error)


async def test_a_stopped_worker_is_lost_at_once_not_after_its_keepalives() -> None:
    """SIGSTOP makes a machine lost within a few seconds (was 148 s), named as a stop."""
    async with bigactor.open_cluster() as cluster:
        [m] = await cluster.start(1, Services(echo=Echo()))
        pid = (await m.info()).pid
        os.kill(pid, signal.SIGSTOP)
        with trio.fail_after(5):
            assert await m.wait(State.STOPPED) == State.STOPPED
        assert "stopped by a signal" in str(m.error)
        with trio.fail_after(2):
            while not gone(pid):  # noqa: ASYNC110 - the lost machine's process is killed
                await trio.sleep(0.01)


async def test_started_and_killed_machines_leave_nothing_in_the_systems_tables() -> None:
    """300 start/kill cycles used to leave 300 entries behind; now only live workers count."""
    async with bigactor.open_cluster() as cluster:
        system = cluster.system
        assert isinstance(system, bigactor.systems.LocalSystem)
        fds = len(os.listdir("/proc/self/fd"))
        for _ in range(30):
            [m] = await cluster.start(1, Services(echo=Echo()))
            await m.call("echo.echo", 1)
            os.kill((await m.info()).pid, signal.SIGKILL)
            await m.wait(State.STOPPED)
        with trio.fail_after(5):
            while system.tables():  # noqa: ASYNC110 - exits are being observed
                await trio.sleep(0.01)
        assert len(os.listdir("/proc/self/fd")) <= fds + 2
