"""Actor handles and the parameters of ``Cluster.start``.

An :class:`ActorHandle` stands for one actor on one machine. Its methods are awaitable
(``await handle.add(5)``), and generator methods stream (``async for x in handle.numbers(10)``).
A handle pickles to its address, actor name and method table, so it can be passed to another
actor: calling it there dials the machine from that worker (machine-to-machine calls).
"""

from __future__ import annotations

import contextvars
import warnings
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from . import _codec
from ._errors import CallNotSent, MachineLost, TransportError
from ._rpc._server import ASYNC_GEN, SYNC_GEN

if TYPE_CHECKING:
    from ._machine import Machine
    from ._stream import RemoteStream


class _Dialer(Protocol):
    def machine_for(self, addr: str) -> Machine: ...
    async def locate(self, actor_id: str, stale: str) -> tuple[str, str]: ...
    def ended(self, actor_id: str) -> MachineLost | None: ...


_STOPPED = 3  # State.STOPPED (the machine module imports this one)


cluster_var: contextvars.ContextVar[_Dialer] = contextvars.ContextVar("bigactor_cluster")


class Services:
    """Services to host on each started machine: ``Services(name=instance, ...)``.

    Each instance is serialised (cloudpickle) and sent, so every machine gets its own copy. Several
    ``Services`` may be passed to ``Cluster.start``; for a repeated name the later one wins.
    """

    def __init__(self, **services: Any) -> None:
        self.services = dict(services)

    def __repr__(self) -> str:
        return f"Services({', '.join(self.services)})"


class Environ:
    """Environment variables for the machines: ``Environ({"K": "V"})`` or ``Environ(["K=V"])``.

    Later definitions override earlier ones (also across several ``Environ`` params).
    """

    def __init__(self, env: Mapping[str, str] | Iterable[str]) -> None:
        if isinstance(env, Mapping):
            self.env = {str(k): str(v) for k, v in env.items()}
        else:
            self.env = {}
            for item in env:
                key, sep, value = item.partition("=")
                if not sep or not key:
                    raise ValueError(f"Environ entry {item!r} is not of the form KEY=VALUE")
                self.env[key] = value

    def __repr__(self) -> str:
        return f"Environ({self.env!r})"


class ActorHandle:
    """A reference to an actor; call its methods as if it were local.

    Built by ``Cluster.spawn`` and ``Cluster.actor``; there is no public constructor. Its only
    public attributes are the actor's methods, so an actor method called ``name`` or
    ``machine`` is called like any other; ask :func:`name_of` and :func:`machine_of` for the
    actor's name and machine. A handle of an actor spawned with a restart policy follows the
    actor to each new machine.
    """

    __slots__ = ("_addr", "_bound", "_id", "_machine", "_methods", "_name", "_repeat")

    def __init__(
        self,
        addr: str,
        name: str,
        methods: Mapping[str, str],
        machine: Machine | None = None,
        actor_id: str | None = None,
        repeat: frozenset[str] | None = None,
    ) -> None:
        self._addr = addr
        self._name = name
        self._methods = dict(methods)
        self._machine = machine
        #: the cluster's id of the actor (None for a service of ``cluster.start``)
        self._id = actor_id
        #: for an actor with a restart policy, the methods it says are safe to re-send after a
        #: death (None: the actor is never restarted, and its handle stays on its machine)
        self._repeat = repeat
        self._bound: dict[str, Any] = {}

    def _resolve(self) -> Machine:
        """The machine the handle last knew the actor on (dialed on first use elsewhere)."""
        if self._machine is None:
            self._machine = _cluster_here(self._name, self._addr).machine_for(self._addr)
        return self._machine

    async def _current(self) -> Machine:
        """The machine the actor runs on now: for a restartable actor whose machine stopped,
        wait for its new one (bounded by the caller's deadline)."""
        machine = self._resolve()
        if self._repeat is not None and machine.state == _STOPPED:
            await self._relocate(machine)
            return self._resolve()
        return machine

    async def _relocate(self, machine: Machine) -> bool:
        """Ask the cluster where the actor went from ``machine``; whether it has moved. The
        actor's end (restarts run out, or stopped) raises MachineLost with its causes."""
        assert self._id is not None
        addr, name = await _cluster_here(self._name, self._addr).locate(self._id, machine.addr)
        if addr == machine.addr:
            return False
        self._addr, self._name, self._machine = addr, name, None
        return True

    def _ended(self) -> MachineLost | None:
        """Why the actor ended, where the cluster knows (the driver's: stopped, its parent
        stopped, its machine died), as a fresh MachineLost; else None."""
        cluster = cluster_var.get(None)
        return cluster.ended(self._id) if cluster is not None and self._id is not None else None

    def __repr__(self) -> str:
        return f"<ActorHandle {self._name} on {self._addr}>"

    def __reduce__(self) -> tuple[Any, ...]:
        return (ActorHandle, (self._addr, self._name, self._methods, None, self._id, self._repeat))

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self._methods))

    def __getattr__(self, method: str) -> Any:
        if method.startswith("_"):
            raise AttributeError(method)
        bound = self._bound.get(method)
        if bound is None:
            if method not in self._methods and method in _DEPRECATED:
                warnings.warn(
                    f"handle.{method} is deprecated (an actor method of that name would be "
                    f"hidden by it): use bigactor.{method}_of(handle)",
                    DeprecationWarning,
                    stacklevel=2,
                )
                return name_of(self) if method == "name" else machine_of(self)
            bound = self._bound[method] = self._bind(method)
        return bound

    def _bind(self, method: str) -> Any:
        kind = self._methods.get(method)
        if kind is None:
            raise AttributeError(
                f"actor {self._name!r} has no public method {method!r} "
                f"(it has: {', '.join(sorted(self._methods)) or 'none'})"
            )
        if kind in (SYNC_GEN, ASYNC_GEN):

            def stream(*args: Any, **kwargs: Any) -> RemoteStream:
                return self._resolve().stream(f"{self._name}.{method}", *args, **kwargs)

            stream.__name__ = method
            return stream

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self._repeat is None:
                target = f"{self._name}.{method}"
                try:
                    # Machine.call's body without its coroutine: one object fewer per call in
                    # flight, for the garbage collector to walk.
                    return await self._resolve()._invoke(_codec.encode_call(target, args, kwargs), target)
                except MachineLost as exc:
                    ended = self._ended()
                    if ended is None:
                        raise
                    raise ended from exc
            while True:
                machine = await self._current()
                try:
                    return await machine.call(f"{self._name}.{method}", *args, **kwargs)
                except (MachineLost, TransportError) as exc:
                    # A call in flight at the death may have run: it fails at once, unless
                    # the policy names its method as safe to repeat. One that never left
                    # waits for the new instance.
                    if not isinstance(exc, CallNotSent) and method not in self._repeat:
                        raise
                    if not await self._relocate(machine):
                        raise

        call.__name__ = method
        return call


_DEPRECATED = frozenset({"name", "machine"})


def _cluster_here(name: str, addr: str) -> Any:
    try:
        return cluster_var.get()
    except LookupError:
        raise RuntimeError(
            f"actor {name!r} on {addr}: no bigactor cluster is open here to call it through"
        ) from None


def name_of(handle: ActorHandle) -> str:
    """The actor's name on its machine (the ``name`` it was spawned with, if any)."""
    return handle._name


def machine_of(handle: ActorHandle) -> Machine:
    """The machine hosting the actor now (dialed on first use where the handle was unpickled)."""
    return handle._resolve()
