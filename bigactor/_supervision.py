"""What the driver knows of each actor it spawned: where it runs, its parent, its restarts.

An actor is RUNNING on a machine, RESTARTING (its machine died and its restart policy allows
another go), STOPPED (``cluster.stop``, its parent stopped, or the cluster closed) or DEAD (its
machine died and no restart is left). Only RUNNING and RESTARTING change: the last two are final,
and ``error`` then says why, with every cause of death the actor went through.
"""

from __future__ import annotations

import enum
import itertools
import time
from typing import Any

import trio

from ._actor import ActorHandle
from ._errors import MachineLost
from ._machine import Machine
from ._options import SpawnOptions

_ids = itertools.count(1)


class Life(enum.Enum):
    RUNNING = "running"
    RESTARTING = "restarting"
    STOPPED = "stopped"
    DEAD = "dead"


class ActorRecord:
    """One spawned actor, across every machine it has lived on."""

    def __init__(
        self,
        cls: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: SpawnOptions,
        parent: str | None = None,
    ) -> None:
        self.id = f"a{next(_ids)}"
        self.options = options
        self.type_name = getattr(cls, "__qualname__", type(cls).__name__)
        # Kept only to rebuild the actor: without a restart policy, a large argument must not
        # stay alive in the driver as long as the actor.
        self.spawn_args: tuple[Any, tuple[Any, ...], dict[str, Any]] | None = (
            (cls, args, kwargs) if options.restart is not None else None
        )
        #: the id of the actor that spawned this one (it stops with its parent)
        self.parent = parent
        self.life = Life.RUNNING
        self.machine: Machine | None = None
        self.name = ""
        self.methods: dict[str, str] = {}
        #: (wall-clock time, cause) of each death, oldest first
        self.deaths: list[tuple[float, str]] = []
        self._deaths_at: list[float] = []  # trio.current_time() of each death
        self.error: MachineLost | None = None
        self.changed = trio.Event()
        #: set once the actor has ended and, if stopped, is gone from its machine
        self.done = trio.Event()

    @property
    def label(self) -> str:
        return f"actor {self.name or self.type_name!r}"

    @property
    def restarts(self) -> int:
        return len(self.deaths) if self.options.restart is not None else 0

    def placed(self, machine: Machine, name: str, methods: dict[str, str]) -> None:
        self.machine, self.name, self.methods = machine, name, dict(methods)
        self.life = Life.RUNNING
        self._changed()

    def handle(self) -> ActorHandle:
        assert self.machine is not None
        repeat = self.options.restart.repeat if self.options.restart is not None else None
        return ActorHandle(self.machine.addr, self.name, self.methods, self.machine, self.id, repeat)

    def entry(self) -> tuple[str, str, dict[str, str], str, frozenset[str] | None]:
        """What workers are told of a named actor (see ``Cluster.actor``)."""
        h = self.handle()
        return (h._addr, h._name, h._methods, self.id, h._repeat)

    def died(self, cause: str) -> bool:
        """Note a death of the actor's machine; return whether the policy allows a restart."""
        self.deaths.append((time.time(), cause))
        self._deaths_at.append(trio.current_time())
        policy = self.options.restart
        if policy is None:
            self.finish(Life.DEAD, cause)
            return False
        if self.recent_deaths() > policy.max_restarts:
            self.finish(Life.DEAD, cause)
            return False
        self.life = Life.RESTARTING
        self._changed()
        return True

    def recent_deaths(self) -> int:
        """Deaths within the restart policy's window, up to now (the backoff grows with them)."""
        policy = self.options.restart
        if policy is None:
            return len(self._deaths_at)
        now = trio.current_time()
        return sum(1 for t in self._deaths_at if t > now - policy.window)

    def finish(self, life: Life, cause: str) -> None:
        """End the actor for good: STOPPED or DEAD, with ``cause``."""
        if self.life in (Life.STOPPED, Life.DEAD):
            return
        self.life = life
        addr = self.machine.addr if self.machine is not None else ""
        policy = self.options.restart
        if life == Life.DEAD and policy is not None and self.deaths:
            history = "; ".join(f"{i}) {c}" for i, (_, c) in enumerate(self.deaths, 1))
            message = (
                f"{self.label} is lost: its machine died {len(self.deaths)} times and its restart "
                f"policy allows {policy.max_restarts} in {policy.window:g} s; causes: {history}"
            )
        elif life == Life.DEAD:
            message = f"{self.label} is lost: {cause}"
        else:
            message = f"{self.label} was stopped: {cause}"
        self.error = MachineLost(addr, message)
        self.error.causes = [c for _, c in self.deaths]  # type: ignore[attr-defined]
        self.spawn_args = None
        if life == Life.DEAD:
            self.done.set()
        self._changed()

    def lost(self) -> MachineLost:
        """A fresh exception for a caller of an actor that has ended."""
        assert self.error is not None
        exc = MachineLost(self.error.addr, self.error.message)
        exc.causes = list(getattr(self.error, "causes", []))  # type: ignore[attr-defined]
        return exc

    def _changed(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def describe(self) -> dict[str, Any]:
        """Plain data for ``cluster.status()``."""
        return {
            "id": self.id,
            "name": self.name,
            "type": self.type_name,
            "machine": self.machine.addr if self.machine is not None else None,
            "state": self.life.value,
            "restarts": self.restarts,
            "causes": [{"time": t, "cause": c} for t, c in self.deaths],
            "parent": self.parent,
            "error": str(self.error) if self.error is not None else None,
        }
