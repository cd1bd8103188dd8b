"""The bigactor side of the benchmark: the actors it calls and the workloads that need a cluster.

Only the public API is used (``open_cluster``, ``cluster.start``/``spawn``, handles,
``machine.call``, ``machine.info()``, ``MachineLost``, ``Services``), so these figures follow the
library as it changes. The actor classes live in this importable module, so workers load them
by reference; keep its imports light, since every worker imports it.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import trio

import bigactor

from ._workloads import sequential


class Echo:
    """A no-op actor: returns what it is given."""

    def __init__(self) -> None:
        self._sleeping = False

    async def ping(self, x: int) -> int:
        """Return the small int it was given (the no-op call)."""
        return x

    def ping_sync(self, x: int) -> int:
        """The no-op call as a plain ``def`` (run on the actor's thread), as Ray's benchmarks use."""
        return x

    async def echo(self, data: bytes) -> bytes:
        """Return the payload it was given."""
        return data

    async def sleep(self, seconds: float) -> None:
        """Stay pending for ``seconds`` (the call that a kill interrupts)."""
        self._sleeping = True
        await trio.sleep(seconds)

    async def sleeping(self) -> bool:
        """Whether ``sleep`` has started."""
        return self._sleeping


class Relay:
    """An actor that times its own sequential calls to another actor."""

    async def time_calls(self, target: Any, n: int, warmup: int, method: str = "ping") -> list[float]:
        """Call ``target.<method>`` ``warmup`` + ``n`` times in a row; seconds per timed call."""
        return await sequential(getattr(target, method), n, warmup)


async def start_echo_machines(cluster: bigactor.Cluster, n: int) -> list[bigactor.Machine]:
    """Start ``n`` machines hosting an ``echo`` service and wait until each answers a call."""
    machines = await cluster.start(n, bigactor.Services(echo=Echo()))
    async with trio.open_nursery() as nursery:
        for machine in machines:
            nursery.start_soon(machine.call, "echo.ping", 0)
    return machines


async def cold_start(n: int) -> tuple[float, float]:
    """Open a cluster and start ``n`` machines until all answer; (seconds to ready, to close)."""
    with trio.fail_after(120):
        t0 = time.perf_counter()
        async with bigactor.open_cluster() as cluster:
            await start_echo_machines(cluster, n)
            ready = time.perf_counter() - t0
            t1 = time.perf_counter()
        return ready, time.perf_counter() - t1


async def kill_pending(machine: bigactor.Machine) -> tuple[float, str]:
    """SIGKILL ``machine``'s worker while a call is pending on it.

    Returns (seconds from the kill until the caller's exception, that exception's type name).
    """
    pid = (await machine.info()).pid
    outcome: list[tuple[float, BaseException]] = []

    async def caller() -> None:
        try:
            await machine.call("echo.sleep", 60)
        except Exception as exc:
            outcome.append((time.perf_counter(), exc))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(caller)
            # The flag lives on the worker: poll it, so that the kill hits a call in progress.
            while not await machine.call("echo.sleeping"):  # noqa: ASYNC110
                await trio.sleep(0.001)
            t0 = time.perf_counter()
            os.kill(pid, signal.SIGKILL)
    if not outcome:
        raise RuntimeError("the pending call returned although its worker was killed")
    seen, exc = outcome[0]
    return seen - t0, type(exc).__name__


def is_machine_lost(name: str) -> bool:
    """Whether an exception type name is bigactor's MachineLost (what a kill must raise)."""
    return name == bigactor.MachineLost.__name__


class Model:
    """An actor built around a large array (a model's weights), as in batch inference."""

    def __init__(self, weights: Any) -> None:
        self.weights = weights

    def touch(self) -> float:
        """Read every page of the weights, as inference would."""
        return float(self.weights.sum())

    def uss(self) -> int:
        """This worker's unique memory (USS), in bytes."""
        import psutil

        return int(psutil.Process().memory_full_info().uss)
