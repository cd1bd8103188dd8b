"""Actor handles and the parameters of ``Cluster.start``.

An :class:`ActorHandle` stands for one actor on one machine. Its methods are awaitable
(``await handle.add(5)``), and generator methods stream (``async for x in handle.numbers(10)``).
A handle pickles to its address, actor name and method table, so it can be passed to another
actor: calling it there dials the machine from that worker (machine-to-machine calls).
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from ._rpc._server import ASYNC_GEN, SYNC_GEN

if TYPE_CHECKING:
    from ._machine import Machine, RemoteStream


class _Dialer(Protocol):
    def machine_for(self, addr: str) -> Machine: ...


current_cluster: contextvars.ContextVar[_Dialer] = contextvars.ContextVar("bigactor_cluster")


class Services:
    """Services to host on each started machine: ``Services(name=instance, ...)``.

    Each instance is serialised (dill) and sent, so every machine gets its own copy. Several
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
    """A reference to an actor on a machine; call its methods as if it were local.

    Built by ``Cluster.spawn`` and ``Cluster.actor``; there is no public constructor.
    """

    __slots__ = ("_addr", "_bound", "_machine", "_methods", "_name")

    def __init__(
        self, addr: str, name: str, methods: Mapping[str, str], machine: Machine | None = None
    ) -> None:
        self._addr = addr
        self._name = name
        self._methods = dict(methods)
        self._machine = machine
        self._bound: dict[str, Any] = {}

    @property
    def name(self) -> str:
        """The actor's name on its machine."""
        return self._name

    @property
    def machine(self) -> Machine:
        """The machine hosting the actor (dialed on first use where the handle was unpickled)."""
        if self._machine is None:
            try:
                cluster = current_cluster.get()
            except LookupError:
                raise RuntimeError(
                    f"actor {self._name!r} on {self._addr}: no bigactor cluster is "
                    "open here to call it through"
                ) from None
            self._machine = cluster.machine_for(self._addr)
        return self._machine

    def __repr__(self) -> str:
        return f"<ActorHandle {self._name} on {self._addr}>"

    def __reduce__(self) -> tuple[Any, ...]:
        return (ActorHandle, (self._addr, self._name, self._methods))

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self._methods))

    def __getattr__(self, method: str) -> Any:
        if method.startswith("_"):
            raise AttributeError(method)
        bound = self._bound.get(method)
        if bound is None:
            bound = self._bound[method] = self._bind(method)
        return bound

    def _bind(self, method: str) -> Any:
        kind = self._methods.get(method)
        if kind is None:
            raise AttributeError(
                f"actor {self._name!r} has no public method {method!r} "
                f"(it has: {', '.join(sorted(self._methods)) or 'none'})"
            )
        target = f"{self._name}.{method}"
        if kind in (SYNC_GEN, ASYNC_GEN):

            def stream(*args: Any, **kwargs: Any) -> RemoteStream:
                return self.machine.stream(target, *args, **kwargs)

            stream.__name__ = method
            return stream

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await self.machine.call(target, *args, **kwargs)

        call.__name__ = method
        return call
