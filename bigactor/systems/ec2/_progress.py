"""Launch progress: what many machines are doing while a cluster starts.

At a terminal (stderr is a tty) one block of text is redrawn in place, at most a few times a
second, however many machines there are::

    ec2 m5.large x100: 12 requested, 30 pending, 50 running, 6 ready, 2 failed (41 s)
      slowest: i-0abc pending for 38 s

Elsewhere (CI logs, files) every stage change is one ``logging`` record on ``bigactor.ec2``, so a
log says when each machine reached each stage.

The reporter is pure: it is fed events and a clock, holds no task and no thread, and writes only
when fed (``update``, ``refresh`` or ``close``). The owner calls ``refresh`` from a task of its
own to keep the elapsed times moving when nothing happens.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from typing import TextIO

import attrs

log = logging.getLogger("bigactor.ec2")


class Stage(enum.IntEnum):
    """Where one machine is; stages only move forward, except to FAILED."""

    REQUESTED = 0
    PENDING = 1
    RUNNING = 2
    READY = 3
    FAILED = 4

    def __str__(self) -> str:
        return self.name.lower()


@attrs.define
class _Machine:
    stage: Stage
    since: float
    detail: str = ""


class LaunchProgress:
    """Reports the stages of ``n`` machines being launched; see the module docstring.

    Args:
        stream: where the live block goes (default ``sys.stderr``).
        tty: draw the live block (True) or log stage changes (False); default: whether
            ``stream`` is a terminal.
        clock: seconds, monotonic.
        interval: the least time between two redraws of the live block.
        title: what the first line says is being launched.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        interval: float = 0.25,
        title: str = "ec2",
    ) -> None:
        import sys

        self._stream = stream if stream is not None else sys.stderr
        self._tty = self._stream.isatty() if tty is None else tty
        self._clock = clock
        self._interval = interval
        self._title = title
        self._start = clock()
        self._unassigned = 0
        self._machines: dict[str, _Machine] = {}
        self._drawn_lines = 0
        self._last_draw: float | None = None
        self._dirty = False
        self._closed = False

    def requested(self, n: int) -> None:
        """``n`` more machines were asked for; they have no instance ID yet."""
        self._unassigned += n
        if not self._tty:
            log.info("%s: requesting %d machine(s)", self._title, n)
        self._changed()

    def update(self, key: str, stage: Stage, detail: str = "") -> None:
        """Machine ``key`` (its instance ID) reached ``stage``; ``detail`` says more (an address,
        a reason). A machine seen for the first time takes one of the requested places."""
        now = self._clock()
        m = self._machines.get(key)
        if m is None:
            self._unassigned = max(0, self._unassigned - 1)
            m = self._machines[key] = _Machine(Stage.REQUESTED, now)
        if m.stage == stage or (m.stage in (Stage.READY, Stage.FAILED) and stage != Stage.FAILED):
            return  # repeated, or late news about a machine already settled
        m.stage, m.since, m.detail = stage, now, detail
        if not self._tty:
            level = logging.WARNING if stage == Stage.FAILED else logging.INFO
            suffix = f" ({detail})" if detail else ""
            log.log(level, "%s: %s %s%s after %.1f s", self._title, key, stage, suffix, now - self._start)
        self._changed()

    def counts(self) -> dict[Stage, int]:
        """How many machines are at each stage."""
        out = dict.fromkeys(Stage, 0)
        out[Stage.REQUESTED] = self._unassigned
        for m in self._machines.values():
            out[m.stage] += 1
        return out

    def slowest(self) -> tuple[str, Stage, float] | None:
        """The unsettled machine that has been longest at its stage: (key, stage, seconds)."""
        now = self._clock()
        waiting = [(k, m) for k, m in self._machines.items() if m.stage < Stage.READY]
        if not waiting:
            return None
        key, m = min(waiting, key=lambda km: (km[1].stage, km[1].since))
        return key, m.stage, now - m.since

    def render(self) -> list[str]:
        """The live block's lines."""
        c = self.counts()
        parts = ", ".join(f"{c[s]} {s}" for s in Stage)
        lines = [f"{self._title}: {parts} ({self._clock() - self._start:.0f} s)"]
        slow = self.slowest()
        if slow is not None:
            key, stage, seconds = slow
            lines.append(f"  slowest: {key} {stage} for {seconds:.0f} s")
        return lines

    def refresh(self) -> None:
        """Redraw the live block if it changed or time moved (no more often than ``interval``)."""
        self._changed(force=True)

    def close(self) -> None:
        """Draw the final block (or log the totals) and leave the cursor below it; idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._tty:
            self._draw()
        else:
            c = self.counts()
            log.info("%s: %s", self._title, ", ".join(f"{c[s]} {s}" for s in Stage))

    def _changed(self, force: bool = False) -> None:
        if not self._tty or self._closed:
            return
        self._dirty = self._dirty or not force
        now = self._clock()
        if self._last_draw is not None and now - self._last_draw < self._interval:
            return  # drawn again by the next event, refresh or close
        if self._dirty or force:
            self._draw()

    def _draw(self) -> None:
        lines = self.render()
        out = []
        if self._drawn_lines:
            # Up to the block's first line, then erase to the end of the screen.
            out.append(f"\x1b[{self._drawn_lines}F\x1b[J")
        out.append("".join(line + "\n" for line in lines))
        self._stream.write("".join(out))
        self._stream.flush()
        self._drawn_lines = len(lines)
        self._last_draw = self._clock()
        self._dirty = False
