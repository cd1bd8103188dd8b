"""``serve_worker``: one machine's body, the same on every system.

A system gets a worker going its own way (a process forked on this host, an instance booting in
a cloud, a task in the test's own loop) and hands it a :class:`~bigactor._contract.WorkerConfig`
and a listener; from there every machine is this function: the way back to the driver, the
worker-side cluster (what ``ctx.cluster`` and ``current_cluster()`` give an actor), the
``Supervisor`` service and its watchdog, serving the listener through the system's transport.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import trio

from .. import _rpc
from .._actor import cluster_var
from .._cluster import Cluster
from .._contract import POST_MORTEM_ENV, WorkerConfig
from . import _breakpoint
from ._capture import OutputCapture
from ._supervisor import Worker


async def serve_worker(
    config: WorkerConfig,
    listener: trio.abc.Listener[Any],
    *,
    transport: _rpc.Transport,
    exit: Callable[[int], None],
    run_sync: _rpc.RunSync = _rpc.run_in_thread,
    announce: Callable[[str], None] | None = None,
    capture_output: bool = False,
    process_title: bool = False,
    breakpoints: bool = False,
    task_status: trio.TaskStatus[Worker] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve a machine on ``listener`` until cancelled (never returns on its own).

    Builds the worker's way back to its driver (``_rpc.Link``), its cluster (set as
    ``cluster_var`` in this task, so actors' ``current_cluster()`` finds it; it dials other
    machines through ``transport``), and the :class:`Worker` with its ``Supervisor`` service
    and watchdog, then accepts connections on ``listener`` through ``transport``, each
    authenticated with ``config.key``. ``task_status.started(worker)`` once it accepts.

    The worker ends itself through ``exit(code)`` (a clean shutdown, an expired watchdog);
    ``announce(message)`` prints its last line (by default, to stdout after flushing stderr).
    With ``capture_output`` the worker captures its process's stdout and stderr (fds 1 and 2,
    until it is cancelled) and serves them to the driver over the connection
    (``Supervisor.output``; see ``_capture``): for a worker whose driver cannot read its
    output from a pipe, on another host, paired with ``Instance.output_over_channel`` on the
    driver's side. With ``process_title`` (a process of the machine's own, not a test's loop),
    ``ps`` shows the machine's address and actors (see ``bigactor._title``). With
    ``breakpoints``, ``breakpoint()`` opens pdb in the driver's terminal when the process's
    standard input is the driver's debug socket (see ``_breakpoint``). Sync methods run
    through ``run_sync``. ``config.sys_path``, ``argv`` and
    ``log_level`` concern the process and are the caller's to apply before the loop starts (see
    ``python -m bigactor.supervisor``). Cancelling it stops serving and closes every
    connection and actor of the machine.
    """
    async with trio.open_nursery() as nursery:
        output = None
        if capture_output:
            output = OutputCapture()
            await nursery.start(output.run)
        driver = _rpc.Link()
        cluster = Cluster(nursery, config.key, driver=driver, transport=transport)
        cluster_var.set(cluster)
        worker = Worker(
            config.addr,
            config.key,
            nursery,
            exit=exit,
            run_sync=run_sync,
            watchdog=config.watchdog,
            cluster=cluster,
            announce=announce,
            driver=driver,
            transport=transport,
            output=output,
            titled=process_title,
        )
        if breakpoints:
            channel = _breakpoint.install(worker.forgive_pause, over_connection=capture_output)
            if isinstance(channel, _breakpoint.ConnectionChannel):
                worker.debugger = channel
            if channel is not None and os.environ.get(POST_MORTEM_ENV) == "1":
                _rpc.set_post_mortem(_breakpoint.post_mortem)
        await nursery.start(worker.serve, listener)
        task_status.started(worker)
