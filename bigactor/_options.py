"""Spawn options: where an actor goes and how it lives, apart from its constructor's arguments.

``cluster.options(name="x", restart=3).spawn(Cls, *args, **kwargs)``: the options never share
the constructor's namespace (as Ray's ``.options()``), so an actor whose ``__init__`` takes a
``name`` or a ``machine`` gets them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from ._actor import ActorHandle, Environ
from ._machine import backoff


def _repeat(value: Iterable[str]) -> frozenset[str]:
    if isinstance(value, str):
        return frozenset({value})
    return frozenset(value)


@attrs.frozen
class Restart:
    """A restart policy: rebuild the actor on a new machine when its machine dies.

    At most ``max_restarts`` restarts within any ``window`` seconds. The first restart in a
    window begins at once; the next ones wait 1 s, x1.5 each time, capped at 5 s (bigmachine's
    retry waits), so an actor that crashes as it starts does not spin. The actor is rebuilt
    with the same constructor arguments; its handles keep working.

    A call in flight when the machine dies raises MachineLost, unless its method is named in
    ``repeat``: those are re-sent to the new instance (name only methods safe to run twice).
    Calls made while the actor restarts wait for the new instance, bounded by the caller's
    own deadline. When the restarts run out, calls raise MachineLost carrying every cause.
    """

    max_restarts: int = 3
    window: float = 600.0
    repeat: frozenset[str] = attrs.field(default=frozenset(), converter=_repeat)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.max_restarts, int) or self.max_restarts < 0:
            raise ValueError(f"max_restarts must be an int >= 0, not {self.max_restarts!r}")
        if not self.window > 0:
            raise ValueError(f"window must be > 0 seconds, not {self.window!r}")

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before restart number ``attempt`` within the window (1-based): none
        for the first, then the machine's retry waits."""
        if attempt <= 1:
            return 0.0
        return float(next(itertools.islice(backoff(), attempt - 2, None)))


def _restart(value: Restart | int | None) -> Restart | None:
    if value is None or isinstance(value, Restart):
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"restart= takes a bigactor.Restart or an int, not {type(value).__name__}")
    return Restart(max_restarts=value)


def _env(value: Environ | Mapping[str, str] | Iterable[str] | None) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, Environ):
        return dict(value.env)
    return Environ(value).env


def _positive(name: str) -> Any:
    def check(_: Any, __: Any, value: float | None) -> None:
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be a positive number, not {value!r}")

    return check


@attrs.frozen(kw_only=True)
class SpawnOptions:
    """Everything ``cluster.options(...)`` takes (see :meth:`Cluster.options`)."""

    #: the actor's name in the cluster (``cluster.actor(name)`` finds it), unique
    name: str | None = None
    #: place it on this machine (a Machine, a handle of an actor to sit beside, or an address)
    machine: Any = None
    #: rebuild it on a new machine when its machine dies (a Restart, or a number of restarts)
    restart: Restart | None = attrs.field(default=None, converter=_restart)
    #: environment variables of the new machine started for it
    env: dict[str, str] = attrs.field(factory=dict, converter=_env)
    #: sync methods on this many threads, and at most this many async methods at once
    max_concurrency: int | None = None
    #: CPUs and bytes of memory it needs: placed on a machine with room, or on a new one
    cpus: float | None = attrs.field(default=None, validator=_positive("cpus"))
    memory: int | None = attrs.field(default=None, validator=_positive("memory"))
    #: outlive the actor that spawned it (children otherwise stop with their parent)
    detached: bool = False
    #: run its constructor and async methods on an asyncio loop of its own (else on Trio)
    asyncio: bool = False

    def __attrs_post_init__(self) -> None:
        if self.name is not None and (not isinstance(self.name, str) or not self.name):
            raise ValueError(f"name must be a non-empty str, not {self.name!r}")
        mc = self.max_concurrency
        if mc is not None and (isinstance(mc, bool) or not isinstance(mc, int) or mc < 1):
            raise ValueError(f"max_concurrency must be an int >= 1, not {mc!r}")
        if self.machine is not None and self.env:
            raise ValueError(
                "env= sets the environment of a new machine; it cannot apply to machine= "
                "(start the machine with cluster.start(1, Environ(...)) instead)"
            )

    def merge(self, **more: Any) -> SpawnOptions:
        """These options with ``more`` on top (unknown names are a TypeError)."""
        return attrs.evolve(self, **more)

    def for_wire(self) -> SpawnOptions:
        """The options as a machine sends them to the driver: ``machine`` as an address."""
        m = self.machine
        if m is None or isinstance(m, (str, ActorHandle)):
            return self  # a handle pickles to its address
        return attrs.evolve(self, machine=getattr(m, "addr", m))
