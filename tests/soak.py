"""A bounded soak of the local system: many machines, many callers, random kills.

    python -m tests.soak [--seconds 600] [--machines 64] [--callers 2000] [--kill-every 1.0]

Real worker processes on this host. Callers call random machines (async, sync and streamed
methods, checking every answer); a killer SIGKILLs a random worker now and then and starts a
fresh machine in its place. The verdict:

* every call returned its right value or raised a defined error: ``MachineLost`` (its machine
  was killed), ``TransportError`` / ``CallNotSent`` (its connection broke with it) — anything
  else, a wrong value, or a call that takes longer than ``HANG`` seconds is a failure;
* the driver's descriptors and RSS stay flat: measured after the first tenth of the run and at
  the end, with the same number of machines alive;
* after the cluster closes, no worker process is left.

Prints one line of figures per ``--report`` seconds and a JSON summary at the end; exits 1 on
any failure. ``tests/test_soak.py`` runs a 60-second version in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import psutil
import trio

import bigactor
from bigactor import CallNotSent, MachineLost, State, TransportError

HANG = 30.0
DEFINED = (MachineLost, CallNotSent, TransportError)


class Worker:
    """What the soak calls: answers it can check."""

    async def add(self, a: int, b: int) -> int:
        await trio.sleep(random.random() * 0.002)
        return a + b

    def mul(self, a: int, b: int) -> int:
        return a * b

    async def count(self, n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    async def echo(self, data: bytes) -> bytes:
        return data

    def pid(self) -> int:
        return os.getpid()


class Soak:
    def __init__(self, machines: int, callers: int, kill_every: float, seed: int) -> None:
        self.machines = machines
        self.callers = callers
        self.kill_every = kill_every
        self.rng = random.Random(seed)
        self.handles: list[bigactor.ActorHandle] = []
        self.pids: dict[str, int] = {}
        self.all_pids: set[int] = set()
        self.ok = 0
        self.errors: Counter[str] = Counter()
        self.failures: list[str] = []
        self.kills = 0
        self.starts = 0
        self.samples: list[tuple[float, int, int, int]] = []  # (t, fds, rss, live machines)

    async def spawn(self, cluster: bigactor.Cluster) -> None:
        handle = await cluster.spawn(Worker)
        pid = await handle.pid()
        self.pids[bigactor.machine_of(handle).addr] = pid
        self.all_pids.add(pid)
        self.handles.append(handle)
        self.starts += 1

    async def call_once(self, handle: bigactor.ActorHandle) -> None:
        a, b = self.rng.randrange(1 << 30), self.rng.randrange(1 << 30)
        what = self.rng.random()
        try:
            with trio.fail_after(HANG):
                if what < 0.5:
                    got, want = await handle.add(a, b), a + b
                elif what < 0.8:
                    got, want = await handle.mul(a, b), a * b
                elif what < 0.95:
                    n = a % 50
                    got, want = [x async for x in handle.count(n)], list(range(n))
                else:
                    data = self.rng.randbytes(a % (256 << 10))
                    got, want = await handle.echo(data), data
        except trio.TooSlowError:
            self.failures.append(f"a call on {bigactor.machine_of(handle).addr} hung for {HANG} s")
        except DEFINED as exc:
            self.errors[type(exc).__name__] += 1
            if bigactor.machine_of(handle).state != State.STOPPED and isinstance(exc, MachineLost):
                self.failures.append(f"MachineLost from a machine that is not stopped: {exc}")
        except Exception as exc:
            self.failures.append(f"undefined error {type(exc).__name__}: {exc}")
        else:
            if got != want:
                self.failures.append(
                    f"wrong answer from {bigactor.machine_of(handle).addr}: {got!r} != {want!r}"
                )
            else:
                self.ok += 1

    async def caller(self, deadline: float) -> None:
        while trio.current_time() < deadline:
            live = [h for h in self.handles if bigactor.machine_of(h).state != State.STOPPED]
            if not live:
                await trio.sleep(0.01)
                continue
            await self.call_once(self.rng.choice(live))

    async def killer(self, cluster: bigactor.Cluster, deadline: float) -> None:
        while trio.current_time() < deadline - 1:
            await trio.sleep(self.kill_every * (0.5 + self.rng.random()))
            live = [h for h in self.handles if bigactor.machine_of(h).state == State.RUNNING]
            if not live:
                continue
            victim = self.rng.choice(live)
            os.kill(self.pids[bigactor.machine_of(victim).addr], signal.SIGKILL)
            self.kills += 1
            with trio.fail_after(HANG):
                await bigactor.machine_of(victim).wait(State.STOPPED)
            self.handles.remove(victim)
            await self.spawn(cluster)  # a fresh machine in its place

    def running(self) -> int:
        return sum(1 for h in self.handles if bigactor.machine_of(h).state == State.RUNNING)

    def sample(self, t0: float) -> tuple[float, int, int, int]:
        me = psutil.Process()
        live = self.running()
        entry = (trio.current_time() - t0, me.num_fds(), me.memory_info().rss, live)
        self.samples.append(entry)
        return entry

    async def reporter(self, t0: float, every: float, deadline: float) -> None:
        while trio.current_time() < deadline:
            await trio.sleep(every)
            t, fds, rss, live = self.sample(t0)
            print(
                f"{t:6.0f} s  calls ok {self.ok:>8}  errors {dict(self.errors)}  kills {self.kills:>4}  "
                f"machines {live:>3}  fds {fds:>5}  rss {rss >> 20:>5} MiB  failures {len(self.failures)}",
                flush=True,
            )

    async def run(self, seconds: float, report: float) -> dict[str, Any]:
        async with bigactor.open_cluster() as cluster:
            async with trio.open_nursery() as nursery:
                for _ in range(self.machines):
                    nursery.start_soon(self.spawn, cluster)
            t0 = trio.current_time()
            deadline = t0 + seconds
            self.sample(t0)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.reporter, t0, report, deadline)
                nursery.start_soon(self.killer, cluster, deadline)
                for _ in range(self.callers):
                    nursery.start_soon(self.caller, deadline)
                # The baseline: after a tenth of the run, when every cache and pool is warm.
                await trio.sleep(seconds / 10)
                baseline = self.sample(t0)
            # With every caller done and the last fresh machine up, the same count is alive.
            with trio.fail_after(HANG):
                while self.running() < self.machines:  # noqa: ASYNC110
                    await trio.sleep(0.05)
            await trio.sleep(0.5)  # connections of the killed machines finish closing
            end = self.sample(t0)
        with trio.fail_after(10):
            while [p for p in self.all_pids if _alive(p)]:  # noqa: ASYNC110 - not our children
                await trio.sleep(0.05)
        return self.verdict(seconds, baseline, end)

    def verdict(
        self, seconds: float, baseline: tuple[float, int, int, int], end: tuple[float, int, int, int]
    ) -> dict[str, Any]:
        fd_growth = end[1] - baseline[1]
        rss_growth = end[2] - baseline[2]
        # Flat: a few descriptors of slack (a connection mid-close), and RSS within 32 MiB
        # (allocator noise; 150 kills used to add 52 MiB, a kept connection buffer each).
        if fd_growth > 8:
            self.failures.append(f"descriptors grew by {fd_growth} ({baseline[1]} -> {end[1]})")
        if rss_growth > 32 << 20:
            self.failures.append(
                f"RSS grew by {rss_growth >> 20} MiB ({baseline[2] >> 20} -> {end[2] >> 20})"
            )
        calls = self.ok + sum(self.errors.values())
        return {
            "seconds": seconds,
            "machines": self.machines,
            "callers": self.callers,
            "calls": calls,
            "calls_per_second": round(calls / seconds),
            "ok": self.ok,
            "errors": dict(self.errors),
            "kills": self.kills,
            "machines_started": self.starts,
            "fds": [baseline[1], end[1]],
            "rss_mib": [baseline[2] >> 20, end[2] >> 20],
            "failures": self.failures[:20],
            "failure_count": len(self.failures),
        }


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--machines", type=int, default=64)
    parser.add_argument("--callers", type=int, default=2000)
    parser.add_argument("--kill-every", type=float, default=1.0, help="mean seconds between kills")
    parser.add_argument("--report", type=float, default=10.0, help="seconds between progress lines")
    parser.add_argument("--seed", type=int, default=int(time.time()))
    args = parser.parse_args(argv)
    print(f"soak: seed {args.seed}", flush=True)
    soak = Soak(args.machines, args.callers, args.kill_every, args.seed)
    result = trio.run(soak.run, args.seconds, args.report)
    print(json.dumps(result, indent=1), flush=True)
    return 1 if result["failure_count"] else 0


if __name__ == "__main__":
    sys.exit(main())
