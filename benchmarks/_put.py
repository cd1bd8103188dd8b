"""Section ``put`` (7.): one large model handed to 4 actors on this host, by value and through
``cluster.put`` (shared memory, mapped copy-on-write), each on a fresh machine.

Timed from the first spawn until all four actors are constructed (for ``put``, the put itself
is timed on its own line: it is paid once, however many actors follow), then each actor reads
every page of its weights, and the four workers' unique memory (USS) is summed, net of an idle
worker's. Target (the performance issue): the model stored once, not four times.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import trio

import bigactor

from ._bigactor import Model
from ._context import Bench

ACTORS = 4
#: "stored once": the four workers together hold at most this many models' worth of memory
STORED_ONCE = 1.5


async def _four(cluster: bigactor.Cluster, weights: Any) -> tuple[float, int]:
    """Spawn 4 Models on fresh machines given ``weights``: seconds, and their summed USS growth."""
    import numpy as np
    import psutil

    machines = await cluster.start(ACTORS)
    for m in machines:  # numpy imported in every worker before the baseline (~7 MB each)
        await cluster.options(machine=m).spawn(Model, np.zeros(1))
    base = [int(psutil.Process((await m.info()).pid).memory_full_info().uss) for m in machines]
    t0 = time.perf_counter()
    handles: list[Any] = [None] * ACTORS

    async def one(i: int) -> None:
        handles[i] = await cluster.options(machine=machines[i]).spawn(Model, weights)

    async with trio.open_nursery() as nursery:
        for i in range(ACTORS):
            nursery.start_soon(one, i)
    seconds = time.perf_counter() - t0
    for h in handles:
        await h.touch()
    grown = sum([await h.uss() for h in handles]) - sum(base)
    for m in machines:
        await m.shutdown()
    return seconds, grown


async def put(bench: Bench) -> dict[str, Any]:
    """The model to 4 actors by value and through ``cluster.put``, run by run."""
    import numpy as np

    o = bench.options
    weights = np.random.default_rng(0).random(o.array_bytes // 8)
    runs: dict[str, list[float]] = {
        "value_s": [],
        "value_bytes": [],
        "put_s": [],
        "spawn_s": [],
        "shared_bytes": [],
    }
    async with bigactor.open_cluster() as cluster:
        for _ in range(o.runs):
            seconds, grown = await _four(cluster, weights)
            runs["value_s"].append(seconds)
            runs["value_bytes"].append(grown)
            t0 = time.perf_counter()
            shared = await cluster.put(weights)
            runs["put_s"].append(time.perf_counter() - t0)
            seconds, grown = await _four(cluster, shared)
            runs["spawn_s"].append(seconds)
            runs["shared_bytes"].append(grown)
            shared.release()
    summary = {k: statistics.median(v) for k, v in runs.items()}
    return {
        "put": {
            "actors": ACTORS,
            "model_bytes": weights.nbytes,
            "runs": runs,
            "median": summary,
            "stored_once": summary["shared_bytes"] <= STORED_ONCE * weights.nbytes,
        }
    }
