"""The supervisor: the service every machine runs, and the worker process around it.

A machine is a process running ``python -m bigactor.supervisor`` (or, in the test system, the
same code inside the driver's process). It hosts the ``Supervisor`` service — ping, info,
keepalive, register, spawn, setenv/setargs, getpid, mem/disk/load info, shutdown — next to the
user's actors, and a watchdog that ends the worker once the driver's keepalives stop: a worker
never outlives its driver for long. The driver talks to it only through ``bigactor.Machine``.
"""

from ._info import DiskInfo, Info, KeepaliveReply, LoadInfo, MemInfo
from ._supervisor import SYNC_MARKER, Context, Supervisor, WatchdogConfig, Worker, run_in_thread

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
    "run_in_thread",
]
