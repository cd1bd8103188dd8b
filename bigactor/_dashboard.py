"""The status page's pictures: the cluster over the last minutes, and flame graphs, as SVG.

No JavaScript: the page is HTML that refreshes itself, with inline SVG drawn here on the
driver. :class:`History` keeps, per machine, a sample of what ``Cluster.status()`` said every
few seconds (calls served, memory, load) for the last :data:`WINDOW` seconds;
:func:`sparkline` draws one series as a small line chart; :func:`summary` is the line above
the table (machines by state, calls/s, memory); :func:`flame_svg` draws a profile's collapsed
stacks as a flame graph (root at the bottom, each frame as wide as its share of the samples,
its name and share in a tooltip).
"""

from __future__ import annotations

import html
import itertools
import time
import zlib
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

WINDOW = 600.0  # seconds of history kept
PERIOD = 5.0  # seconds between samples the page takes itself
RATE_OVER = 60.0  # seconds the calls/s figures average over (the charts show each interval)

SPARK_WIDTH, SPARK_HEIGHT = 120, 24


@attrs.frozen
class Sample:
    """What one machine reported at one time."""

    t: float
    calls: int  # calls served so far (every actor method; bigactor's own Supervisor calls left out)
    rss: int | None
    load: float | None


def _calls_served(entry: dict[str, Any]) -> int:
    return sum(
        c["count"] for name, c in entry.get("server", {}).items() if not name.startswith("Supervisor.")
    )


class History:
    """Samples of each machine's status over the last :data:`WINDOW` seconds."""

    def __init__(self, window: float = WINDOW) -> None:
        self.window = window
        self._samples: dict[str, deque[Sample]] = {}

    def record(self, machines: Iterable[dict[str, Any]], now: float | None = None) -> None:
        """Keep a sample of each running machine in ``machines`` (``Cluster.status()`` entries)."""
        now = time.time() if now is None else now
        for m in machines:
            if m.get("state") != "RUNNING" or "server" not in m:
                continue
            mem, load = m.get("memory"), m.get("load")
            series = self._samples.setdefault(m["addr"], deque())
            series.append(
                Sample(now, _calls_served(m), mem["rss"] if mem else None, load["load1"] if load else None)
            )
            while series and now - series[0].t > self.window:
                series.popleft()
        # Machines gone for longer than the window are forgotten.
        for addr in [a for a, s in self._samples.items() if s and now - s[-1].t > self.window]:
            del self._samples[addr]

    def series(self, addr: str) -> dict[str, list[tuple[float, float]]]:
        """The machine's ``calls_per_s``, ``rss`` and ``load`` series as (time, value) points."""
        samples = list(self._samples.get(addr, ()))
        rate = [
            (b.t, max(0.0, (b.calls - a.calls) / (b.t - a.t)))
            for a, b in itertools.pairwise(samples)
            if b.t > a.t
        ]
        return {
            "calls_per_s": rate,
            "rss": [(s.t, float(s.rss)) for s in samples if s.rss is not None],
            "load": [(s.t, s.load) for s in samples if s.load is not None],
        }

    def rate(self, addr: str, over: float = RATE_OVER) -> float:
        """The machine's calls served a second over its last ``over`` seconds of samples."""
        samples = self._samples.get(addr)
        if not samples or len(samples) < 2:
            return 0.0
        last = samples[-1]
        first = next((s for s in samples if last.t - s.t <= over), last)
        if last.t <= first.t:
            first = samples[-2]
        return max(0.0, (last.calls - first.calls) / (last.t - first.t)) if last.t > first.t else 0.0

    def calls_per_s(self, over: float = RATE_OVER) -> float:
        """The cluster's calls served a second over the last ``over`` seconds."""
        return sum(self.rate(addr, over) for addr in self._samples)


def sparkline(points: Sequence[tuple[float, float]], title: str, window: float = WINDOW) -> str:
    """A small SVG line chart of ``points`` (time, value), scaled from 0 to its largest value,
    across the time they span (at most ``window`` seconds); ``title`` is its tooltip."""
    w, h = SPARK_WIDTH, SPARK_HEIGHT
    box = f'<svg class="spark" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img">'
    tip = f"<title>{html.escape(title)}</title>"
    if len(points) < 2:
        return f'{box}{tip}<line x1="0" y1="{h - 1}" x2="{w}" y2="{h - 1}" class="empty"/></svg>'
    end = points[-1][0]
    span = min(window, end - points[0][0]) or window
    top = max(v for _, v in points) or 1.0
    coords = " ".join(
        f"{max(0.0, w - (end - t) / span * w):.1f},{h - 1 - v / top * (h - 2):.1f}" for t, v in points
    )
    return f'{box}{tip}<polyline points="{coords}"/></svg>'


def summary(machines: Sequence[dict[str, Any]], history: History) -> str:
    """The line above the table: machines by state, calls served a second, memory in use."""
    states = Counter(m["state"] for m in machines)
    by_state = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
    rss = sum(m["memory"]["rss"] for m in machines if m.get("memory"))
    return (
        f"{len(machines)} machines ({by_state or 'none'}) · {history.calls_per_s():,.0f} calls/s · "
        f"{_size(rss)} resident in workers"
    )


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


# -- flame graphs ------------------------------------------------------------------------------

FLAME_WIDTH = 1200
FRAME_HEIGHT = 16
MIN_WIDTH = 0.5  # pixels: narrower frames are left out (their samples still count above)


class _Node:
    __slots__ = ("children", "count", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.count = 0
        self.children: dict[str, _Node] = {}


def _tree(collapsed: dict[str, int]) -> _Node:
    root = _Node("all")
    for stack, n in collapsed.items():
        root.count += n
        node = root
        for frame in stack.split(";"):
            child = node.children.get(frame)
            if child is None:
                child = node.children[frame] = _Node(frame)
            child.count += n
            node = child
    return root


def _depth(node: _Node) -> int:
    return 1 + max((_depth(c) for c in node.children.values()), default=0)


def _color(name: str) -> str:
    # Warm colours, stable per function name (the frame's name without its file and line).
    h = zlib.crc32(name.split(" (", 1)[0].encode())
    return f"rgb({205 + h % 50},{(h >> 8) % 180 + 40},{(h >> 16) % 55})"


def flame_svg(collapsed: dict[str, int], title: str = "") -> str:
    """A flame graph of collapsed stacks (``{"a;b;c": samples}``, root first), as SVG."""
    root = _tree(collapsed)
    if not root.count:
        return '<svg class="flame" width="400" height="30"><text x="4" y="20">no samples</text></svg>'
    depth = _depth(root)
    height = depth * FRAME_HEIGHT + 24
    out = [
        f'<svg class="flame" xmlns="http://www.w3.org/2000/svg" width="{FLAME_WIDTH}" '
        f'height="{height}" viewBox="0 0 {FLAME_WIDTH} {height}" font-family="monospace" font-size="11">',
        f'<text x="4" y="14">{html.escape(title)}</text>',
    ]
    scale = FLAME_WIDTH / root.count

    def draw(node: _Node, x: float, level: int) -> None:
        width = node.count * scale
        if width < MIN_WIDTH:
            return
        y = height - (level + 1) * FRAME_HEIGHT
        share = 100 * node.count / root.count
        label = f"{node.name}: {node.count} samples, {share:.1f}%"
        out.append(
            f'<g><title>{html.escape(label)}</title><rect x="{x:.1f}" y="{y}" width="{width:.1f}" '
            f'height="{FRAME_HEIGHT - 1}" fill="{_color(node.name)}" data-samples="{node.count}"/>'
        )
        chars = int(width / 7)
        if chars >= 3:
            text = node.name if len(node.name) <= chars else node.name[: chars - 1] + "…"
            out.append(f'<text x="{x + 2:.1f}" y="{y + FRAME_HEIGHT - 4}">{html.escape(text)}</text>')
        out.append("</g>")
        for child in sorted(node.children.values(), key=lambda c: c.name):
            draw(child, x, level + 1)
            x += child.count * scale

    draw(root, 0.0, 0)
    out.append("</svg>")
    return "".join(out)
