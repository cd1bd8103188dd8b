"""What idle machines cost the driver: its event loop must not wake once per machine for
housekeeping (the performance issue: find what grows per machine). Counted in task steps, not
timed: an idle cluster of the local system, 8 machines, over 2 seconds."""

from __future__ import annotations

from collections import Counter

import pytest
import trio

import bigactor

pytestmark = pytest.mark.slow  # real worker processes


class StepCounter(trio.abc.Instrument):
    """Counts task steps by task name."""

    def __init__(self) -> None:
        self.steps: Counter[str] = Counter()

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps[task.name] += 1


async def test_idle_machines_do_not_each_wake_the_driver() -> None:
    n = 8
    async with bigactor.open_cluster() as cluster:
        machines = await cluster.start(n)
        for m in machines:
            await m.call("Supervisor.getpid")
        await trio.sleep(0.5)
        counter = StepCounter()
        trio.lowlevel.add_instrument(counter)
        try:
            await trio.sleep(2.0)
        finally:
            trio.lowlevel.remove_instrument(counter)
    # A keepalive round (every 30 s) may fall in the window: a few steps per machine. Polling
    # each worker's process state in a task of its own (every 0.5 s) was 4 x n more.
    others = {name: k for name, k in counter.steps.items() if "test_idle_machines" not in name}
    assert sum(others.values()) <= 3 * n, others
