"""4. How cost grows with the number of machines on this one box.

One cluster is grown to each size in turn (1, 4, 16, 64 by default). At each size: sequential
calls going round-robin over all its machines, and pipelined calls spread over all of them.
Before that, cold start of ``scale_cold`` machines, beside its process-spawn floors. The shared
cluster and the floor servers are stopped first, so only this section's processes are alive.
"""

from __future__ import annotations

import time

import bigactor

from ._bigactor import start_echo_machines
from ._context import Bench
from ._figures import scaled
from ._sections import Section, cold_figures
from ._stats import summarize_latency_runs, summarize_values
from ._workloads import Call, pipelined, sequential

LARGE = 64  # from this many machines on, pipelined runs use options.scale_pipe_calls_large


def _machine_call(machine: bigactor.Machine) -> Call:
    return lambda i: machine.call("echo.ping", i)


def _round_robin(calls: list[Call]) -> Call:
    return lambda i: calls[i % len(calls)](i)


async def scaling(bench: Bench) -> Section:
    """Cold start of many machines, then latency and throughput at each cluster size."""
    o = bench.options
    await bench.close_cluster()
    await bench.close_floors()
    [cold] = (await cold_figures((o.scale_cold,), o.runs)).values()
    steps = []
    async with bigactor.open_cluster() as cluster:
        machines: list[bigactor.Machine] = []
        for size in o.scale_sizes:
            t0 = time.perf_counter()
            machines += await start_echo_machines(cluster, size - len(machines))
            grow = time.perf_counter() - t0
            calls = [_machine_call(m) for m in machines]
            n_pipe = o.scale_pipe_calls_large if size >= LARGE else o.scale_pipe_calls
            seq_runs: list[list[float]] = []
            rates: list[float] = []
            for _ in range(o.runs):
                seq_runs.append(await sequential(_round_robin(calls), o.scale_seq_calls, max(size, 20)))
                rates.append(await pipelined(calls, n_pipe))
            steps.append(
                {
                    "machines": size,
                    "grow_s": grow,
                    "sequential_us": scaled(summarize_latency_runs(seq_runs), 1e6),
                    "pipelined_calls_s": summarize_values(rates),
                    "pipelined_calls": n_pipe,
                }
            )
    return {"scaling": {"cold_start": cold, "steps": steps}}
