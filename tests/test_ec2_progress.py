"""The launch progress reporter: a live block at a terminal (checked through a real pty), log
lines elsewhere. It is fed events and a fake clock; nothing sleeps."""

from __future__ import annotations

import io
import logging
import os
import pty

import pytest

from bigactor.systems.ec2 import LaunchProgress, Stage


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _read_all(fd: int) -> str:
    chunks = []
    os.set_blocking(fd, False)
    while True:
        try:
            data = os.read(fd, 65536)
        except (BlockingIOError, OSError):
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks).decode()


def test_terminal_block_is_redrawn_in_place_at_a_bounded_rate() -> None:
    """At a pty: one block of counts and the slowest machine, redrawn with ANSI, at most once
    per interval however many events arrive."""
    master, slave = pty.openpty()
    try:
        stream = os.fdopen(slave, "w", closefd=False)
        clock = _Clock()
        progress = LaunchProgress(stream, clock=clock, interval=0.25, title="ec2 m5.large")
        assert progress._tty  # decided by the stream itself
        progress.requested(100)
        first = _read_all(master)
        assert "ec2 m5.large: 100 requested, 0 pending, 0 running, 0 ready, 0 failed (0 s)" in first
        assert "\x1b[" not in first  # nothing to erase yet
        for i in range(100):  # a burst within one interval: no redraw
            progress.update(f"i-{i:03d}", Stage.PENDING)
        assert _read_all(master) == ""
        clock.now += 0.3
        for i in range(60):
            progress.update(f"i-{i:03d}", Stage.RUNNING, "10.0.0.1")
        clock.now += 5
        progress.refresh()
        progress.update("i-000", Stage.READY)
        progress.update("i-001", Stage.FAILED, "terminated by AWS")
        clock.now += 0.3
        progress.close()
        out = _read_all(master)
        # Each redraw moves up over the previous block (2 lines) and erases it.
        assert out.count("\x1b[1F\x1b[J") + out.count("\x1b[2F\x1b[J") >= 2
        last = out.rsplit("\x1b[J", 1)[-1]
        assert "0 requested, 40 pending, 58 running, 1 ready, 1 failed (6 s)" in last.replace("\r", "")
        assert "slowest: i-060 pending for 6 s" in last
        progress.close()  # idempotent
        assert _read_all(master) == ""
    finally:
        os.close(master)
        os.close(slave)


def test_log_lines_when_not_a_terminal(caplog: pytest.LogCaptureFixture) -> None:
    """Not at a terminal: one log record per stage change, failures as warnings, nothing drawn."""
    caplog.set_level(logging.INFO, "bigactor.ec2")
    stream = io.StringIO()
    clock = _Clock()
    progress = LaunchProgress(stream, clock=clock)
    progress.requested(2)
    clock.now += 1.5
    progress.update("i-a", Stage.PENDING)
    progress.update("i-a", Stage.PENDING)  # repeated: no new line
    progress.update("i-a", Stage.RUNNING, "3.3.3.3")
    progress.update("i-b", Stage.FAILED, "InsufficientInstanceCapacity")
    progress.update("i-b", Stage.RUNNING)  # late news about a settled machine
    progress.close()
    assert stream.getvalue() == ""
    records = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert records == [
        ("INFO", "ec2: requesting 2 machine(s)"),
        ("INFO", "ec2: i-a pending after 1.5 s"),
        ("INFO", "ec2: i-a running (3.3.3.3) after 1.5 s"),
        ("WARNING", "ec2: i-b failed (InsufficientInstanceCapacity) after 1.5 s"),
        ("INFO", "ec2: 0 requested, 0 pending, 1 running, 0 ready, 1 failed"),
    ]


def test_slowest_is_the_earliest_stage_longest_waiting() -> None:
    """The slowest machine is the one furthest behind, and the longest at that stage."""
    clock = _Clock()
    progress = LaunchProgress(io.StringIO(), tty=False, clock=clock)
    progress.update("i-1", Stage.PENDING)
    clock.now += 2
    progress.update("i-2", Stage.PENDING)
    progress.update("i-1", Stage.RUNNING)
    clock.now += 3
    assert progress.slowest() == ("i-2", Stage.PENDING, 3.0)
    progress.update("i-2", Stage.READY)
    progress.update("i-1", Stage.READY)
    assert progress.slowest() is None
