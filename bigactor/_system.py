"""The System protocol: what a backend (local processes, in-process test machines, EC2, ...)
provides to the cluster.

A system starts machines and hands back one :class:`Instance` per machine: its address and what
the system can observe of it from outside (its process exit, its output). Everything else (the
connection, keepalives, services) is the cluster's and is the same on every system.

A system owns its :class:`~bigactor._rpc.Transport` (``system.transport``): how the driver's
connections reach its machines (plain ``unix:``/``tcp:`` streams by default; the test system's
in-memory streams; mutual TLS). Each keyword option of a system's constructor may also come
from the environment as ``BIGACTOR_<SYSTEM>_<OPTION>`` (see ``_settings``).

Systems register under the entry-point group ``bigactor.systems`` (bigactor's own ``local`` and
``test`` too) and are chosen by name (``BIGACTOR_SYSTEM=name`` or ``open_cluster("name")``).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import ClassVar

import attrs
import trio

from ._rpc import Transport
from ._settings import SettingsMeta


@attrs.frozen
class KeepaliveConfig:
    """How the driver keeps a machine alive (bigmachine's per-system keepalive, spec §2.3).

    A keepalive goes out every ``period / 2`` seconds; each attempt may take ``rpc_timeout``
    seconds; failed attempts are retried (backoff 1 s, x1.5, capped at 5 s) for ``timeout``
    seconds, then the machine is declared lost.
    """

    period: float = 60.0
    timeout: float = 120.0
    rpc_timeout: float = 10.0
    #: how long each keepalive asks the worker to live without the next one (bigmachine asks
    #: 5 min): how long a worker outlives a driver that died. A system whose machines cost
    #: while they run (EC2) keeps it within ``timeout``.
    unattended: float = 300.0


class Instance(abc.ABC):
    """One machine as its system sees it."""

    addr: str
    maxprocs: int = 1
    #: bytes of memory the machine has, where the system can say (for ``cpus=``/``memory=``)
    memory: int | None = None
    hostname: str = "localhost"
    #: whether ``wait_exit`` reports the machine's end (then a broken connection waits briefly
    #: for that report before it is called a transport error)
    observes_exit: bool = False
    #: what the machine costs, in US dollars per hour, where the system can say (None:
    #: unknown); the cluster's cost is the sum of price x hours each machine ran
    price_per_hour: float | None = None
    #: whether the machine's output comes over its authenticated connection (the worker captures
    #: its own stdout and stderr, see ``Supervisor.output``) rather than through ``tail``: for
    #: machines whose process the driver cannot see (another host)
    output_over_channel: bool = False
    #: where the machine's debugger sessions (``breakpoint()`` in an actor) reach the driver:
    #: a stream of the messages of ``supervisor._breakpoint`` (None: the machine has none)
    debug_stream: trio.abc.Stream | None = None

    def details(self) -> dict[str, str]:
        """What the system knows of the machine, for status and debug pages (instance id, type,
        market, zone, ...): short labels to short texts, in the order to show; empty by default."""
        return {}

    def ended(self) -> bool:
        """Whether the machine's process is known to have ended already (without waiting)."""
        return False

    async def wait_exit(self) -> str:
        """Return once the machine's process has ended, describing how; by default, never."""
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def tail(self, line: Callable[[str], None]) -> None:  # noqa: B027 - optional
        """Call ``line`` with each line the machine prints, until its output ends (by default,
        a system that cannot see output returns at once)."""

    def kill(self) -> None:  # noqa: B027 - optional for systems that cannot kill
        """End the machine now, without grace."""


class System(metaclass=SettingsMeta):
    """A backend that starts machines; see the module docstring.

    Subclasses are attrs classes (``@attrs.define(kw_only=True)``) whose public fields are
    their options: each may be given to the constructor or set as ``BIGACTOR_<NAME>_<OPTION>``
    in the environment (the keyword wins).
    """

    name: ClassVar[str]
    keepalive: KeepaliveConfig
    key: bytes
    #: how the driver's connections reach this system's machines (shared by all of them; the
    #: plain transport by default). A system whose workers speak another way sets its own, and
    #: gives the same kind to its workers' ``serve_worker``.
    transport: Transport = Transport()
    #: seconds a machine may take from start to answering its first call
    boot_timeout: float = 60.0

    def capacity(self) -> tuple[int, int | None]:
        """The CPUs (``maxprocs``) and bytes of memory (None: unknown) of a machine this system
        starts: a spawn asking for more can never be placed."""
        return (1, None)

    @abc.abstractmethod
    async def setup(self, nursery: trio.Nursery, key: bytes) -> None:
        """Prepare to start machines; background tasks go in ``nursery`` (the cluster's)."""

    @abc.abstractmethod
    async def start(self, n: int, env: dict[str, str]) -> list[Instance]:
        """Start up to ``n`` machines with ``env`` added to their environment."""

    async def aclose(self) -> None:
        """Release everything the system holds; every machine it started is gone after this."""
