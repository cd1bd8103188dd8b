"""Cluster: the machines of one program, and the nursery that owns their lives.

The driver's cluster comes from :func:`bigactor.open_cluster`. Every worker has one too (dial
only, no system): it is what ``init(ctx)`` gets as ``ctx.cluster`` and what handles passed to
an actor call through.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from . import _codec, _rpc, _status
from ._actor import ActorHandle, Environ, Services, cluster_var
from ._console import Console
from ._contract import POST_MORTEM_ENV
from ._cpus import thread_defaults
from ._errors import BigActorError, ClusterClosed, MachineLost, ServiceNotFound
from ._machine import SHUTDOWN_GRACE, Machine, Notice, State
from ._options import SpawnOptions
from ._rpc import run_in_thread
from ._shared import Shared
from ._supervision import ActorRecord, Life
from ._system import KeepaliveConfig, System

T = TypeVar("T")

log = logging.getLogger("bigactor")
OUTPUT_GRACE = 2.0
STOPPED_KEPT = 100
#: how long ``locate`` waits for the driver to see a machine's end that a caller saw first
SETTLE = 2.0


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
        driver: _rpc.Link | None = None,
        transport: _rpc.Transport | None = None,
    ) -> None:
        self._nursery = nursery
        #: the driver's terminal for the machines' debugger sessions (``breakpoint()``)
        #: methods that raise open a post-mortem debugger session (``open_cluster(debug=True)``)
        self.post_mortem = False
        self.console = Console()
        self.console.bind(nursery)
        self._key = key
        self._system = system
        #: how this cluster dials machines: its system's transport on the driver, the one its
        #: worker serves through on a machine
        if transport is None:
            transport = system.transport if system is not None else _rpc.Transport()
        self._transport = transport
        self._keepalive = keepalive or (system.keepalive if system is not None else KeepaliveConfig())
        self._machines: dict[str, Machine] = {}
        #: the named actors: name -> what a handle needs (see ActorRecord.entry)
        self._names: dict[str, tuple[str, str, dict[str, str], str, frozenset[str] | None]] = {}
        #: names of actors being spawned (a second spawn with one of them is an error at once)
        self._naming: set[str] = set()
        self._closed = False
        #: values put in shared memory (``put``), released when the cluster closes
        self._shared: list[Shared[Any]] = []
        #: a worker's way to its driver (spawn, stop and locate go there); None on the driver
        self._driver = driver
        #: the driver's side: every actor it spawned, by id, and the ids on each machine
        self._records: dict[str, ActorRecord] = {}
        self._by_machine: dict[str, set[str]] = {}
        #: machines started for spawns (freed when their last actor stops), and those started
        #: for one actor alone (never chosen to place another)
        self._spawned: set[str] = set()
        self._dedicated: set[str] = set()
        #: CPUs and memory reserved by actors placed with cpus= / memory=, by machine
        self._usage: dict[str, tuple[float, int]] = {}
        #: what machines may call on the driver over the connections it opens to them
        self._serve: tuple[_rpc.ActorTable, _rpc.RunSync] | None = None
        if system is not None:
            table = _rpc.ActorTable("driver", nursery, run_in_thread)
            table.add("Driver", DriverService(self))
            self._serve = (table, run_in_thread)
        #: the last machines that stopped, kept for status() (with their errors)
        self._stopped: deque[Machine] = deque(maxlen=STOPPED_KEPT)
        #: where the debug pages are served (``open_cluster(debug_address=...)``), or None
        self.debug_url: str | None = None
        #: called with the machine and its notice each time a machine this cluster started gives
        #: notice that it will go away soon (``open_cluster(on_draining=...)``); see
        #: :meth:`_noticed`
        self.on_draining: Callable[[Machine, Notice], Awaitable[None] | None] | None = None
        # What the machines that stopped cost (they leave _stopped after a while): dollars, and
        # how many had a price and how many had none.
        self._cost_stopped = (0.0, 0, 0)

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
            if machine.owned:
                dollars, priced, unpriced = self._cost_stopped
                cost = machine.cost()
                if cost is None:
                    self._cost_stopped = (dollars, priced, unpriced + 1)
                else:
                    self._cost_stopped = (dollars + cost, priced + 1, unpriced)
        self._spawned.discard(machine.addr)
        self._dedicated.discard(machine.addr)
        self._machine_stopped(machine)

    async def start(self, n: int, *params: Services | Environ) -> list[Machine]:
        """Start up to ``n`` machines hosting the given services; return them at once.

        With no services, the machines are bare: spawn actors on them with
        ``cluster.options(machine=m).spawn(...)``, or let ``cpus=``/``memory=`` place actors
        there. The machines may still be STARTING: calls wait for RUNNING, or use
        ``await machine.wait(State.RUNNING)``. Every service is serialised before anything is
        started, so an unserialisable one raises CodecError here and starts nothing.
        Cancelling the caller may leave machines starting; the cluster still owns and stops
        them.
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
        return await self._start(n, services, env)

    async def _start(
        self,
        n: int,
        services: dict[str, Any],
        env: dict[str, str],
        spawned: bool = False,
        dedicated: bool = False,
    ) -> list[Machine]:
        self._check_open()
        if self._system is None:
            raise RuntimeError("this cluster has no system to start machines with (it is a worker's)")
        if n < 1:
            raise ValueError(f"cannot start {n} machines")
        blobs = {name: _codec.dumps(svc, f"service {name!r}") for name, svc in services.items()}
        env = {**thread_defaults(self._system.capacity()[0]), **env}
        if self.post_mortem:
            env = {POST_MORTEM_ENV: "1", **env}
        instances = await self._system.start(n, env)
        machines = []
        for inst in instances:
            m = Machine(
                inst.addr,
                self._key,
                self._nursery,
                transport=self._transport,
                owned=True,
                keepalive=self._keepalive,
                maxprocs=inst.maxprocs,
                hostname=inst.hostname,
                instance=inst,
                services=blobs,
                boot_timeout=self._system.boot_timeout,
                on_stop=self._forget,
                on_notice=self._noticed,
                names=lambda: self._names,
                serve=self._serve,
            )
            self._machines[m.addr] = m
            if spawned:
                self._spawned.add(m.addr)
            if dedicated:
                self._dedicated.add(m.addr)
            if inst.debug_stream is not None:
                self._nursery.start_soon(
                    self.console.serve_stream, m.addr, inst.debug_stream, m.pause, name=f"debugger {m.addr}"
                )
            elif inst.output_over_channel:  # another host's: its sessions come over the connection
                self._nursery.start_soon(self.console.serve_machine, m, name=f"debugger {m.addr}")
            self._nursery.start_soon(m._tail, name=f"tail {m.addr}")
            self._nursery.start_soon(m._run, name=f"machine {m.addr}")
            machines.append(m)
        return machines

    def _noticed(self, machine: Machine, notice: Notice) -> None:
        """Run ``on_draining`` for ``notice``: a coroutine function as a task of the cluster's
        nursery (it outlives the machine), anything else at once. What it raises ends the
        cluster, as an error of any of the cluster's tasks does."""
        callback = self.on_draining
        if callback is None:
            return
        if inspect.iscoroutinefunction(callback):
            self._nursery.start_soon(callback, machine, notice, name=f"on_draining {machine.addr}")
        else:
            callback(machine, notice)

    def cost(self) -> _status.Cost:
        """What the machines this cluster started cost so far (see :class:`~bigactor._status.Cost`):
        each one's price times the hours from its start to its stop, or to now."""
        dollars, priced, unpriced = self._cost_stopped
        for m in self._machines.values():
            if m.owned:
                cost = m.cost()
                if cost is None:
                    unpriced += 1
                else:
                    dollars, priced = dollars + cost, priced + 1
        return _status.Cost(dollars, priced, unpriced)

    async def put(self, value: T) -> Shared[T]:
        """Put ``value`` once in this host's shared memory; pass the :class:`~bigactor.Shared`
        to any call or spawn on this host, where it arrives as the value itself, mapped rather
        than copied (a numpy array stays writable, copy-on-write). Ray's ``ray.put``.

        A 100 MB model given to four actors on this host is then stored once, not four times.
        The memory is held until ``shared.release()`` or the cluster closes, and freed by the
        kernel whatever ends the processes. Machines on other hosts cannot read it: pass them
        the value. Encoding runs in a thread; it raises CodecError as an argument would.
        """
        if self._closed:
            raise ClusterClosed("the cluster is closed")
        shared: Shared[T] = await trio.to_thread.run_sync(Shared.put, value)
        # Those released already need no closing: a cluster that puts and releases for hours
        # keeps only the live ones.
        self._shared = [s for s in self._shared if not s.released]
        self._shared.append(shared)
        return shared

    def options(self, **options: Any) -> Spawner:
        """Spawn options, apart from the constructor's arguments (as Ray's ``.options()``)::

            h = await cluster.options(name="x", restart=3, cpus=1).spawn(Cls, *args, **kwargs)

        ``name``: the actor's name in the cluster (``cluster.actor(name)`` finds it; unique).
        ``machine``: put it on this machine (a Machine, or a handle of an actor to sit beside).
        ``restart``: a :class:`Restart` policy (or a number of restarts): when its machine dies,
        rebuild it on a new one; its handles keep working. ``env``: environment variables of
        the new machine started for it (an :class:`Environ` or a dict). ``max_concurrency``:
        its sync methods run on that many threads, and at most that many async methods run at
        once. ``cpus`` / ``memory`` (bytes): what it needs; it goes on a machine with room, or
        a new one. ``detached``: it outlives the actor that spawned it. ``asyncio``: its
        constructor and async methods run on an asyncio loop of its own, for methods that use
        asyncio libraries (they run on Trio otherwise).
        Unknown or invalid options raise here, before anything starts.
        """
        return Spawner(self, SpawnOptions(**options))

    async def spawn(self, cls: type[Any], *args: Any, **kwargs: Any) -> ActorHandle:
        """Construct ``cls(*args, **kwargs)`` on a new machine and return a handle to it.

        Every argument goes to the constructor; spawn options go through
        :meth:`options`. Raises MachineStartError / MachineLost if the machine fails, and the
        constructor's exception (as a RemoteError) if it raises; either way the machine
        started for it is stopped. On a machine (an actor spawning actors), the request goes
        to the driver, which owns every machine; the child stops with its parent's machine.
        """
        legacy = {k: kwargs.pop(k) for k in ("machine", "name") if k in kwargs}
        if legacy:
            warnings.warn(
                f"cluster.spawn(..., {', '.join(f'{k}=' for k in legacy)}) is deprecated: these "
                "keywords belong to the constructor; use cluster.options("
                f"{', '.join(f'{k}=...' for k in legacy)}).spawn(cls, *args, **kwargs)",
                DeprecationWarning,
                stacklevel=2,
            )
        return await self._spawn(SpawnOptions(**legacy), cls, args, kwargs)

    async def _spawn(
        self,
        options: SpawnOptions,
        cls: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        parent: str | None = None,
    ) -> ActorHandle:
        self._check_open()
        if self._system is None:
            if self._driver is None:
                raise RuntimeError("this cluster has no system to start machines with")
            handle: ActorHandle = await self._driver.call(
                "Driver.spawn", options.for_wire(), cls, args, kwargs, _rpc.current_actor.get(None)
            )
            return handle
        name = options.name
        if name is not None and (name in self._names or name in self._naming):
            raise ValueError(f"an actor named {name!r} already exists in this cluster")
        _codec.dumps((cls, args, kwargs), f"spawn of {getattr(cls, '__name__', cls)!r}")
        record = ActorRecord(cls, args, kwargs, options, parent)
        if name is not None:
            self._naming.add(name)  # taken while it is being spawned
        try:
            await self._build(record, options, cls, args, kwargs)
        finally:
            self._naming.discard(name)
        self._records[record.id] = record
        if name is not None:
            self._names[name] = record.entry()
            await self._publish_names()
        return record.handle()

    async def _build(
        self,
        record: ActorRecord,
        options: SpawnOptions,
        cls: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        """Place the actor on a machine (starting one if need be) and construct it there. A
        failed or cancelled build stops the machine it started and frees what it reserved."""
        machine, started = await self._place(options)
        placed = False
        try:
            if await machine.wait(State.RUNNING) != State.RUNNING:
                raise machine._lost()
            name, methods = await machine.call(
                "Supervisor.spawn", options.name, cls, args, kwargs, options.max_concurrency, options.asyncio
            )
            record.placed(machine, name, methods)
            self._by_machine.setdefault(machine.addr, set()).add(record.id)
            placed = True
        finally:
            if not placed:
                self._release(machine.addr, options)
                if started:
                    with trio.CancelScope(shield=True):
                        await machine.shutdown()

    async def _place(self, options: SpawnOptions) -> tuple[Machine, bool]:
        """The machine for a new actor, and whether it was started for it; reserves its room."""
        assert self._system is not None
        cpus, memory = options.cpus or 0.0, options.memory or 0
        where = options.machine
        if where is not None:
            machine = self._machine_at(where)
            self._reserve(machine.addr, cpus, memory)
            return machine, False
        if options.cpus is None and options.memory is None:
            [machine] = await self._start(1, {}, options.env, spawned=True, dedicated=True)
            return machine, True
        most_cpus, most_memory = self._system.capacity()
        if cpus > most_cpus or (most_memory is not None and memory > most_memory):
            have = f"{most_cpus} CPUs" + (f" and {most_memory} bytes" if most_memory is not None else "")
            raise ValueError(
                f"no machine can ever hold an actor asking for cpus={options.cpus}, "
                f"memory={options.memory}: a machine of the {self._system.name} system has {have}"
            )
        if not options.env:
            for m in self.machines():
                if (
                    m.owned
                    and m.state < State.STOPPED
                    and m.addr not in self._dedicated
                    and self._fits(m, cpus, memory)
                ):
                    self._reserve(m.addr, cpus, memory)
                    return m, False
        [machine] = await self._start(1, {}, options.env, spawned=True)
        self._reserve(machine.addr, cpus, memory)
        return machine, True

    def _record_at(self, addr: str, name: str | None) -> str | None:
        """The id of the actor this cluster spawned as ``name`` on machine ``addr``, if any;
        without a name (a service of cluster.start), the machine's one actor, if alone."""
        ids = self._by_machine.get(addr, set())
        found = [i for i in ids if name is None or self._records[i].name == name]
        return found[0] if len(found) == 1 else None

    def _machine_at(self, where: Any) -> Machine:
        if isinstance(where, ActorHandle):
            return self.machine_for(where._addr)
        if isinstance(where, Machine):
            return where
        machine = self._machines.get(str(where))
        if machine is None:
            raise LookupError(f"no machine {where!r} in this cluster")
        return machine

    def _fits(self, m: Machine, cpus: float, memory: int) -> bool:
        used_cpus, used_memory = self._usage.get(m.addr, (0.0, 0))
        if used_cpus + cpus > m.maxprocs + 1e-9:
            return False
        return m.memory is None or used_memory + memory <= m.memory

    def _reserve(self, addr: str, cpus: float, memory: int) -> None:
        used_cpus, used_memory = self._usage.get(addr, (0.0, 0))
        self._usage[addr] = (used_cpus + cpus, used_memory + memory)

    def _release(self, addr: str, options: SpawnOptions) -> None:
        if addr in self._usage:
            self._reserve(addr, -(options.cpus or 0.0), -(options.memory or 0))

    async def stop(self, handle: ActorHandle, grace: float = SHUTDOWN_GRACE) -> None:
        """Stop one actor (Ray's ``ray.kill``): run its ``shutdown()`` hook, if it has one
        (``async def shutdown(self)``), for at most ``grace`` seconds, then drop it; free its
        machine if it was alone on a machine started for it. The actors it spawned stop too
        (unless spawned detached). Its handles then raise MachineLost. Stopping an actor that
        already stopped does nothing.
        """
        self._check_open()
        if self._system is None:
            if self._driver is None:
                raise RuntimeError("this cluster has no driver to stop actors through")
            await self._driver.call("Driver.stop", handle, grace)
            return
        record = self._records.get(handle._id or "")
        if record is None:
            raise LookupError(f"{handle!r} is not an actor this cluster spawned")
        await self._stop_record(record, grace, "cluster.stop()")

    async def _stop_record(self, record: ActorRecord, grace: float, cause: str) -> None:
        """Stop one actor and, first, the actors it spawned; return once all of them are gone
        (its machine shut down if it was alone on one started for it)."""
        if record.life in (Life.STOPPED, Life.DEAD):
            await record.done.wait()
            return
        machine = record.machine
        record.finish(Life.STOPPED, cause)
        try:
            await self._stop_children(record, f"its parent {record.label} was stopped")
            if record.options.name is not None:
                self._names.pop(record.options.name, None)
            if machine is None:
                return
            self._by_machine.get(machine.addr, set()).discard(record.id)
            self._release(machine.addr, record.options)
            left = 0
            if machine.state < State.STOPPED:
                try:
                    with trio.move_on_after(grace + self._keepalive.rpc_timeout):
                        left = await machine.call("Supervisor.stop_actor", record.name, grace)
                except BigActorError as exc:
                    log.debug("%s: stopping %s: %s", machine.addr, record.label, exc)
            if left == 0 and machine.addr in self._spawned and machine.state < State.STOPPED:
                await machine.shutdown()
        finally:
            record.done.set()

    async def _stop_children(self, parent: ActorRecord, cause: str) -> None:
        """Stop the actors ``parent`` spawned (not detached), and wait until they are gone."""
        async with trio.open_nursery() as nursery:
            for child in self._children(parent):
                nursery.start_soon(self._stop_record, child, SHUTDOWN_GRACE, cause)

    def _children(self, parent: ActorRecord) -> list[ActorRecord]:
        """The actors ``parent`` spawned, not detached, and not yet gone."""
        return [
            r
            for r in self._records.values()
            if r.parent == parent.id and not r.options.detached and not r.done.is_set()
        ]

    def _machine_stopped(self, machine: Machine) -> None:
        """A machine stopped: its actors restart, or end; the actors they spawned stop (a
        restarted actor's children included: they were its old instance's)."""
        if self._closed:
            return
        cause = machine.error.message if machine.error is not None else "its machine stopped"
        for rid in self._by_machine.pop(machine.addr, set()):
            record = self._records[rid]
            if record.life != Life.RUNNING:
                continue
            if record.died(f"machine {machine.addr}: {cause}"):
                log.warning("%s: restarting %s (%d of %d)", machine.addr, record.label,
                            record.restarts, record.options.restart.max_restarts)  # type: ignore[union-attr]  # fmt: skip
                self._nursery.start_soon(self._restart, record, name=f"restart {record.label}")
            elif record.options.name is not None:
                self._names.pop(record.options.name, None)
            self._nursery.start_soon(
                self._stop_children, record, f"the machine of its parent {record.label} stopped: {cause}"
            )
        self._usage.pop(machine.addr, None)

    async def _restart(self, record: ActorRecord) -> None:
        policy = record.options.restart
        assert policy is not None
        while record.life == Life.RESTARTING and not self._closed:
            await trio.sleep(policy.backoff(max(1, record.recent_deaths())))
            if record.spawn_args is None:
                return
            cls, args, kwargs = record.spawn_args
            options = record.options.merge(machine=None, name=record.name)
            try:
                await self._build(record, options, cls, args, kwargs)
            except Exception as exc:
                log.warning("restarting %s failed: %s", record.label, exc)
                record.died(f"restart failed: {type(exc).__name__}: {exc}")
                continue
            if record.options.name is not None:
                self._names[record.options.name] = record.entry()
                await self._publish_names()
            return

    async def locate(self, actor_id: str, stale: str) -> tuple[str, str]:
        """Where a restartable actor runs now, asked by a caller that lost it on machine
        ``stale``: its machine's address and its name there. Waits while it restarts; if the
        driver still sees it on ``stale``, waits up to SETTLE seconds for the driver to see
        that machine's end too, then answers ``stale`` (it did not move). MachineLost once
        the actor has ended, with every cause."""
        if self._system is None:
            if self._driver is None:
                raise MachineLost(stale, "this cluster cannot locate restarted actors")
            where: tuple[str, str] = await self._driver.call("Driver.locate", actor_id, stale)
            return where
        record = self._records.get(actor_id)
        if record is None:
            raise MachineLost(stale, f"no actor {actor_id!r} in this cluster")
        settle = trio.current_time() + SETTLE
        while True:
            if record.life in (Life.STOPPED, Life.DEAD):
                raise record.lost()
            m = record.machine
            if record.life == Life.RUNNING and m is not None:
                if m.addr != stale or trio.current_time() >= settle:
                    return m.addr, record.name
                with trio.move_on_at(settle):
                    await record.changed.wait()
            else:
                await record.changed.wait()

    def ended(self, actor_id: str) -> MachineLost | None:
        """Why the actor ``actor_id`` ended (a fresh MachineLost), if this cluster spawned it
        and it has ended; else None."""
        record = self._records.get(actor_id)
        if record is None or record.life not in (Life.STOPPED, Life.DEAD):
            return None
        return record.lost()

    def actors(self) -> list[dict[str, Any]]:
        """Every actor this cluster spawned, as plain data: id, name, type, machine, state
        (running, restarting, stopped, dead), restart count and each cause of death."""
        return [r.describe() for r in self._records.values()]

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
        """Return a handle to the actor spawned with ``options(name=name)`` (also from an
        actor, through its machine's cluster); ServiceNotFound if there is none."""
        entry = self._names.get(name)
        if entry is None:
            known = ", ".join(sorted(self._names)) or "none"
            raise ServiceNotFound(
                "", name, f"no actor named {name!r} in this cluster (named actors: {known})"
            )
        addr, actor_name, methods, actor_id, repeat = entry
        return ActorHandle(addr, actor_name, methods, self.machine_for(addr), actor_id, repeat)

    def machine_for(self, addr: str) -> Machine:
        """The machine at ``addr``: a known one, or a new dialed one (not yet pinged). A
        machine this cluster started and saw stop is returned as it is (calls on it raise
        MachineLost with its cause), never dialed again."""
        self._check_open()
        m = self._machines.get(addr)
        if m is None:
            m = next((s for s in self._stopped if s.addr == addr and s.owned), None)
        if m is None:
            m = Machine(
                addr,
                self._key,
                self._nursery,
                transport=self._transport,
                owned=False,
                keepalive=self._keepalive,
                on_stop=self._forget,
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
        are listed too, with their errors. See ``bigactor._status``. Each entry's ``lives``
        has, for every actor the cluster spawned there, its state, restart count and every
        cause of death (as :meth:`actors` gives them)."""
        entries = await _status.status([*self._stopped, *self.machines()])
        lives: dict[str, list[dict[str, Any]]] = {}
        for record in self._records.values():
            if record.machine is not None:
                lives.setdefault(record.machine.addr, []).append(record.describe())
        for entry in entries:
            entry["lives"] = lives.get(entry["addr"], [])
        return entries

    async def profile(
        self, seconds: float, machine: str | None = None, kind: str = "sampled"
    ) -> _status.Profile:
        """A CPU profile taken on every running machine (or only ``machine``) at once for
        ``seconds``, merged. An address the cluster does not know is a LookupError.

        ``kind="sampled"`` (the default) samples every thread's stack 200 times a second and
        keeps what was using the CPU: sync methods on their actors' threads show by name, idle
        waiting does not. ``kind="cprofile"`` profiles the Trio thread (async methods) with
        ``cProfile`` instead: exact call counts, but it slows that thread while it runs; the
        flame graph (``collapsed_text``) stays sampled. Cancelling stops it on every machine.
        """
        if kind not in ("sampled", "cprofile"):
            raise ValueError(f"no profile kind {kind!r}: use 'sampled' or 'cprofile'")
        return await _status.profile(_status.select(self.machines(), machine), seconds, kind)

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
            for record in self._records.values():
                record.finish(Life.STOPPED, "the cluster closed")
            # Nothing lost: what the machines printed reaches stderr before the cluster ends.
            with trio.move_on_after(OUTPUT_GRACE):
                for m in all_machines:
                    await m.output.drained()
            for shared in self._shared:
                shared.release()


def current_cluster() -> Cluster:
    """The cluster of the code running now: inside ``open_cluster``, the driver's; in an actor,
    its machine's (spawn, stop and ``actor(name)`` there go through the driver).

    Raises RuntimeError outside both.
    """
    try:
        cluster = cluster_var.get()
    except LookupError:
        raise RuntimeError("no bigactor cluster here: call this inside open_cluster or in an actor") from None
    assert isinstance(cluster, Cluster)
    return cluster


class Spawner:
    """Spawn options waiting for their class: ``cluster.options(...).spawn(cls, ...)``."""

    def __init__(self, cluster: Cluster, options: SpawnOptions) -> None:
        self._cluster = cluster
        self._options = options

    def options(self, **more: Any) -> Spawner:
        """These options with ``more`` on top."""
        return Spawner(self._cluster, self._options.merge(**more))

    async def spawn(self, cls: type[Any], *args: Any, **kwargs: Any) -> ActorHandle:
        """Construct ``cls(*args, **kwargs)`` with these options; see :meth:`Cluster.spawn`."""
        return await self._cluster._spawn(self._options, cls, args, kwargs)

    def __repr__(self) -> str:
        return f"<Spawner {self._options}>"


class DriverService:
    """What a driver's machines may ask of it, over the connections it opened to them."""

    def __init__(self, cluster: Cluster) -> None:
        self._cluster = cluster

    async def spawn(
        self,
        options: SpawnOptions,
        cls: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        parent: str | None = None,
    ) -> ActorHandle:
        """Spawn for an actor (``parent``: its name on the calling machine): the driver starts
        and owns the child; it stops with its parent."""
        return await self._cluster._spawn(
            options,
            cls,
            args,
            kwargs,
            parent=self._cluster._record_at(_rpc.current_connection.get().addr, parent),
        )

    async def stop(self, handle: ActorHandle, grace: float) -> None:
        await self._cluster.stop(handle, grace)

    async def locate(self, actor_id: str, stale: str) -> tuple[str, str]:
        return await self._cluster.locate(actor_id, stale)
