"""4. How cost grows with the number of machines on this one box.

One cluster is grown to each size in turn (1, 4, 16, 64 by default). At each size: sequential
calls going round-robin over all its machines, and pipelined calls spread over all of them,
each beside the same workload over as many raw trio TCP echo servers (one process each), run by
run: what as many processes sharing the cores cost without bigactor. Before that, cold start of
each ``scale_cold`` size, beside its process-spawn floors. The shared cluster and the other
sections' floor servers are stopped first, so only this section's processes are alive.
"""

from __future__ import annotations

import functools
import time

import bigactor

from ._bigactor import start_echo_machines
from ._context import Bench
from ._figures import scaled
from ._floors import with_mux
from ._sections import Section, cold_figures
from ._stats import summarize_latency_runs, summarize_values
from ._workloads import Call, pipelined, sequential

LARGE = 64  # from this many machines on, pipelined runs use options.scale_pipe_calls_large


def _machine_call(machine: bigactor.Machine) -> Call:
    return lambda i: machine.call("echo.ping", i)


async def _pipelined(calls: list[Call], n: int) -> float:
    return await pipelined(calls, n)


def _round_robin(calls: list[Call]) -> Call:
    return lambda i: calls[i % len(calls)](i)


async def scaling(bench: Bench) -> Section:
    """Cold start of many machines, then latency and throughput at each cluster size."""
    o = bench.options
    await bench.close_cluster()
    await bench.close_floors()
    cold = list((await cold_figures(o.scale_cold, o.runs)).values())
    steps = []
    async with bigactor.open_cluster() as cluster:
        machines: list[bigactor.Machine] = []
        for size in o.scale_sizes:
            t0 = time.perf_counter()
            machines += await start_echo_machines(cluster, size - len(machines))
            grow = time.perf_counter() - t0
            calls = [_machine_call(m) for m in machines]
            n_pipe = o.scale_pipe_calls_large if size >= LARGE else o.scale_pipe_calls
            tcp = await bench.tcp(size)
            seq_runs: list[list[float]] = []
            rates: list[float] = []
            floor_seq: list[list[float]] = []
            floor_rates: list[float] = []
            for _ in range(o.runs):
                floor_seq.append(
                    await sequential(
                        _round_robin([c.roundtrip for c in tcp]), o.scale_seq_calls, max(size, 20)
                    )
                )
                floor_rates.append(await with_mux(tcp, functools.partial(_pipelined, n=n_pipe)))
                seq_runs.append(await sequential(_round_robin(calls), o.scale_seq_calls, max(size, 20)))
                rates.append(await pipelined(calls, n_pipe))
            steps.append(
                {
                    "machines": size,
                    "grow_s": grow,
                    "sequential_us": scaled(summarize_latency_runs(seq_runs), 1e6),
                    "pipelined_calls_s": summarize_values(rates),
                    "pipelined_calls": n_pipe,
                    "floor_sequential_us": scaled(summarize_latency_runs(floor_seq), 1e6),
                    "floor_pipelined_calls_s": summarize_values(floor_rates),
                }
            )
    await bench.close_floors()
    return {"scaling": {"cold_start": cold, "steps": steps}}
