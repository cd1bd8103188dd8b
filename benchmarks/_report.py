"""The outputs of a run: a table for people (Markdown, also pasted into the README) and a JSON
document for machines, both carrying the machine's CPU count, Python and library versions.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from ._figures import IDLE_WORKER_TARGET_MB, PEAK_TARGET_X_PAYLOAD, PEERS, Figure

PACKAGES = ("bigactor", "trio", "trio-websocket", "wsproto", "cloudpickle", "psutil", "numpy")
REPO = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip()


def environment() -> dict[str, Any]:
    """The machine, interpreter, library versions and commit this run measured."""
    versions: dict[str, str | None] = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            versions[pkg] = None
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "versions": versions,
        "commit": _git("rev-parse", "--short=12", "HEAD"),
        "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        "loadavg_start": list(os.getloadavg()),
    }


def fmt(value: float | None, unit: str) -> str:
    """A number in its unit, with digits that mean something."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if unit in ("calls/s",):
        return f"{value:,.0f}/s"
    if unit == "MB":
        return f"{value / 1e6:.1f} MB"
    if unit == "x":
        return f"{value:.2f}x" if value < 10 else f"{value:.1f}x"
    if abs(value) >= 100:
        return f"{value:,.0f} {unit}"
    if abs(value) >= 10:
        return f"{value:.1f} {unit}"
    return f"{value:.3g} {unit}"


def markdown(header: list[str], rows: list[list[str]]) -> str:
    """An aligned Markdown table."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in rows]
    return "\n".join(lines)


FIGURE_HEADER = ["figure", "median", "p99", "runs min..max", "x floor", "target", "met", *PEERS]


def figure_rows(fig: Figure) -> list[list[str]]:
    """The bigactor row of a figure, then one row per floor."""
    unit = fig["unit"]
    b = fig["bigactor"]
    target = fig.get("target")
    ref = fig.get("reference") or {}
    if target and "x_floor_of" in target:  # relative to a floor of the same run
        goal = f"≤ {target['value']:g}x {target['x_floor_of']}"
    elif target:
        goal = f"{'≤' if target['op'] == '<=' else '≥'} {fmt(target['value'], unit)}"
    else:
        goal = ""
    rows = [
        [
            fig["title"],
            fmt(b["median"], unit),
            fmt(b.get("p99"), unit),
            f"{fmt(b['min'], unit)} .. {fmt(b['max'], unit)}",
            "",
            goal,
            ("✓" if target["met"] else "✗") if target else "",
            *[fmt(ref.get(p), unit) if ref else "" for p in PEERS],
        ]
    ]
    rows += [
        [
            f"  ↳ floor: {f['label']}",
            fmt(f["median"], unit),
            fmt(f.get("p99"), unit),
            f"{fmt(f['min'], unit)} .. {fmt(f['max'], unit)}",
            fmt(f["x_floor"], "x"),
            "",
            "",
            *["" for _ in PEERS],
        ]
        for f in fig["floors"]
    ]
    return rows


def memory_table(mem: dict[str, Any]) -> str:
    """Driver and worker RSS, with the targets of the issue."""
    idle = mem.get("idle_worker_rss_bytes")
    floor = mem.get("floor_import_rss_bytes")
    rows = [
        [
            "driver RSS at start (imports done, no cluster)",
            fmt(mem.get("driver_rss_start_bytes"), "MB"),
            "",
            "",
        ],
        [
            f"driver RSS with a cluster of {mem['machines_open']} machine open, before any payload",
            fmt(mem.get("driver_rss_bytes"), "MB"),
            "",
            "",
        ],
        [
            f"idle worker RSS (median of {len(mem['idle_worker_rss_runs'])} fresh workers)",
            fmt(idle, "MB"),
            f"≤ {IDLE_WORKER_TARGET_MB:.0f} MB",
            "" if idle is None else ("✓" if idle <= IDLE_WORKER_TARGET_MB * 1e6 else "✗"),
        ],
        [
            "  ↳ floor: interpreter with trio+cloudpickle imported"
            + (f" (worker = {fmt(idle / floor, 'x')})" if idle and floor else ""),
            fmt(floor, "MB"),
            "",
            "",
        ],
    ]
    peaks = mem.get("echo_peaks") or {}
    size = peaks.get("payload_bytes")
    for side in ("driver", "worker"):
        p = peaks.get(side)
        if not size or not p:
            continue
        rows.append(
            [
                f"{side} peak RSS during the {size >> 20} MiB echo ({fmt(p['peak_x_payload'], 'x')} payload; "
                f"+{fmt(p['growth_bytes'] / size, 'x')} payload over just before; "
                f"first run {fmt(p['first_peak_bytes'], 'MB')})",
                fmt(p["peak_bytes"], "MB"),
                f"≤ {PEAK_TARGET_X_PAYLOAD:.0f}x payload = {fmt(PEAK_TARGET_X_PAYLOAD * size, 'MB')}",
                "✓" if p["target_met"] else "✗",
            ]
        )
    for side in ("driver", "worker"):
        p = peaks.get(side)
        if size and p and p.get("retained_bytes") is not None:
            rows.append(
                [
                    f"{side} RSS still held after the echoes, reply dropped "
                    f"({fmt(p['retained_bytes'] / size, 'x')} payload)",
                    fmt(p["retained_bytes"], "MB"),
                    "",
                    "",
                ]
            )
    return markdown(["memory (MB = 10^6 bytes)", "value", "target", "met"], rows)


def scaling_table(scaling: dict[str, Any]) -> str:
    """Latency and throughput at each cluster size, beside raw TCP over as many servers."""
    rows = []
    for s in scaling["steps"]:
        seq = s["sequential_us"]
        pipe = s["pipelined_calls_s"]
        fseq = s.get("floor_sequential_us")
        fpipe = s.get("floor_pipelined_calls_s")
        rows.append(
            [
                str(s["machines"]),
                fmt(s["grow_s"], "s"),
                fmt(seq["median"], "µs"),
                fmt(seq["p99"], "µs"),
                ""
                if fseq is None
                else f"{fmt(fseq['median'], 'µs')} ({fmt(seq['median'] / fseq['median'], 'x')})",
                fmt(pipe["median"], "calls/s"),
                f"{fmt(pipe['min'], 'calls/s')} .. {fmt(pipe['max'], 'calls/s')}",
                ""
                if fpipe is None
                else f"{fmt(fpipe['median'], 'calls/s')} ({fmt(fpipe['median'] / pipe['median'], 'x')})",
                f"{s['pipelined_calls']:,}",
            ]
        )
    header = [
        "machines",
        "start (added to the cluster)",
        "sequential median (round-robin)",
        "p99",
        "floor: raw TCP, as many servers (x floor)",
        "pipelined (spread)",
        "runs min..max",
        "floor: raw TCP, as many servers (x floor)",
        "calls per run",
    ]
    return markdown(header, rows)


def simulation_table(sim: dict[str, Any]) -> str:
    """Start, answer, idle and status costs at each simulated size, with the 1,000-machine targets."""
    t = sim["targets"]
    rows = [
        [
            f"{s['machines']:,}",
            fmt(s["start_s"], "s"),
            fmt(s["answered_s"], "s"),
            f"{s['idle_core'] * 100:.1f}%",
            fmt(s["status_s"], "s"),
            f"{s['status_reported']:,}",
        ]
        for s in sim["steps"]
    ]
    met = t["met"] or {}

    def mark(key: str) -> str:
        return "" if key not in met else " ✓" if met[key] else " ✗"

    rows.append(
        [
            f"target at {t['at']:,}" + ("" if met else " (not run)"),
            "",
            f"≤ {t['answered_s']:g} s{mark('answered')}",
            f"≤ {t['idle_core'] * 100:g}%{mark('idle')}",
            f"≤ {t['status_s']:g} s{mark('status')}",
            "",
        ]
    )
    header = [
        "simulated machines (test system, in this process)",
        "start returns",
        "every machine answered",
        f"idle CPU, keepalive every {sim['keepalive_period_s'] / 2:g} s",
        "cluster.status(), median of 3",
        "machines reported",
    ]
    return markdown(header, rows)


def put_table(section: dict[str, Any]) -> str:
    """One model to several actors, by value and through cluster.put."""
    m = section["median"]
    model = section["model_bytes"]
    n = section["actors"]
    rows = [
        [
            f"time until {n} actors are built, each given the model (median)",
            fmt(m["value_s"], "s"),
            f"{fmt(m['spawn_s'], 's')} (+ {fmt(m['put_s'], 's')} for the put, once)",
        ],
        [
            f"memory the {n} workers gained, having read every page (USS)",
            f"{fmt(m['value_bytes'], 'MB')} ({m['value_bytes'] / model:.2f}x the model)",
            f"{fmt(m['shared_bytes'], 'MB')} ({m['shared_bytes'] / model:.2f}x the model), plus the"
            " one shared copy" + (" ✓ stored once" if section["stored_once"] else " ✗ not stored once"),
        ],
    ]
    return markdown([f"a {fmt(model, 'MB')} numpy model to {n} actors", "by value", "cluster.put"], rows)


def render(doc: dict[str, Any]) -> str:
    """The whole report as text (Markdown)."""
    env = doc["environment"]
    v = env["versions"]
    res = doc["results"]
    lines = [
        f"bigactor benchmark, {env['date']}, commit {env['commit'] or '?'}"
        f"{' (with local changes)' if env['dirty'] else ''}, runtime {doc['runtime_s']:.0f} s"
        f"{', --quick' if doc['quick'] else ''}",
        f"{env['cpu_count']} CPUs ({env['cpu_model'] or '?'}), {env['platform']}, "
        f"Python {env['python']}; " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"median of {doc['options']['runs']} runs per figure; 'x floor' = how many times the "
        "floor's cost bigactor pays (time: bigactor/floor; rate: floor/bigactor).",
        f"{PEERS[0]} and {PEERS[1]}: DESIGN.md §4, measured by the project on this machine "
        "with the same workloads, not re-measured here.",
        "",
    ]
    figures = [f for f in res.values() if isinstance(f, dict) and "bigactor" in f]
    if figures:
        rows = [row for f in figures for row in figure_rows(f)]
        lines += [markdown(FIGURE_HEADER, rows), ""]
    if "kill" in res and not res["kill"].get("all_machine_lost"):
        lines += [f"kill: the pending call raised {res['kill']['raised']} (expected MachineLost)", ""]
    if "memory" in res:
        lines += [memory_table(res["memory"]), ""]
    if "scaling" in res:
        cold = res["scaling"]["cold_start"]
        rows = [row for f in (cold if isinstance(cold, list) else [cold]) for row in figure_rows(f)]
        lines += [markdown(FIGURE_HEADER, rows), ""]
        lines += [scaling_table(res["scaling"]), ""]
    if "simulation" in res:
        lines += [simulation_table(res["simulation"]), ""]
    if "put" in res:
        lines += [put_table(res["put"]), ""]
    for name, error in (doc.get("errors") or {}).items():
        lines.append(f"FAILED: {name}: {error}")
    log = doc.get("log") or []
    expected = [line for line in log if "killed by SIGKILL" in line]
    other = [line for line in log if line not in expected]
    if log:
        lines.append(
            f"bigactor logged {len(log)} warning(s)/error(s), {len(expected)} of them the kills of "
            "figure f; all are in the JSON."
        )
        lines += [f"  {line[:160]}" for line in sorted(set(other))[:5]]
    return "\n".join(lines).rstrip() + "\n"


def _clean(obj: Any) -> Any:
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def write_json(doc: dict[str, Any], path: Path) -> None:
    """Write the run's document as strict JSON (NaN becomes null)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_clean(doc), indent=1, ensure_ascii=False, allow_nan=False) + "\n")
