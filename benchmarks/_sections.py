"""The measured figures a-f and memory (g and h, what values cost, are in ``_value_sections``).
Each section interleaves its floors and bigactor run by run, so that drift of the box's speed
hits all of them alike.
"""

from __future__ import annotations

from typing import Any

from . import _bigactor as ba
from ._context import Bench
from ._figures import Figure, make_figure, scaled
from ._floors import with_mux
from ._memory import echo_peaks, idle_workers, status, summarize_peaks
from ._spawn_floors import connect_back, fork_back, kill_to_eof, spawn_pass
from ._stats import median, summarize_latency_runs, summarize_values
from ._tls import tls_over_tcp
from ._value_sections import codec, payload_echo
from ._workloads import echo_rate, make_payload, pipelined, sequential

Section = dict[str, Any]
TCP = ("tcp", "raw trio TCP echo")
WS = ("ws", "trio-websocket echo")


def _us(runs: list[list[float]]) -> dict[str, Any]:
    return scaled(summarize_latency_runs(runs), 1e6)


async def cold_figures(sizes: tuple[int, ...], runs: int) -> dict[str, Figure]:
    """Cold start of each cluster size, interleaved run by run with its spawn floors."""
    keys = ("ready", "closed", "pass", "back", "fork")
    got: dict[int, dict[str, list[float]]] = {n: {k: [] for k in keys} for n in sizes}
    for _ in range(runs):
        for n in sizes:
            g = got[n]
            g["pass"].append(await spawn_pass(n))
            g["back"].append((await connect_back(n))[0])
            g["fork"].append(await fork_back(n))
            ready, closed = await ba.cold_start(n)
            g["ready"].append(ready)
            g["closed"].append(closed)
    out = {}
    for n, g in got.items():
        out[f"cold_start_{n}"] = make_figure(
            f"cold_start_{n}",
            f"a. cold start: open_cluster + {'1 machine' if n == 1 else f'{n} machines'} answering",
            "s",
            "lower",
            summarize_values(g["ready"]),
            [
                ("spawn_pass", f"{n} x `python -c pass`, spawn to exit", summarize_values(g["pass"])),
                (
                    "connect_back",
                    f"{n} x fresh interpreter importing trio+cloudpickle, connecting back",
                    summarize_values(g["back"]),
                ),
                (
                    "fork_back",
                    f"template importing trio+cloudpickle, {n} x os.fork, connecting back",
                    summarize_values(g["fork"]),
                ),
            ],
            {"close_s": summarize_values(g["closed"])},
        )
    return out


async def cold_start(bench: Bench) -> Section:
    """a. ``open_cluster`` + n machines answering a call, beside n bare process spawns."""
    return await cold_figures(bench.options.cold_sizes, bench.options.runs)


async def _seq_floor_runs(bench: Bench, n: int, warmup: int) -> dict[str, list[float]]:
    [tcp] = await bench.tcp(1)
    [ws] = await bench.ws(1)
    return {
        "tcp": await sequential(tcp.roundtrip, n, warmup),
        "ws": await sequential(ws.roundtrip, n, warmup),
    }


#: the no-op method of each kind: (figure key suffix, method, how the title names it)
KINDS = (("", "ping", "async method"), ("_sync", "ping_sync", "sync method (def)"))


async def sequential_rtt(bench: Bench) -> Section:
    """b. Sequential round trip of a no-op call with a small int, to each kind of method."""
    o = bench.options
    [(_, h)] = await bench.echo_actors(1)
    runs: dict[str, list[list[float]]] = {"tcp": [], "ws": [], "ping": [], "ping_sync": []}
    for _ in range(o.runs):
        for k, v in (await _seq_floor_runs(bench, o.seq_calls, o.seq_warmup)).items():
            runs[k].append(v)
        for _, method, _ in KINDS:
            runs[method].append(await sequential(getattr(h, method), o.seq_calls, o.seq_warmup))
    bench.notes["seq_floors"] = {k: _us(runs[k]) for k in ("tcp", "ws")}
    floors = [(*TCP, bench.notes["seq_floors"]["tcp"]), (*WS, bench.notes["seq_floors"]["ws"])]
    return {
        f"sequential{suffix}": make_figure(
            f"sequential{suffix}",
            f"b. sequential round trip, no-op call with a small int, {kind}",
            "µs",
            "lower",
            _us(runs[method]),
            floors,
        )
        for suffix, method, kind in KINDS
    }


async def pipelined_calls(bench: Bench) -> Section:
    """c. ``pipe_calls`` concurrent calls to one actor, and spread over several, per method kind."""
    o = bench.options
    n = o.pipe_calls
    out: Section = {}
    for k in o.pipe_actors:
        tcp = await bench.tcp(k)
        ws = await bench.ws(k)
        handles = [h for _, h in await bench.echo_actors(k)]
        calls = {method: [getattr(h, method) for h in handles] for _, method, _ in KINDS}
        rates: dict[str, list[float]] = {"tcp": [], "ws": [], "ping": [], "ping_sync": []}
        for _ in range(o.runs):
            rates["tcp"].append(await with_mux(tcp, lambda c: pipelined(c, n)))
            rates["ws"].append(await with_mux(ws, lambda c: pipelined(c, n)))
            for method, each in calls.items():
                rates[method].append(await pipelined(each, n))
        where = "one actor" if k == 1 else f"{k} actors on {k} machines"
        per = "" if k == 1 else f", {k} servers"
        floors = [
            ("tcp", f"raw trio TCP, id-matched{per}", summarize_values(rates["tcp"])),
            ("ws", f"trio-websocket, id-matched{per}", summarize_values(rates["ws"])),
        ]
        for suffix, method, kind in KINDS:
            out[f"pipelined{suffix}_{k}"] = make_figure(
                f"pipelined{suffix}_{k}",
                f"c. pipelined: {n:,} concurrent calls, {where}, {kind}",
                "calls/s",
                "higher",
                summarize_values(rates[method]),
                floors,
            )
    return out


async def bulk_echo(bench: Bench) -> Section:
    """d. Echo of a ``bytes`` argument; MB/s = payload bytes / round-trip time."""
    o = bench.options
    [tcp] = await bench.tcp(1)
    [ws] = await bench.ws(1)
    [(_, h)] = await bench.echo_actors(1)
    out: Section = {}
    for size in o.bulk_sizes:
        payload = make_payload(size)
        rates: dict[str, list[float]] = {"tcp": [], "ws": [], "bigactor": []}
        for _ in range(o.runs):
            rates["tcp"].append((await echo_rate(tcp.echo, payload))[1])
            rates["ws"].append((await echo_rate(ws.echo, payload))[1])
            rates["bigactor"].append((await echo_rate(lambda p: h.echo(p), payload))[1])
        del payload
        name = f"{size >> 20}MiB"
        out[f"echo_{name}"] = make_figure(
            f"echo_{name}",
            f"d. echo, {name[:-3]} MiB bytes argument",
            "MB/s",
            "higher",
            summarize_values(rates["bigactor"]),
            [
                ("tcp", "raw trio TCP, one frame", summarize_values(rates["tcp"])),
                ("ws", "trio-websocket, pipelined 1 MiB messages", summarize_values(rates["ws"])),
            ],
        )
    return out


async def actor_to_actor(bench: Bench) -> Section:
    """e. An actor calling another actor on another machine, timed inside the caller."""
    o = bench.options
    cluster = await bench.cluster()
    (_, target), (m1, _) = await bench.echo_actors(2)
    relay = await cluster.options(machine=m1).spawn(ba.Relay)
    runs: dict[str, list[list[float]]] = {"ping": [], "ping_sync": []}
    floor_runs: dict[str, list[list[float]]] = {"tcp": [], "ws": []}
    reuse = bench.notes.get("seq_floors")
    for _ in range(o.runs):
        if reuse is None:
            for k, v in (await _seq_floor_runs(bench, o.a2a_calls, o.seq_warmup)).items():
                floor_runs[k].append(v)
        for method in runs:
            runs[method].append(await relay.time_calls(target, o.a2a_calls, o.seq_warmup, method))
    floors = reuse or {k: _us(v) for k, v in floor_runs.items()}
    return {
        f"actor_to_actor{suffix}": make_figure(
            f"actor_to_actor{suffix}",
            f"e. actor -> actor sequential call (another machine), {kind}",
            "µs",
            "lower",
            _us(runs[method]),
            [(*TCP, floors["tcp"]), (*WS, floors["ws"])],
        )
        for suffix, method, kind in KINDS
    }


async def kill(bench: Bench) -> Section:
    """f. SIGKILL of a worker with a call pending -> seconds until the caller's exception."""
    o = bench.options
    machines = await ba.start_echo_machines(await bench.cluster(), o.runs)
    seen: list[float] = []
    floor: list[float] = []
    raised: list[str] = []
    for m in machines:
        floor.append(await kill_to_eof())
        seconds, name = await ba.kill_pending(m)
        seen.append(seconds)
        raised.append(name)
    figure = make_figure(
        "kill",
        "f. SIGKILL of a worker, call pending -> caller's exception",
        "ms",
        "lower",
        scaled(summarize_values(seen), 1e3),
        [("eof", "trio socket sees EOF after SIGKILL", scaled(summarize_values(floor), 1e3))],
        {"raised": raised, "all_machine_lost": all(ba.is_machine_lost(r) for r in raised)},
    )
    return {"kill": figure}


async def memory(bench: Bench) -> Section:
    """3. RSS of the driver and of idle workers; peaks on each side during the big echo.

    Run first, before any floor: the floors' clients leave freed-but-retained heap in the
    driver (trio-websocket's 1 MiB messages), which would be charged to bigactor otherwise.
    """
    o = bench.options
    cluster = await bench.cluster()
    [(m, h)] = await bench.echo_actors(1)
    driver = status().get("VmRSS")
    idle = await idle_workers(cluster, o.idle_workers)
    floor = (await connect_back(1))[1]
    size = max(o.bulk_sizes)
    pid = (await m.info()).pid
    samples = await echo_peaks(lambda p: h.echo(p), make_payload(size), pid, o.runs)
    return {
        "memory": {
            "driver_rss_start_bytes": bench.notes.get("driver_rss_start"),
            "driver_rss_bytes": driver,
            "machines_open": 1,
            "idle_worker_rss_bytes": median(idle) if idle else None,
            "idle_worker_rss_runs": idle,
            "floor_import_rss_bytes": median(floor) if floor else None,
            "echo_peaks": summarize_peaks(samples, size),
        }
    }


# In the order they run: memory first (see its docstring).
SECTIONS = {
    "memory": memory,
    "cold_start": cold_start,
    "sequential": sequential_rtt,
    "pipelined": pipelined_calls,
    "bulk": bulk_echo,
    "actor_to_actor": actor_to_actor,
    "kill": kill,
    "codec": codec,
    "payload_echo": payload_echo,
    "tls": tls_over_tcp,
}
