"""The contract between driver and worker: what a worker is started with, and the values it reports.

The lowest layer beside the errors: the driver's machines (``_machine``), the worker
(``supervisor``) and every system (``systems``) speak this vocabulary, and it imports nothing of
theirs.

* :class:`WorkerConfig`: what a worker needs to serve (the cluster key, its own address, the
  driver's ``sys.path`` and ``sys.argv``, its watchdog, its log level, and what its system adds in
  ``extra``). A system sends it as one line of JSON (:meth:`WorkerConfig.to_json`); the worker
  reads it back with :meth:`WorkerConfig.from_json`, which names the field that is wrong.
* :class:`WatchdogConfig`: when an unattended worker exits.
* What the ``Supervisor`` service answers: :class:`Info`, :class:`MemInfo`, :class:`DiskInfo`,
  :class:`LoadInfo`, :class:`KeepaliveReply`; and :data:`SYNC_MARKER`, the last line a worker
  prints when it shuts down cleanly.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import attrs

T = TypeVar("T")

#: the line a worker prints last on a clean shutdown: its output has all reached the driver
SYNC_MARKER = "========// bigactor done //========"


@attrs.frozen
class WatchdogConfig:
    """When an unattended worker exits: checked every ``tick`` s; ``boot_grace`` s before the
    first keepalive arrives. At each tick the worker also checks its host's memory: above
    ``unhealthy_memory_percent`` it reports itself unhealthy in its keepalive replies."""

    tick: float = 30.0
    boot_grace: float = 120.0
    unhealthy_memory_percent: float = 95.0


def _str_tuple(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(items)


@attrs.frozen
class WorkerConfig:
    """What a worker is started with: everything it needs before its first connection.

    Attributes:
        key: the cluster key every connection authenticates with (never in argv or the
            environment: a system sends it over a private channel).
        addr: the worker's own address, as the driver dials it (``unix:/path``, ``tcp:host:port``,
            or a scheme of the system's transport).
        sys_path: the ``sys.path`` the worker runs with (the driver's, made absolute); empty
            leaves the worker's own.
        argv: the ``sys.argv`` the worker runs with (the driver's: flag propagation).
        watchdog: when the worker exits for want of keepalives.
        log_level: the ``logging`` level configured in the worker.
        extra: what the worker's system needs besides (strings by name; bigactor reads none).
    """

    key: bytes
    addr: str
    sys_path: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    argv: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    watchdog: WatchdogConfig = attrs.field(factory=WatchdogConfig)
    log_level: int = logging.WARNING
    extra: dict[str, str] = attrs.field(factory=dict, hash=False)

    def to_json(self) -> bytes:
        """This configuration as JSON (one line: no newline inside, none at the end)."""
        return json.dumps(
            {
                "key": self.key.hex(),
                "addr": self.addr,
                "sys_path": list(self.sys_path),
                "argv": list(self.argv),
                "watchdog": attrs.asdict(self.watchdog),
                "log_level": self.log_level,
                "extra": dict(self.extra),
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> WorkerConfig:
        """Read a configuration written by :meth:`to_json`.

        Raises ValueError naming the field that is missing, unknown or of the wrong type (the
        key's value is never quoted).
        """
        try:
            raw = json.loads(data)
        except ValueError as exc:
            raise ValueError(f"worker configuration: not JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise ValueError(f"worker configuration: expected a JSON object, got {type(raw).__name__}")
        unknown = sorted(set(raw) - {f.name for f in attrs.fields(cls)})
        if unknown:
            raise ValueError(f"worker configuration: unknown field {unknown[0]!r}")
        return cls(
            key=_field(raw, "key", _hex_key, required=True),
            addr=_field(raw, "addr", _address, required=True),
            sys_path=_field(raw, "sys_path", _strings, ()),
            argv=_field(raw, "argv", _strings, ()),
            watchdog=_field(raw, "watchdog", _watchdog, WatchdogConfig()),
            log_level=_field(raw, "log_level", _integer, logging.WARNING),
            extra=_field(raw, "extra", _string_map, {}),
        )


def _field(
    raw: dict[str, Any], name: str, parse: Callable[[Any], T], default: Any = None, required: bool = False
) -> T:
    """``raw[name]`` through ``parse``; ValueError naming ``name`` if it is missing or wrong."""
    if name not in raw:
        if required:
            raise ValueError(f"worker configuration: field {name!r} is missing")
        result: T = default
        return result
    try:
        return parse(raw[name])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"worker configuration: field {name!r}: {exc}") from None


def _hex_key(value: Any) -> bytes:
    if not isinstance(value, str):
        raise TypeError(f"expected a hex string, got {type(value).__name__}")
    try:
        key = bytes.fromhex(value)
    except ValueError:
        raise ValueError("expected a hex string") from None  # never echo a key
    if not key:
        raise ValueError("the cluster key is empty")
    return key


def _address(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    if ":" not in value:
        raise ValueError(f"expected an address scheme:rest, got {value!r}")
    return value


def _strings(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise TypeError(f"expected a list of strings, got {type(value).__name__}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise TypeError(f"item {i}: expected a string, got {type(item).__name__}")
    return tuple(value)


def _integer(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


def _string_map(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise TypeError(f"expected an object of strings, got {type(value).__name__}")
    for k, v in value.items():
        if not isinstance(v, str):
            raise TypeError(f"{k!r}: expected a string, got {type(v).__name__}")
    return dict(value)


def _watchdog(value: Any) -> WatchdogConfig:
    if not isinstance(value, dict):
        raise TypeError(f"expected an object, got {type(value).__name__}")
    known = {f.name for f in attrs.fields(WatchdogConfig)}
    for k, v in value.items():
        if k not in known:
            raise ValueError(f"unknown field {k!r}")
        if not isinstance(v, int | float) or isinstance(v, bool):
            raise TypeError(f"{k!r}: expected a number, got {type(v).__name__}")
    return WatchdogConfig(**{k: float(v) for k, v in value.items()})


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


def worker_log_level(configured: int | None) -> int:
    """The ``logging`` level a machine's worker configures: the system's ``log_level`` when it
    was set, else the driver's root logger's level when the machine starts (so an actor's
    ``log.info`` shows wherever the driver's would)."""
    return configured if configured is not None else logging.getLogger().getEffectiveLevel()


#: set to "1" in a machine's environment by ``open_cluster(debug=True)``: a method that raises
#: opens a post-mortem debugger session in the driver's terminal before its caller hears of it
POST_MORTEM_ENV = "BIGACTOR_POST_MORTEM"
