"""Figures g and h: what values cost, alone in the codec and inside a whole call.

g. The codec alone (encode + decode) beside ``pickle.dumps`` + ``pickle.loads``: bigactor
   pickles with the C pickler, so the target is within 1.5x of plain pickle.
h. ``await handle.echo(value)`` on a local machine beside a ``multiprocessing.Pipe`` round trip
   to a child process that echoes: the target is within 2x of the Pipe.

Each run interleaves the floors and bigactor, payload by payload, as the other sections do.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from ._context import Bench
from ._figures import make_figure, scaled
from ._payloads import (
    PAYLOADS,
    PipeEcho,
    codec_round_trip,
    codec_time,
    equal,
    make_payloads,
    pickle_oob_time,
    pickle_time,
)
from ._stats import summarize_latency_runs, summarize_values

Section = dict[str, Any]
CODEC_TARGET = 1.5  # x pickle.dumps + pickle.loads
ECHO_TARGET = 2.0  # x the multiprocessing.Pipe round trip
_SCALE = {"µs": 1e6, "ms": 1e3}


def _label(key: str, label: str, array_bytes: int) -> str:
    return f"{label}, {array_bytes / 1e6:g} MB" if key == "array" else label


async def codec(bench: Bench) -> Section:
    """g. Encode + decode through bigactor's codec, beside pickle's dumps + loads."""
    o = bench.options
    payloads = make_payloads(o.array_bytes)
    for key, value in payloads.items():
        if not equal(codec_round_trip(value), value):
            raise RuntimeError(f"the codec changed the {key} payload")
    times: dict[str, dict[str, list[float]]] = {k: {"pickle": [], "oob": [], "codec": []} for k in payloads}
    for _ in range(o.runs):
        for key, value in payloads.items():
            t = times[key]
            t["pickle"].append(pickle_time(value, o.codec_seconds))
            if key == "array":
                t["oob"].append(pickle_oob_time(value, o.codec_seconds))
            t["codec"].append(codec_time(value, o.codec_seconds))
            await trio.lowlevel.checkpoint()
    out: Section = {}
    for key, label, _ in PAYLOADS:
        t = times[key]
        unit = "ms" if key == "array" else "µs"
        floors = [
            ("pickle", "pickle.dumps + pickle.loads", scaled(summarize_values(t["pickle"]), _SCALE[unit]))
        ]
        if t["oob"]:
            floors.append(
                (
                    "pickle_oob",
                    "pickle.dumps + pickle.loads, buffers out of band",
                    scaled(summarize_values(t["oob"]), _SCALE[unit]),
                )
            )
        out[f"codec_{key}"] = make_figure(
            f"codec_{key}",
            f"g. codec encode + decode: {_label(key, label, o.array_bytes)}",
            unit,
            "lower",
            scaled(summarize_values(t["codec"]), _SCALE[unit]),
            floors,
            ratio_target=("pickle", CODEC_TARGET),
        )
    return out


async def _calls(call: Callable[[], Awaitable[Any]], seconds: float) -> list[float]:
    """Seconds per call: one untimed call, then calls until ``seconds`` have passed (>= 2)."""
    await call()
    samples: list[float] = []
    clock = time.perf_counter
    start = clock()
    while len(samples) < 2 or clock() - start < seconds:
        t0 = clock()
        await call()
        samples.append(clock() - t0)
    return samples


async def payload_echo(bench: Bench) -> Section:
    """h. ``await handle.echo(value)`` on a local machine, beside a multiprocessing.Pipe echo."""
    o = bench.options
    payloads = make_payloads(o.array_bytes)
    [(_, handle)] = await bench.echo_actors(1)
    pipe = PipeEcho()
    try:
        for key, value in payloads.items():
            if not equal(await handle.echo(value), value) or not equal(pipe.round_trip(value), value):
                raise RuntimeError(f"the {key} payload did not come back equal")
        runs: dict[str, dict[str, list[list[float]]]] = {k: {"pipe": [], "bigactor": []} for k in payloads}
        for _ in range(o.runs):
            for key, value in payloads.items():

                async def through_pipe(value: Any = value) -> Any:
                    return pipe.round_trip(value)

                async def through_bigactor(value: Any = value) -> Any:
                    return await handle.echo(value)

                runs[key]["pipe"].append(await _calls(through_pipe, o.echo_seconds))
                runs[key]["bigactor"].append(await _calls(through_bigactor, o.echo_seconds))
    finally:
        pipe.close()
    out: Section = {}
    for key, label, unit in PAYLOADS:
        r = runs[key]
        pipe_summary = scaled(summarize_latency_runs(r["pipe"]), _SCALE[unit])
        out[f"echo_value_{key}"] = make_figure(
            f"echo_value_{key}",
            f"h. echo call round trip: {_label(key, label, o.array_bytes)}",
            unit,
            "lower",
            scaled(summarize_latency_runs(r["bigactor"]), _SCALE[unit]),
            [("pipe", "multiprocessing.Pipe to a child echoing", pipe_summary)],
            ratio_target=("pipe", ECHO_TARGET),
        )
    return out
