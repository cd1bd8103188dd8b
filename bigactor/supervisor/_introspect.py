"""What a machine can tell about itself while it runs: CPU profiles, stacks, counters.

Profiles come two ways, taken together over the same seconds: ``cProfile`` on the Trio thread
(exact call counts and times, for ``pstats`` and its viewers) and a sampler of every thread's
stack (``sys._current_frames``, for flame graphs in the collapsed-stack format, and the only
view of sync methods running in worker threads). Both merge across machines by addition, on
the driver (``bigactor._status.merge_pstats``).
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections import Counter
from types import FrameType
from typing import Any

import trio

SAMPLE_HZ = 200


def _collapse(frame: FrameType | None, thread: str) -> str:
    names = []
    while frame is not None:
        code = frame.f_code
        names.append(f"{code.co_name} ({code.co_filename}:{frame.f_lineno})")
        frame = frame.f_back
    names.append(thread)
    return ";".join(reversed(names))


def _sample(seconds: float, hz: float, stop: threading.Event) -> Counter[str]:
    """Sample every thread's stack ``hz`` times a second until ``seconds`` pass or ``stop`` is
    set (runs in a worker thread)."""
    counts: Counter[str] = Counter()
    me = threading.get_ident()
    names = {t.ident: t.name for t in threading.enumerate()}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for ident, frame in sys._current_frames().items():
            if ident != me:
                counts[_collapse(frame, names.get(ident, f"thread {ident}"))] += 1
        if stop.wait(1 / hz):
            break
    return counts


_profiling = trio.Lock()


async def profile(seconds: float, hz: float = SAMPLE_HZ) -> dict[str, Any]:
    """Profile this process for ``seconds``: ``{"pstats": stats dict, "collapsed": {stack: n}}``.

    One profile at a time per process; a second one waits for the first. Cancelling stops it
    at once: nothing is returned, and the next profile may start right away.
    """
    async with _profiling:
        stop = threading.Event()
        import cProfile  # here: every worker imports this module, few take a profile
        import pstats

        profiler = cProfile.Profile()
        profiler.enable()
        try:
            # The sampler only reads frames and has no side effects, so a cancel abandons its
            # thread rather than waiting out the seconds; `stop` (set below) ends that thread
            # within one sample period, and nobody reads what it counted.
            collapsed = await trio.to_thread.run_sync(_sample, seconds, hz, stop, abandon_on_cancel=True)
        finally:
            stop.set()
            profiler.disable()
        stats = pstats.Stats(profiler)
        return {"pstats": stats.stats, "collapsed": dict(collapsed)}  # type: ignore[attr-defined]


def memory_report(top: int = 15) -> str:
    """Live objects by type, the most numerous first, and tracemalloc's top sites if tracing."""
    import gc
    import tracemalloc
    from collections import Counter as _Counter

    counts = _Counter(type(o).__qualname__ for o in gc.get_objects())
    lines = [f"{n:>10}  {name}" for name, n in counts.most_common(top)]
    out = "live objects by type:\n" + "\n".join(lines) + "\n"
    if tracemalloc.is_tracing():
        stats = tracemalloc.take_snapshot().statistics("lineno")[:top]
        out += "tracemalloc, top allocation sites:\n" + "\n".join(f"  {s}" for s in stats) + "\n"
    return out


def _task_tree(task: trio.lowlevel.Task, depth: int, out: list[str]) -> None:
    pad = "  " * depth
    out.append(f"{pad}task {task.name}")
    for frame, lineno in task.iter_await_frames():
        out.append(f"{pad}    {frame.f_code.co_name} ({frame.f_code.co_filename}:{lineno})")
    for nursery in task.child_nurseries:
        for child in nursery.child_tasks:
            _task_tree(child, depth + 1, out)


def stacks() -> str:
    """Every thread's stack and the Trio task tree, as text."""
    out: list[str] = []
    names = {t.ident: t.name for t in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        out.append(f"thread {names.get(ident, ident)}:")
        out.extend(line.rstrip("\n") for line in traceback.format_stack(frame))
        out.append("")
    out.append("trio tasks:")
    _task_tree(trio.lowlevel.current_root_task(), 0, out)  # type: ignore[arg-type]
    return "\n".join(out) + "\n"
