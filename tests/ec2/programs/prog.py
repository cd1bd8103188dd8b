"""A bigactor program as a user writes it, run by tests/ec2/test_ec2_system.py with
BIGACTOR_SYSTEM=ec2 and BIGACTOR_EC2_* settings. It prints one JSON object a line on stdout (the
test reads them) and waits for the test's word on stdin where the test acts on the cloud.

    python prog.py main      # 3 instances, calls between them, a second start, a termination
    python prog.py orphans   # 2 instances, then waits to be killed (SIGKILL) by the test
    python prog.py bootfail  # 1 instance whose boot fails
    python prog.py measure N # N instances, each answering a first call
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time

import shapes  # a module next to the program: shipped in the code bundle
import trio

import bigactor


class Counter:
    """Defined in __main__: travels by value."""

    def __init__(self, start: int) -> None:
        self.n = start

    def add(self, k: int) -> int:
        self.n += k
        return self.n

    def host(self) -> str:
        return socket.gethostname()

    def env(self, name: str) -> str | None:
        return os.environ.get(name)

    def try_import(self, name: str) -> str:
        try:
            __import__(name)
        except ImportError as exc:
            return f"{type(exc).__name__}: {exc}"
        return "imported"

    async def call_other(self, other: object, k: int) -> tuple[str, int]:
        """Call an actor on another machine through the handle the driver passed."""
        return socket.gethostname(), await other.add(k)  # type: ignore[attr-defined]

    async def sleep(self, seconds: float) -> str:
        await trio.sleep(seconds)
        return "woke"


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}, default=str), flush=True)


async def wait_for_word() -> str:
    return (await trio.to_thread.run_sync(sys.stdin.readline)).strip()


def instances(cluster: bigactor.Cluster) -> dict[str, dict[str, object]]:
    system = cluster.system
    return {
        inst.addr: {
            "instance_id": inst.instance_id,
            "details": inst.details(),
            "price_per_hour": inst.price_per_hour,
            "bundle_cached": inst.bundle_cached,
            "boot_log": inst.boot_log,
            "maxprocs": inst.maxprocs,
            "memory": inst.memory,
            "hostname": inst.hostname,
        }
        for inst in system.instances()  # type: ignore[union-attr]
    }


async def running(machines: list[bigactor.Machine]) -> None:
    for m in machines:
        await m.wait(bigactor.State.RUNNING)
        if m.state != bigactor.State.RUNNING:
            raise RuntimeError(f"{m.addr} did not start: {m.error}")


async def main_program() -> None:
    t0 = time.monotonic()
    async with bigactor.open_cluster() as cluster:
        machines = await cluster.start(3, bigactor.Environ({"COLOR": "blue"}))
        await running(machines)
        emit(
            "started",
            seconds=time.monotonic() - t0,
            machines=[m.addr for m in machines],
            instances=instances(cluster),
            timings=cluster.system.timings(),
        )  # type: ignore[union-attr]
        a = await cluster.options(machine=machines[0]).spawn(Counter, 10)
        square = await cluster.options(machine=machines[1]).spawn(shapes.Square, 3)
        c = await cluster.options(machine=machines[2]).spawn(Counter, 0)
        emit(
            "results",
            hosts=[await a.host(), await square.host(), await c.host()],
            area=await square.area(),
            square_file=await square.module_file(),
            other=await c.call_other(a, 5),
            after=await a.add(0),
            color=await a.env("COLOR"),
            imports={name: await a.try_import(name) for name in ("shapes", "apt", "numpy", "trio")},
        )
        # A second start: its instance's enrollment says whether the bundle was cached.
        [more] = await cluster.start(1)
        await running([more])
        emit("second", instances=instances(cluster))
        d = await cluster.options(machine=more).spawn(Counter, 0)
        async with trio.open_nursery() as nursery:

            async def pending() -> None:
                t = time.monotonic()
                try:
                    await d.sleep(600)
                except bigactor.MachineLost as exc:
                    emit("lost", error=str(exc), seconds=time.monotonic() - t,
                         cause=str(more.error))  # fmt: skip
                else:
                    emit("woke")

            nursery.start_soon(pending)
            await trio.sleep(0.5)  # the call is on its way
            emit("probe", victim=more.addr, survivor=machines[0].addr)
            await wait_for_word()  # the test probed the survivor and terminated the victim
        emit("survivor", value=await a.add(1))
        t = time.monotonic()
    emit("closed", seconds=time.monotonic() - t)


async def orphans_program() -> None:
    async with bigactor.open_cluster() as cluster:
        machines = await cluster.start(2)
        await running(machines)
        counter = await cluster.options(machine=machines[0]).spawn(Counter, 1)
        emit("started", instances=instances(cluster), value=await counter.add(1))
        await trio.sleep_forever()  # until the test kills this process


async def bootfail_program() -> None:
    async with bigactor.open_cluster() as cluster:
        t = time.monotonic()
        [machine] = await cluster.start(1)
        await machine.wait(bigactor.State.RUNNING)
        emit("failed", state=str(machine.state), error=repr(machine.error),
             message=str(machine.error), seconds=time.monotonic() - t,
             instances=instances(cluster))  # fmt: skip


async def measure_program(n: int) -> None:
    t0 = time.monotonic()
    async with bigactor.open_cluster() as cluster:
        machines = await cluster.start(n)
        t_started = time.monotonic()
        await running(machines)
        t_running = time.monotonic()
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for m in machines:
                    nursery.start_soon(m.call, "Supervisor.info")
        t_answered = time.monotonic()
        emit(
            "measured",
            n=n,
            start=t_started - t0,
            running=t_running - t0,
            answered=t_answered - t0,
            timings=cluster.system.timings(),
            instances=instances(cluster),
        )  # type: ignore[union-attr]
        t = time.monotonic()
    emit("closed", seconds=time.monotonic() - t)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("bigactor.ec2").setLevel(logging.INFO)
    what = sys.argv[1]
    if what == "main":
        trio.run(main_program)
    elif what == "orphans":
        trio.run(orphans_program)
    elif what == "bootfail":
        trio.run(bootfail_program)
    elif what == "measure":
        trio.run(measure_program, int(sys.argv[2]))
    else:
        raise SystemExit(f"unknown program {what!r}")


if __name__ == "__main__":
    main()
