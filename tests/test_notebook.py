"""bigactor in Jupyter, with a real kernel: the example notebook runs top to bottom; classes
defined in cells keep their identity and survive being defined again; an interrupt cancels the
running cell's calls and never the cluster; a kernel restart or shutdown leaves no worker."""

from __future__ import annotations

import os
import queue
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

os.environ.setdefault("JUPYTER_PLATFORM_DIRS", "1")  # jupyter_core warns about its paths otherwise

import nbclient
import nbformat
from jupyter_client.manager import KernelManager

pytestmark = pytest.mark.slow  # a real kernel and real workers

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "notebook.ipynb"


class Kernel:
    """A real IPython kernel, driven as a notebook front end drives it."""

    def __init__(self) -> None:
        self.manager = KernelManager(kernel_name="python3")
        self.manager.start_kernel(cwd=str(EXAMPLE.parent))
        self.client = self.manager.client()
        self.client.start_channels()
        self.client.wait_for_ready(timeout=60)

    def run(self, code: str, *, interrupt_after: float | None = None, timeout: float = 60) -> list[Any]:
        """Execute a cell; its printed lines, and ("error", name) for an error it ended with."""
        msg_id = self.client.execute(code)
        start = time.monotonic()
        interrupted = False
        out: list[Any] = []
        while True:
            if interrupt_after is not None and not interrupted and time.monotonic() - start > interrupt_after:
                self.manager.interrupt_kernel()  # the notebook's stop button
                interrupted = True
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"cell did not finish in {timeout} s: {code!r}")
            try:
                msg = self.client.get_iopub_msg(timeout=0.2)
            except queue.Empty:
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                out.extend(content["text"].splitlines())
            elif kind == "error":
                out.append(("error", content["ename"]))
            elif kind == "status" and content["execution_state"] == "idle":
                return out

    def close(self) -> None:
        self.client.stop_channels()
        if self.manager.is_alive():
            self.manager.shutdown_kernel(now=True)


@pytest.fixture
def kernel() -> Iterator[Kernel]:
    k = Kernel()
    try:
        yield k
    finally:
        k.close()


SETUP = """
import os, time, bigactor
cluster = await bigactor.background_cluster()
"""

ACTOR = """
class Worker:
    def __init__(self):
        self.stopped = False
    async def pid(self):
        return os.getpid()
    def spin(self):
        try:
            while True:
                time.sleep(0.001)
        finally:
            self.stopped = True
    def was_stopped(self):
        deadline = time.monotonic() + 5
        while not self.stopped and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.stopped
    def me(self):
        return self
"""


def gone(pids: list[int], within: float) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        alive = [
            p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
        ]
        if not alive:
            return True
        time.sleep(0.05)
    return False


def test_the_example_notebook_runs_in_a_real_kernel() -> None:
    """examples/notebook.ipynb, executed cell by cell by nbclient, prints what it says."""
    nb = nbformat.read(EXAMPLE, as_version=4)
    nbclient.NotebookClient(nb, timeout=60, kernel_name="python3").execute()
    printed = [
        line
        for cell in nb.cells
        for o in cell.get("outputs", [])
        if o.get("name") == "stdout"
        for line in o["text"].splitlines()
    ]
    assert printed == ["5", "15", "True 15", "[0, 1, 2]", "closed"]


def test_classes_defined_again_in_a_cell_keep_their_identity(kernel: Kernel) -> None:
    """A class defined in a cell travels by value; running the cell again makes a new class,
    and each actor returns instances of the class it was spawned from."""
    assert kernel.run(SETUP) == []
    assert kernel.run(ACTOR) == []
    assert kernel.run(
        "w = await cluster.spawn(Worker)\nold = Worker\nprint(type(await w.me()) is Worker)"
    ) == ["True"]
    assert kernel.run(ACTOR) == []  # the cell run again
    assert kernel.run(
        "w2 = await cluster.spawn(Worker)\nprint(type(await w2.me()) is Worker, Worker is not old)"
    ) == ["True True"]
    assert kernel.run("print(type(await w.me()) is old)") == ["True"]
    assert kernel.run("await cluster.aclose()") == []
    within_one_cell = (
        "async with bigactor.open_cluster() as c2:\n"
        "    h = await c2.spawn(Worker)\n"
        "    print(type(await h.me()) is Worker)"
    )
    assert kernel.run(within_one_cell) == ["True"]  # a cluster that lives inside one cell


def test_an_interrupt_cancels_the_cells_calls_never_the_cluster(kernel: Kernel) -> None:
    """The stop button during a long call: the cell ends cancelled, the method on the machine
    stops, and the next cell calls the same machine."""
    kernel.run(SETUP)
    kernel.run(ACTOR)
    [pid] = kernel.run("w = await cluster.options(max_concurrency=2).spawn(Worker)\nprint(await w.pid())")
    started = time.monotonic()
    assert kernel.run("await w.spin()", interrupt_after=1.0) == [("error", "CancelledError")]
    assert time.monotonic() - started < 10
    assert kernel.run("print(await w.was_stopped(), await w.pid())") == [f"True {pid}"]
    assert kernel.run("print([m.state.name for m in cluster.machines()])") == ["['RUNNING']"]


def test_kernel_restart_and_shutdown_leave_no_worker(kernel: Kernel) -> None:
    """Restarting the kernel with a cluster open, then shutting it down: every worker is gone."""
    kernel.run(SETUP)
    kernel.run(ACTOR)
    pids = [
        int(p)
        for p in kernel.run(
            "ws = [await cluster.spawn(Worker) for _ in range(2)]\nfor w in ws: print(await w.pid())"
        )
    ]
    assert len(pids) == 2
    kernel.manager.restart_kernel(now=False)
    kernel.client.wait_for_ready(timeout=60)
    assert gone(pids, within=10)
    kernel.run(SETUP)
    kernel.run(ACTOR)
    [pid] = kernel.run("w = await cluster.spawn(Worker)\nprint(await w.pid())")
    kernel.manager.shutdown_kernel(now=False)
    assert gone([int(pid)], within=10)
