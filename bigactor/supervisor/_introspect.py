"""What a machine can tell about itself while it runs: CPU profiles, stacks, counters.

A profile samples every thread's stack (``sys._current_frames``) ``SAMPLE_HZ`` times a second
and keeps the samples of threads that were using the CPU: a thread's CPU clock
(``time.pthread_getcpuclockid``) must have moved in the moment before (see ``_sample``). So the
sync methods that burn CPU on their actors' threads show by name, and a Trio loop waiting in
``epoll`` or an idle actor thread waiting for work shows nothing (unless it went idle within
that moment). From the samples come both views: a pstats-compatible table (each function's own
and cumulative time; its "calls" count samples) and collapsed stacks for flame graphs.
``kind="cprofile"`` profiles the Trio thread with ``cProfile`` instead of the sampled table
(exact call counts and times, for async code, at the price of slowing it); the flame graph
stays sampled. Both merge across machines by addition, on the driver
(``bigactor._status.merge_pstats``).
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
#: seconds before each sample over which a thread's CPU use is measured
WINDOW = 0.001
#: the share of that window a thread must have run for its stack to count
BUSY = 0.2
KINDS = ("sampled", "cprofile")

Function = tuple[str, int, str]  # pstats' key: file, first line, name
Stack = tuple[tuple[str, int, str, int], ...]  # root first: file, first line, name, line


def _stack(frame: FrameType | None) -> Stack:
    out = []
    while frame is not None:
        code = frame.f_code
        out.append((code.co_filename, code.co_firstlineno, code.co_name, frame.f_lineno))
        frame = frame.f_back
    return tuple(reversed(out))


def _cpu_clock(ident: int) -> float | None:
    try:
        return time.clock_gettime(time.pthread_getcpuclockid(ident))
    except (OSError, OverflowError):  # the thread is gone
        return None


def _sample(seconds: float, hz: float, stop: threading.Event) -> Counter[tuple[str, Stack]]:
    """Every ``1/hz`` s until ``seconds`` pass or ``stop`` is set, the stacks of the threads
    that used the CPU just before, by thread name (runs in a thread of its own, left out).

    A thread counts when it ran for ``BUSY`` of a short window that ends as its stack is read.
    The window, not the whole period, so that a thread that has just gone idle (an actor's
    thread back to waiting for calls, the Trio loop back in ``epoll``) is not charged for
    the work it finished earlier in the period. The sampler sleeps through the window, so a
    thread running Python gets the GIL back and its clock moves.
    """
    counts: Counter[tuple[str, Stack]] = Counter()
    me = threading.get_ident()
    window = min(WINDOW, 1 / hz)
    names: dict[int, str] = {}
    end = time.monotonic() + seconds
    while True:
        before = {ident: _cpu_clock(ident) for ident in sys._current_frames() if ident != me}
        if stop.wait(window):
            return counts
        for ident, frame in sys._current_frames().items():
            start = before.get(ident)
            clock = _cpu_clock(ident)
            if start is None or clock is None or clock - start < BUSY * window:
                continue
            name = names.get(ident)
            if name is None:
                names.update((t.ident, t.name) for t in threading.enumerate() if t.ident)
                name = names.setdefault(ident, f"thread {ident}")
            counts[(name, _stack(frame))] += 1
        if time.monotonic() >= end or stop.wait(1 / hz - window):
            return counts


def _collapsed(samples: Counter[tuple[str, Stack]]) -> dict[str, int]:
    """Flame-graph lines: ``thread;frame;frame`` (root first) with their sample counts."""
    out: Counter[str] = Counter()
    for (thread, stack), n in samples.items():
        frames = (f"{name} ({file}:{line})" for file, _, name, line in stack)
        out[";".join((thread, *frames))] += n
    return dict(out)


def _table(samples: Counter[tuple[str, Stack]], hz: float) -> dict[Function, Any]:
    """The samples as a pstats table: per function ``(cc, nc, tt, ct, callers)``, where the
    counts are samples and the times are samples over ``hz``. Each thread is a root function
    of its own (``<thread NAME>``), so the table also says which thread spent the time."""
    period = 1 / hz
    table: dict[Function, list[Any]] = {}

    def entry(fn: Function) -> list[Any]:
        found = table.get(fn)
        if found is None:
            found = table[fn] = [0, 0, 0.0, 0.0, {}]
        return found

    for (thread, stack), n in samples.items():
        chain: list[Function] = [("~", 0, f"<thread {thread}>")]
        chain += [(file, first, name) for file, first, name, _ in stack]
        seen: set[Function] = set()
        edges: set[tuple[Function, Function]] = set()
        for i, fn in enumerate(chain):
            e = entry(fn)
            leaf = i == len(chain) - 1
            if leaf:
                e[2] += n * period
            if fn not in seen:  # a recursive function counts once per sample
                seen.add(fn)
                e[0] += n
                e[1] += n
                e[3] += n * period
            if i and (chain[i - 1], fn) not in edges:
                edges.add((chain[i - 1], fn))
                cc, nc, tt, ct = e[4].get(chain[i - 1], (0, 0, 0.0, 0.0))
                e[4][chain[i - 1]] = (cc + n, nc + n, tt + (n * period if leaf else 0.0), ct + n * period)
    return {fn: tuple(e) for fn, e in table.items()}


_profiling = trio.Lock()


async def profile(seconds: float, hz: float = SAMPLE_HZ, kind: str = "sampled") -> dict[str, Any]:
    """Profile this process for ``seconds``: ``{"pstats": stats dict, "collapsed": {stack: n},
    "kind": kind}`` (see the module docstring for the kinds).

    One profile at a time per process; a second one waits for the first. Cancelling stops it
    at once: nothing is returned, and the next profile may start right away.
    """
    if kind not in KINDS:
        raise ValueError(f"no profile kind {kind!r}: use one of {', '.join(KINDS)}")
    async with _profiling:
        stop = threading.Event()
        profiler = None
        if kind == "cprofile":
            import cProfile  # here: every worker imports this module, few take a profile

            profiler = cProfile.Profile()
            profiler.enable()
        try:
            # The sampler only reads frames and clocks and has no side effects, so a cancel
            # abandons its thread rather than waiting out the seconds; `stop` (set below) ends
            # that thread within one sample period, and nobody reads what it counted.
            samples = await trio.to_thread.run_sync(_sample, seconds, hz, stop, abandon_on_cancel=True)
        finally:
            stop.set()
            if profiler is not None:
                profiler.disable()
        if profiler is not None:
            import pstats

            table = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
        else:
            table = _table(samples, hz)
        return {"pstats": table, "collapsed": _collapsed(samples), "kind": kind}


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
