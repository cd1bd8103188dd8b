"""6. A thousand machines by simulation: the test system's in-process machines at 10, 100 and
1,000, each a real ``serve_worker`` behind a real websocket with the cluster key handshake,
only the process and the socket simulated.

At each size, in a cluster of its own: how long until ``cluster.start(n)`` returns and until
every machine has answered a call, the CPU the process spends while the machines sit idle
(keepalives, on both ends: the machines live in this process too, so this bounds the driver's
share from above), and how long ``cluster.status()`` over all of them takes (median of 3). Keepalives go out
every ``KEEPALIVE_PERIOD / 2`` seconds, six times the default rate, so the idle window sees two
rounds of them.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import psutil
import trio

import bigactor
from bigactor.testing import TestSystem

from ._bigactor import Echo
from ._context import Bench

KEEPALIVE_PERIOD = 10.0
#: status() is timed this many times (median): one of them may carry a full garbage
#: collection of the whole simulated cluster (~0.45 s over ~550,000 objects at 1,000)
STATUS_RUNS = 3
#: the targets of the performance issue, at 1,000 machines
TARGET_MACHINES, ANSWERED_S, IDLE_CORE, STATUS_S = 1000, 5.0, 0.05, 1.0


def _cpu() -> float:
    t = psutil.Process().cpu_times()
    return float(t.user + t.system)


async def _one_size(n: int, idle_s: float) -> dict[str, Any]:
    system = TestSystem(
        keepalive=bigactor.KeepaliveConfig(period=KEEPALIVE_PERIOD, timeout=2 * KEEPALIVE_PERIOD)
    )
    t0 = time.perf_counter()
    async with bigactor.open_cluster(system) as cluster:
        machines = await cluster.start(n, bigactor.Services(echo=Echo()))
        started = time.perf_counter() - t0
        async with trio.open_nursery() as nursery:
            for m in machines:
                nursery.start_soon(m.call, "echo.ping", 1)
        answered = time.perf_counter() - t0
        cpu0, wall0 = _cpu(), time.perf_counter()
        await trio.sleep(idle_s)
        idle = (_cpu() - cpu0) / (time.perf_counter() - wall0)
        times = []
        for _ in range(STATUS_RUNS):
            t1 = time.perf_counter()
            entries = await cluster.status()
            times.append(time.perf_counter() - t1)
        status_s = statistics.median(times)
        reported = sum(1 for e in entries if "uptime" in e)
    return {
        "machines": n,
        "start_s": started,
        "answered_s": answered,
        "idle_core": idle,
        "idle_seconds": idle_s,
        "status_s": status_s,
        "status_runs_s": times,
        "status_reported": reported,
    }


async def simulation(bench: Bench) -> dict[str, Any]:
    """Start, answer, idle and status costs of the test system at each simulated size."""
    o = bench.options
    steps = [await _one_size(n, o.sim_idle_seconds) for n in o.sim_sizes]
    at = next((s for s in steps if s["machines"] == TARGET_MACHINES), None)
    targets = {
        "answered_s": ANSWERED_S,
        "idle_core": IDLE_CORE,
        "status_s": STATUS_S,
        "at": TARGET_MACHINES,
        "met": None
        if at is None
        else {
            "answered": at["answered_s"] <= ANSWERED_S,
            "idle": at["idle_core"] <= IDLE_CORE,
            "status": at["status_s"] <= STATUS_S,
        },
    }
    return {"simulation": {"keepalive_period_s": KEEPALIVE_PERIOD, "steps": steps, "targets": targets}}
