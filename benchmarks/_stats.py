"""Order statistics for benchmark samples: median, nearest-rank percentiles, run summaries.

A *run* is one repetition of a workload; it yields either one number (a time, a rate) or many
samples (one per call). Figures are the median over runs; the spread is the min..max of the
runs' values, so a reader sees how much the box wobbled.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any


def percentile(samples: Sequence[float], p: float) -> float:
    """The nearest-rank ``p``-th percentile (0 < p <= 100) of ``samples``; NaN if empty."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def median(values: Sequence[float]) -> float:
    """The median of ``values``; NaN if empty."""
    return statistics.median(values) if values else math.nan


def summarize_values(values: Sequence[float]) -> dict[str, Any]:
    """One value per run -> median, min, max and the runs themselves."""
    return {
        "median": median(values),
        "min": min(values) if values else math.nan,
        "max": max(values) if values else math.nan,
        "runs": list(values),
    }


def summarize_latency_runs(runs: Sequence[Sequence[float]]) -> dict[str, Any]:
    """Per-call samples of several runs -> median of run medians, median of run p99s, range.

    Times stay in the unit they were given in.
    """
    medians = [median(r) for r in runs]
    p99s = [percentile(r, 99) for r in runs]
    return {
        "median": median(medians),
        "p99": median(p99s),
        "min": min(medians) if medians else math.nan,
        "max": max(medians) if medians else math.nan,
        "runs": medians,
        "run_p99s": p99s,
        "calls_per_run": len(runs[0]) if runs else 0,
    }
