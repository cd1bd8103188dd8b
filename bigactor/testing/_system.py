"""The test system: machines inside the driver's own process, for fast deterministic tests.

Each machine is a real supervisor (``serve_worker``, as on every system) serving real websocket
connections over in-memory streams, so every call, reply and service is still serialised and
authenticated; only the process and the socket are simulated. The streams come from the
system's own transport (:class:`TestTransport`, ``test:`` addresses): two test systems in one
process never reach each other's machines. Everything runs on the test's Trio loop, so
``autojump_clock`` makes keepalive, retry and timeout logic run in virtual time. Sync actor
methods run inline on the loop (not in a thread) for the same reason.
"""

from __future__ import annotations

import itertools
import math
import random
from functools import partial
from typing import Any

import attrs
import trio
import trio.testing

from .. import _rpc
from .._contract import WatchdogConfig, WorkerConfig
from .._machine import Machine
from .._system import Instance, KeepaliveConfig, System
from ..supervisor import Worker, serve_worker
from ._streams import stream_pair

_system_ids = itertools.count(1)


async def run_inline(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run sync work directly on the loop (keeps virtual time deterministic)."""
    return fn(*args, **kwargs)


class _Listener(trio.abc.Listener[trio.abc.Stream]):
    def __init__(self) -> None:
        self.send, self.receive = trio.open_memory_channel[trio.abc.Stream](math.inf)

    async def accept(self) -> trio.abc.Stream:
        return await self.receive.receive()

    async def aclose(self) -> None:
        self.receive.close()


class _TestMachine(Instance):
    def __init__(self, addr: str, env: dict[str, str]) -> None:
        self.addr = addr
        self.maxprocs = 1
        self.hostname = "localhost"
        self.env = env
        self.scope = trio.CancelScope()
        self.listener = _Listener()
        self.worker: Worker | None = None
        self.alive = True
        self.hang_keepalives = False
        self.given_details: dict[str, str] = {}

    def details(self) -> dict[str, str]:
        return dict(self.given_details)

    async def open(self) -> trio.abc.Stream:
        if not self.alive:
            raise OSError(f"connection refused: test machine {self.addr} was killed")
        client, server = stream_pair()
        self.listener.send.send_nowait(server)
        return client

    def kill(self) -> None:
        self.alive = False
        self.scope.cancel()


class TestTransport(_rpc.Transport):
    """The test system's transport: ``test:`` addresses are its own machines, reached over
    in-memory streams; ``unix:`` and ``tcp:`` as the plain transport.

    Each :class:`TestSystem` owns one, and only its machines answer on it: a ``test:`` address
    of another test system is refused like a machine that is gone.
    """

    __test__ = False  # not a pytest test class

    schemes = ("test", *_rpc.Transport.schemes)

    def __init__(self) -> None:
        self.machines: dict[str, _TestMachine] = {}

    async def open(self, addr: str) -> trio.abc.Stream:
        if not addr.startswith("test:"):
            return await super().open(addr)
        m = self.machines.get(addr)
        if m is None:
            raise OSError(f"connection refused: no test machine {addr} on this test system")
        return await m.open()


@attrs.define(kw_only=True)
class TestSystem(System):
    """In-process machines for tests (see the module docstring).

    Args:
        keepalive: keepalive config of the machines (bigmachine's test defaults).
        watchdog: the machines' watchdog; an expired watchdog kills the machine.
        maxprocs: what ``machine.maxprocs`` reports (the CPUs ``cpus=`` places by).
        memory: what ``machine.memory`` reports, in bytes (None: unknown).
        price_per_hour: each machine's price in dollars per hour (None: unknown), for
            ``cluster.cost()``.
        details: what each machine's system says of it (``machine.details``, status pages).

    Each option may also be set in the environment as ``BIGACTOR_TEST_<OPTION>``
    (``BIGACTOR_TEST_MAXPROCS=4``); a keyword wins. ``transport`` is the system's own
    :class:`TestTransport`; ``exited`` says whether a machine ended itself (a clean shutdown or
    an expired watchdog).
    """

    __test__ = False  # not a pytest test class

    name = "test"
    keepalive: KeepaliveConfig = KeepaliveConfig(period=60.0, timeout=120.0, rpc_timeout=10.0)
    watchdog: WatchdogConfig = attrs.field(factory=WatchdogConfig)
    maxprocs: int = 1
    memory: int | None = None
    price_per_hour: float | None = None
    details: dict[str, str] = attrs.field(factory=dict)
    boot_timeout: float = 60.0
    key: bytes = attrs.field(default=b"", init=False)
    transport: TestTransport = attrs.field(factory=TestTransport, init=False)
    exited: bool = attrs.field(default=False, init=False)
    _id: int = attrs.field(factory=lambda: next(_system_ids), init=False)
    _count: int = attrs.field(default=0, init=False)
    _nursery: trio.Nursery | None = attrs.field(default=None, init=False)
    _all: list[_TestMachine] = attrs.field(factory=list, init=False)

    async def setup(self, nursery: trio.Nursery, key: bytes) -> None:
        self.key = key
        self._nursery = nursery

    def capacity(self) -> tuple[int, int | None]:
        return (self.maxprocs, self.memory)

    async def start(self, n: int, env: dict[str, str]) -> list[Instance]:
        assert self._nursery is not None, "TestSystem.setup was not called"
        out: list[Instance] = []
        for _ in range(n):
            self._count += 1
            m = _TestMachine(f"test:{self._id}-{self._count}", env)
            m.maxprocs = self.maxprocs
            m.memory = self.memory
            m.price_per_hour = self.price_per_hour
            m.given_details = dict(self.details)
            self.transport.machines[m.addr] = m
            self._all.append(m)
            await self._nursery.start(self._serve, m)
            out.append(m)
        return out

    async def _serve(self, m: _TestMachine, *, task_status: trio.TaskStatus[None]) -> None:
        def exit(code: int) -> None:
            self.exited = True
            m.kill()

        config = WorkerConfig(key=self.key, addr=m.addr, watchdog=self.watchdog)
        try:
            with m.scope:
                async with trio.open_nursery() as nursery:
                    m.worker = await nursery.start(
                        partial(
                            serve_worker,
                            config,
                            m.listener,
                            transport=self.transport,
                            exit=exit,
                            run_sync=run_inline,
                            announce=lambda message: None,
                        )
                    )
                    # Nothing has dialed the machine yet: its first keepalive sees the hook.
                    supervisor = m.worker.table.actors["Supervisor"].instance
                    keepalive = supervisor.keepalive

                    async def maybe_hung_keepalive(next: float) -> Any:
                        if m.hang_keepalives:
                            await trio.sleep_forever()
                        return await keepalive(next)

                    supervisor.keepalive = maybe_hung_keepalive
                    task_status.started()
        finally:
            m.alive = False
            self.transport.machines.pop(m.addr, None)

    # -- test hooks ---------------------------------------------------------------------------

    def n(self) -> int:
        """How many machines are alive."""
        return sum(1 for m in self._all if m.alive)

    def live(self) -> list[str]:
        """Addresses of the machines that are alive."""
        return [m.addr for m in self._all if m.alive]

    def kill(self, machine: Machine | str | None = None) -> bool:
        """Kill a machine (a random live one if None): its server stops answering at once.

        Like a network failure, the driver is not told: calls fail with TransportError, and the
        keepalive declares the machine lost later. Returns whether a live machine was killed.
        """
        live = [m for m in self._all if m.alive]
        if machine is not None:
            addr = machine if isinstance(machine, str) else machine.addr
            live = [m for m in live if m.addr == addr]
        if not live:
            return False
        random.choice(live).kill()
        return True

    def notice(self, machine: Machine | str, kind: str, message: str) -> None:
        """Make the machine's worker give notice that it will go away soon (``Worker.notice``),
        as a spot instance's does when it is about to be reclaimed."""
        addr = machine if isinstance(machine, str) else machine.addr
        m = next(m for m in self._all if m.addr == addr)
        assert m.worker is not None, f"test machine {addr} is not serving"
        m.worker.notice(kind, message)

    def hang_keepalives(self, machine: Machine | str, hang: bool = True) -> None:
        """Make the machine's keepalive calls hang (or answer again) without killing it."""
        addr = machine if isinstance(machine, str) else machine.addr
        for m in self._all:
            if m.addr == addr:
                m.hang_keepalives = hang

    def environ(self, machine: Machine | str) -> dict[str, str]:
        """The environment the machine was started with (``Environ`` params)."""
        addr = machine if isinstance(machine, str) else machine.addr
        return next(m.env for m in self._all if m.addr == addr)

    async def aclose(self) -> None:
        for m in self._all:
            m.kill()
