"""The status page's pictures: history sampled from status(), sparklines that follow it, the
summary line, and flame graphs whose boxes are as wide as their samples."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any

from bigactor._dashboard import FLAME_WIDTH, SPARK_HEIGHT, SPARK_WIDTH, History, flame_svg, sparkline, summary


def entry(addr: str, calls: int, rss: int, load: float, state: str = "RUNNING") -> dict[str, Any]:
    """A status() entry with only what the charts read."""
    return {
        "addr": addr,
        "state": state,
        "server": {"a.work": {"count": calls}, "Supervisor.keepalive": {"count": 999}},
        "memory": {"rss": rss},
        "load": {"load1": load},
    }


def test_history_turns_counters_into_rates_and_forgets_old_samples() -> None:
    """Calls served become calls/s between samples (Supervisor calls left out); samples older
    than the window go, and so does a machine not seen for the window."""
    h = History(window=60)
    h.record([entry("m1", 0, 100, 0.5)], now=1000)
    h.record([entry("m1", 50, 200, 1.0)], now=1010)
    h.record([entry("m1", 150, 300, 1.5)], now=1020)
    s = h.series("m1")
    assert s["calls_per_s"] == [(1010, 5.0), (1020, 10.0)]
    assert s["rss"] == [(1000, 100.0), (1010, 200.0), (1020, 300.0)]
    assert h.calls_per_s() == 7.5  # over the last minute: 150 calls in 20 s
    assert h.calls_per_s(over=10) == 10.0
    h.record([entry("m1", 150, 300, 1.5)], now=1065)
    assert [t for t, _ in h.series("m1")["rss"]] == [1010, 1020, 1065]
    h.record([entry("m2", 0, 1, 0.0)], now=1200)
    assert h.series("m1") == {"calls_per_s": [], "rss": [], "load": []}


def test_sparkline_points_follow_the_values() -> None:
    """The newest point is at the right edge, the largest value at the top, zero at the bottom."""
    svg = sparkline([(0.0, 0.0), (300.0, 5.0), (600.0, 10.0)], "calls", window=600)
    root = ET.fromstring(svg)
    points = [tuple(map(float, p.split(","))) for p in root.find("polyline").get("points").split()]  # type: ignore[union-attr]
    assert points[-1] == (SPARK_WIDTH, 1.0)
    assert points[0] == (0.0, SPARK_HEIGHT - 1)
    assert points[1][1] == SPARK_HEIGHT - 1 - 0.5 * (SPARK_HEIGHT - 2)
    assert root.find("title").text == "calls"  # type: ignore[union-attr]
    assert "line" in sparkline([], "nothing yet")


def test_summary_counts_machines_by_state_and_adds_memory() -> None:
    h = History()
    machines = [
        entry("a", 0, 2_000_000, 0),
        entry("b", 0, 3_000_000, 0),
        entry("c", 0, 0, 0, state="STOPPED"),
    ]
    assert (
        summary(machines, h) == "3 machines (2 RUNNING, 1 STOPPED) · 0 calls/s · 5.0 MB resident in workers"
    )


def test_flame_graph_boxes_are_as_wide_as_their_samples() -> None:
    """Two stacks 3:1 under one root: the heavier child is three quarters of the width, and
    each box's tooltip names the function and its share."""
    svg = flame_svg({"MainThread;main;heavy": 3, "MainThread;main;light": 1}, "test")
    root = ET.fromstring(svg)
    ns = {"s": "http://www.w3.org/2000/svg"}
    boxes = {
        g.find("s:title", ns).text.split(":")[0]: g.find("s:rect", ns)
        for g in root.iter("{http://www.w3.org/2000/svg}g")
    }  # type: ignore[union-attr]
    assert float(boxes["all"].get("width")) == FLAME_WIDTH  # type: ignore[arg-type]
    assert float(boxes["heavy"].get("width")) == 0.75 * FLAME_WIDTH  # type: ignore[arg-type]
    assert float(boxes["light"].get("x")) == 0.75 * FLAME_WIDTH  # type: ignore[arg-type]
    assert float(boxes["heavy"].get("y")) < float(boxes["main"].get("y"))  # type: ignore[arg-type]  # callees above
    assert re.search(r"heavy: 3 samples, 75\.0%", svg)
