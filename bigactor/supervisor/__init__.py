"""The supervisor: the service every machine runs, and the worker process around it.

A machine is a process running ``python -m bigactor.supervisor`` (or, in the test system, the
same code inside the driver's process). It hosts the ``Supervisor`` service — ping, info,
keepalive, register, spawn, setenv/setargs, getpid, mem/disk/load info, shutdown — next to the
user's actors, and a watchdog that ends the worker once the driver's keepalives stop: a worker
never outlives its driver for long. The driver talks to it only through ``bigactor.Machine``.

Every system serves its machines with :func:`serve_worker`, given the worker's
:class:`WorkerConfig` (the contract between driver and worker, defined in ``bigactor._contract`` with the
values the supervisor reports, and re-exported here), a listener and the system's transport.
"""

from .._contract import (
    SYNC_MARKER,
    DiskInfo,
    Info,
    KeepaliveReply,
    LoadInfo,
    MemInfo,
    WatchdogConfig,
    WorkerConfig,
)
from .._rpc import run_in_thread
from ._serve import serve_worker
from ._supervisor import Context, Supervisor, Worker

__all__ = [
    "SYNC_MARKER",
    "Context",
    "DiskInfo",
    "Info",
    "KeepaliveReply",
    "LoadInfo",
    "MemInfo",
    "Supervisor",
    "WatchdogConfig",
    "Worker",
    "WorkerConfig",
    "run_in_thread",
    "serve_worker",
]
