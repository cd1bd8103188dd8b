"""Values the supervisor reports about its machine (frozen, picklable)."""

from __future__ import annotations

import attrs


@attrs.frozen
class Info:
    """What a machine runs: versions, platform, code digest, process and start time."""

    python: str
    bigactor: str
    pickler: str  # the by-value pickler and its version, e.g. "cloudpickle 3.1.2"
    platform: str
    digest: str
    pid: int
    hostname: str
    started: float  # wall-clock time (time.time()) the worker process started


@attrs.frozen
class MemInfo:
    """Memory of the machine (psutil.virtual_memory) and of the worker process."""

    total: int
    available: int
    used: int
    percent: float
    rss: int


@attrs.frozen
class DiskInfo:
    """Usage of the filesystem holding the machine's temporary directory."""

    path: str
    total: int
    used: int
    free: int
    percent: float


@attrs.frozen
class LoadInfo:
    """Load averages over 1, 5 and 15 minutes."""

    load1: float
    load5: float
    load15: float


@attrs.frozen
class KeepaliveReply:
    """The worker's answer to a keepalive: seconds until it would exit, and its health."""

    next: float
    healthy: bool
