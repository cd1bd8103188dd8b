"""Cluster: the machines of one program, and the nursery that owns their lives.

The driver's cluster comes from :func:`bigactor.open_cluster`. Every worker has one too (dial
only, no system): it is what ``init(ctx)`` gets as ``ctx.cluster`` and what handles passed to
an actor call through.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

import trio

from . import _codec, _status
from ._actor import ActorHandle, Environ, Services
from ._errors import ClusterClosed, MachineLost, ServiceNotFound
from ._machine import Machine, State
from ._system import KeepaliveConfig, System

log = logging.getLogger("bigactor")
OUTPUT_GRACE = 2.0
STOPPED_KEPT = 100


class Cluster:
    """The machines of a program; start, spawn on and dial them.

    There is no public constructor: use ``open_cluster`` (the driver) or ``ctx.cluster`` (an
    actor's ``init``).
    """

    def __init__(
        self,
        nursery: trio.Nursery,
        key: bytes,
        system: System | None = None,
        keepalive: KeepaliveConfig | None = None,
    ) -> None:
        self._nursery = nursery
        self._key = key
        self._system = system
        self._keepalive = keepalive or (system.keepalive if system is not None else KeepaliveConfig())
        self._machines: dict[str, Machine] = {}
        self._names: dict[str, tuple[str, dict[str, str]]] = {}
        self._closed = False
        #: the last machines that stopped, kept for status() (with their errors)
        self._stopped: deque[Machine] = deque(maxlen=STOPPED_KEPT)
        #: where the debug pages are served (``open_cluster(debug_address=...)``), or None
        self.debug_url: str | None = None

    @property
    def system(self) -> System | None:
        """The system that starts this cluster's machines (None on a worker)."""
        return self._system

    def machines(self) -> list[Machine]:
        """A snapshot of the machines this cluster knows (started and dialed, not yet stopped)."""
        return list(self._machines.values())

    def _check_open(self) -> None:
        if self._closed:
            raise ClusterClosed("the cluster is closed")

    def _forget(self, machine: Machine) -> None:
        if self._machines.get(machine.addr) is machine:
            del self._machines[machine.addr]
            self._stopped.append(machine)

    async def start(self, n: int, *params: Services | Environ) -> list[Machine]:
        """Start up to ``n`` machines hosting the given services; return them at once.

        The machines may still be STARTING: calls wait for RUNNING, or use
        ``await machine.wait(State.RUNNING)``. Every service is serialised before anything is
        started, so an unserialisable one raises CodecError here and starts nothing; so does
        passing no service at all (ValueError). Cancelling the caller may leave machines
        starting; the cluster still owns and stops them.
        """
        services: dict[str, Any] = {}
        env: dict[str, str] = {}
        for p in params:
            if isinstance(p, Services):
                services.update(p.services)
            elif isinstance(p, Environ):
                env.update(p.env)
            else:
                raise TypeError(f"cluster.start takes Services and Environ params, not {type(p).__name__}")
        if not services:
            raise ValueError("cluster.start needs at least one service: pass Services(name=instance)")
        return await self._start(n, services, env)

    async def _start(self, n: int, services: dict[str, Any], env: dict[str, str]) -> list[Machine]:
        self._check_open()
        if self._system is None:
            raise RuntimeError("this cluster has no system to start machines with (it is a worker's)")
        if n < 1:
            raise ValueError(f"cannot start {n} machines")
        blobs = {name: _codec.dumps(svc, f"service {name!r}") for name, svc in services.items()}
        instances = await self._system.start(n, env)
        machines = []
        for inst in instances:
            m = Machine(
                inst.addr,
                self._key,
                self._nursery,
                owned=True,
                keepalive=self._keepalive,
                maxprocs=inst.maxprocs,
                hostname=inst.hostname,
                instance=inst,
                services=blobs,
                boot_timeout=self._system.boot_timeout,
                on_stop=self._forget,
                names=lambda: self._names,
            )
            self._machines[m.addr] = m
            self._nursery.start_soon(m._tail, name=f"tail {m.addr}")
            self._nursery.start_soon(m._run, name=f"machine {m.addr}")
            machines.append(m)
        return machines

    async def spawn(
        self,
        cls: type[Any],
        *args: Any,
        machine: Machine | None = None,
        name: str | None = None,
        **kwargs: Any,
    ) -> ActorHandle:
        """Construct ``cls(*args, **kwargs)`` on a machine and return a handle to it.

        Without ``machine`` a new machine is started for the actor. ``name`` names the actor
        so that ``cluster.actor(name)`` finds it (names are unique per cluster). Raises
        MachineStartError / MachineLost if the machine fails, and the constructor's exception
        (as a RemoteError) if it raises.
        """
        self._check_open()
        if name is not None and name in self._names:
            raise ValueError(f"an actor named {name!r} already exists in this cluster")
        payload_check = (cls, args, kwargs)
        _codec.dumps(payload_check, f"spawn of {getattr(cls, '__name__', cls)!r}")
        if machine is None:
            [machine] = await self._start(1, {}, {})
        if await machine.wait(State.RUNNING) != State.RUNNING:
            raise machine._lost()
        actor_name, methods = await machine.call("Supervisor.spawn", name, cls, args, kwargs)
        if name is not None:
            self._names[name] = (machine.addr, methods)
            await self._publish_names()
        return ActorHandle(machine.addr, actor_name, methods, machine)

    async def _publish_names(self) -> None:
        """Tell every running machine the named actors, so their clusters find them too."""

        async def push(m: Machine) -> None:
            try:
                with trio.move_on_after(self._keepalive.rpc_timeout):
                    await m.call("Supervisor.set_names", self._names)
            except Exception as exc:
                log.debug("%s: could not publish actor names: %s", m.addr, exc)

        async with trio.open_nursery() as nursery:
            for m in self.machines():
                if m.state == State.RUNNING:
                    nursery.start_soon(push, m)

    async def actor(self, name: str) -> ActorHandle:
        """Return a handle to the actor spawned with ``name=name`` (ServiceNotFound if none)."""
        entry = self._names.get(name)
        if entry is None:
            raise ServiceNotFound("", name, "no actor of that name in this cluster")
        addr, methods = entry
        return ActorHandle(addr, name, methods, self.machine_for(addr))

    def machine_for(self, addr: str) -> Machine:
        """The machine at ``addr``: a known one, or a new dialed one (not yet pinged)."""
        self._check_open()
        m = self._machines.get(addr)
        if m is None:
            m = Machine(
                addr, self._key, self._nursery, owned=False, keepalive=self._keepalive, on_stop=self._forget
            )
            self._machines[addr] = m
            self._nursery.start_soon(m._run, name=f"dialed machine {addr}")
        return m

    async def dial(self, addr: str) -> Machine:
        """Return the machine at ``addr``, connected and pinged; it is not kept alive.

        Raises MachineLost if it cannot be reached. Cancelling the caller stops the wait only.
        """
        m = self.machine_for(addr)
        if await m.wait(State.RUNNING) != State.RUNNING:
            raise m._lost()
        return m

    async def status(self) -> list[dict[str, Any]]:
        """Every machine's state and what it reports (uptime, memory, disk, load, actors,
        per-method counters), as plain data sorted by address; the last machines that stopped
        are listed too, with their errors. See ``bigactor._status``."""
        return await _status.status([*self._stopped, *self.machines()])

    async def profile(self, seconds: float, machine: str | None = None) -> _status.Profile:
        """A CPU profile taken on every running machine (or only ``machine``) at once for
        ``seconds``, merged. An address the cluster does not know is a LookupError."""
        return await _status.profile(_status.select(self.machines(), machine), seconds)

    async def stacks(self) -> dict[str, str]:
        """Every running machine's threads and Trio task tree, as text, by address."""
        return await _status.stacks(_status.select(self.machines(), None))

    async def aclose(self) -> None:
        """Shut every owned machine down (flushing its output), then stop dialed ones.

        Idempotent; shielded from cancellation; bounded by the machines' shutdown grace.
        """
        if self._closed:
            return
        self._closed = True
        all_machines = list(self._machines.values())
        with trio.CancelScope(shield=True):
            async with trio.open_nursery() as nursery:
                for m in list(self._machines.values()):
                    if m.owned:
                        nursery.start_soon(m.shutdown)
            for m in list(self._machines.values()):
                m._fail(MachineLost(m.addr, "cluster closed"), logging.DEBUG)
            # Nothing lost: what the machines printed reaches stderr before the cluster ends.
            with trio.move_on_after(OUTPUT_GRACE):
                for m in all_machines:
                    await m.output.drained()
