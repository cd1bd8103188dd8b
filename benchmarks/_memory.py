"""Resident memory of the driver and the workers, from Linux's ``/proc/PID/status``.

``VmRSS`` is the resident set now, ``VmHWM`` its peak since the process started or since
``5`` was last written to ``/proc/PID/clear_refs`` (which resets the peak to the current RSS).
Both are read from the driver, for its own pid and for a worker's pid (same user, same host).
On a system without ``/proc`` the figures come back as None.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import trio

import bigactor

from ._figures import PEAK_TARGET_X_PAYLOAD
from ._stats import median


def status(pid: int | str = "self") -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` of ``pid`` in bytes (empty if unreadable)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0]) * 1024
    except OSError:
        return {}
    return out


def reset_peak(pid: int | str = "self") -> bool:
    """Reset ``pid``'s ``VmHWM`` to its current RSS; False where that is not possible."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


class PeakWatch:
    """The peak RSS of a set of processes over a stretch of time (``async with watch(...)``)."""

    def __init__(self, pids: dict[str, int | str]) -> None:
        self.pids = pids
        self.before: dict[str, int | None] = {}
        self.peak: dict[str, int | None] = {}


@contextlib.asynccontextmanager
async def watch_peaks(pids: dict[str, int | str]) -> AsyncIterator[PeakWatch]:
    """Reset each process's peak on entry; on exit record its RSS before and peak during."""
    w = PeakWatch(pids)
    gc.collect()
    for name, pid in pids.items():
        ok = reset_peak(pid)
        w.before[name] = status(pid).get("VmRSS") if ok else None
    yield w
    for name, pid in pids.items():
        w.peak[name] = status(pid).get("VmHWM") if w.before[name] is not None else None


async def idle_workers(cluster: bigactor.Cluster, n: int) -> list[int]:
    """Start ``n`` fresh machines, let them settle, return each worker's RSS in bytes."""
    from ._bigactor import start_echo_machines

    machines = await start_echo_machines(cluster, n)
    pids = [(await m.info()).pid for m in machines]
    await trio.sleep(0.5)
    rss = [status(pid).get("VmRSS") for pid in pids]
    for m in machines:
        await m.shutdown()
    return [r for r in rss if r is not None]


async def echo_peaks(
    echo: Callable[[bytes], Awaitable[Any]], payload: bytes, worker_pid: int, runs: int
) -> list[dict[str, Any]]:
    """Echo ``payload`` ``runs`` times; per run and side: RSS before, peak during, RSS after.

    "after" is read once the reply has been dropped: what the echo left behind.
    """
    pids: dict[str, int | str] = {"driver": "self", "worker": worker_pid}
    samples = []
    for _ in range(runs):
        async with watch_peaks(pids) as w:
            back = await echo(payload)
            del back
        gc.collect()
        after = {name: status(pid).get("VmRSS") for name, pid in pids.items()}
        samples.append({"before": dict(w.before), "peak": dict(w.peak), "after": after})
    return samples


def summarize_peaks(samples: list[dict[str, Any]], payload_size: int) -> dict[str, Any]:
    """Per side, in bytes: median peak, first run's peak, growth over the RSS just before,
    RSS left behind after the last run over the RSS before the first, and the 3x target."""
    out: dict[str, Any] = {"payload_bytes": payload_size, "runs": samples}
    for side in ("driver", "worker"):
        ok = [s for s in samples if s["peak"].get(side) is not None and s["before"].get(side)]
        if not ok:
            out[side] = None
            continue
        peak = median([s["peak"][side] for s in ok])
        after = ok[-1]["after"].get(side)
        out[side] = {
            "peak_bytes": peak,
            "first_peak_bytes": ok[0]["peak"][side],
            "before_bytes": median([s["before"][side] for s in ok]),
            "growth_bytes": median([s["peak"][side] - s["before"][side] for s in ok]),
            "retained_bytes": None if after is None else after - ok[0]["before"][side],
            "peak_x_payload": peak / payload_size,
            "target_met": peak <= PEAK_TARGET_X_PAYLOAD * payload_size,
        }
    return out
