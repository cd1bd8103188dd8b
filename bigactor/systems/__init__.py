"""Systems: the backends that start machines.

* ``local`` (:class:`LocalSystem`, the default): worker processes on this host.
* ``test`` (:class:`bigactor.testing.TestSystem`): in-process machines for tests.
* Third-party systems register a :class:`System` subclass under the entry-point group
  ``bigactor.systems``; ``BIGACTOR_SYSTEM=name`` or ``open_cluster("name")`` picks one.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

from .._system import Instance, KeepaliveConfig, System
from .local import LocalSystem

__all__ = ["Instance", "KeepaliveConfig", "LocalSystem", "System", "lookup"]


def lookup(name: str, **options: Any) -> System:
    """Build the system called ``name`` with ``options``; ValueError naming the known ones."""
    if name == "local":
        return LocalSystem(**options)
    if name == "test":
        from ..testing import TestSystem

        return TestSystem(**options)
    found = importlib.metadata.entry_points(group="bigactor.systems", name=name)
    for ep in found:
        cls = ep.load()
        system: System = cls(**options)
        return system
    others = sorted(ep.name for ep in importlib.metadata.entry_points(group="bigactor.systems"))
    known = ["local", "test", *others]
    raise ValueError(f"unknown bigactor system {name!r} (known: {', '.join(known)})")
