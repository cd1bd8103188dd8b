"""A *figure*: one bigactor number with the floors it is built on, its target and its peers.

Targets and the Ray/Dask columns are copied from ``DESIGN.md`` §4. The peers were measured by
the project on this same 2-core machine with the same workloads (median of 5 runs); this
benchmark does not re-measure them, it shows them for reference.

Ratios ("x floor") always read as *how many times the floor's cost bigactor pays*: for a time,
bigactor ÷ floor; for a rate, floor ÷ bigactor. So 1.0 is the floor and higher is worse.
"""

from __future__ import annotations

import math
from typing import Any

Figure = dict[str, Any]

PEERS = ("Ray 2.60", "Dask 2026.8")

# key -> (target operator, target value, Ray, Dask), in the figure's unit.
REFERENCE: dict[str, tuple[str, float, float, float]] = {
    "cold_start_4": ("<=", 0.5, 5.8, 2.2),  # s
    # The second performance round's target for 64 machines; no peer was measured at 64.
    "cold_start_64": ("<=", 0.5, math.nan, math.nan),  # s
    "sequential": ("<=", 300.0, 1374.0, 2477.0),  # µs
    "pipelined_1": (">=", 20_000.0, 1173.0, 487.0),  # calls/s
    "echo_64MiB": (">=", 500.0, 195.0, 200.0),  # MB/s
    "actor_to_actor": ("<=", 400.0, 1427.0, 2915.0),  # µs
    "kill": ("<=", 50.0, 19.0, 38.0),  # ms
    # Sync methods (a plain ``def ping(x): return x``): the targets and peers of the second
    # performance round, measured by the project the same way.
    "sequential_sync": ("<=", 150.0, 1096.0, 859.0),  # µs
    "pipelined_sync_1": (">=", 40_000.0, 3618.0, 1558.0),  # calls/s
    "pipelined_sync_4": (">=", 40_000.0, 4185.0, 1026.0),  # calls/s
    "actor_to_actor_sync": ("<=", 150.0, 1060.0, 957.0),  # µs
}

IDLE_WORKER_TARGET_MB = 50.0  # an idle worker, interpreter included
PEAK_TARGET_X_PAYLOAD = 3.0  # peak RSS on each side during the 64 MiB echo


def ratio(bigactor: float, floor: float, better: str) -> float:
    """How many times the floor's cost bigactor pays (1.0 = at the floor)."""
    if not floor or not bigactor or math.isnan(floor) or math.isnan(bigactor):
        return math.nan
    return bigactor / floor if better == "lower" else floor / bigactor


def make_figure(
    key: str,
    title: str,
    unit: str,
    better: str,
    bigactor: dict[str, Any],
    floors: list[tuple[str, str, dict[str, Any]]],
    extra: dict[str, Any] | None = None,
    ratio_target: tuple[str, float] | None = None,
) -> Figure:
    """Build a figure: ``floors`` are (key, label, summary); summaries have at least ``median``.

    ``ratio_target`` (floor key, ratio) sets a target relative to a floor measured in the same
    run: met when bigactor pays at most that many times that floor's cost.
    """
    value = bigactor["median"]
    figure: Figure = {
        "title": title,
        "unit": unit,
        "better": better,
        "bigactor": bigactor,
        "floors": [
            {"key": fkey, "label": label, **summary, "x_floor": ratio(value, summary["median"], better)}
            for fkey, label, summary in floors
        ],
        "target": None,
        "reference": None,
    }
    ref = REFERENCE.get(key)
    if ref is not None:
        op, target, ray, dask = ref
        met = value <= target if op == "<=" else value >= target
        figure["target"] = {"op": op, "value": target, "met": bool(met)}
        figure["reference"] = {
            PEERS[0]: ray,
            PEERS[1]: dask,
            "source": "DESIGN.md §4 (measured by the project on this machine, not re-measured)",
        }
    if ratio_target is not None:
        floor_key, most = ratio_target
        x = next(f["x_floor"] for f in figure["floors"] if f["key"] == floor_key)
        figure["target"] = {"op": "<=", "value": most, "met": bool(x <= most), "x_floor_of": floor_key}
    if extra:
        figure.update(extra)
    return figure


def scaled(summary: dict[str, Any], factor: float) -> dict[str, Any]:
    """A copy of a summary with every number (and list of numbers) multiplied by ``factor``."""
    out: dict[str, Any] = {}
    for k, v in summary.items():
        if k == "calls_per_run":
            out[k] = v
        elif isinstance(v, float | int) and not isinstance(v, bool):
            out[k] = v * factor
        elif isinstance(v, list):
            out[k] = [x * factor for x in v]
        else:
            out[k] = v
    return out
