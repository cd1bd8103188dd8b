"""Systems: the backends that start machines.

* ``local`` (:class:`LocalSystem`, the default): worker processes on this host.
* ``test`` (:class:`bigactor.testing.TestSystem`): in-process machines for tests.
* ``ec2`` (:class:`bigactor.systems.ec2.EC2System`, also ``bigactor.systems.EC2``): EC2
  instances, one machine each. Importing ``bigactor`` imports none of it (nor boto3).
* Third-party systems register a :class:`System` subclass under the entry-point group
  ``bigactor.systems``; ``BIGACTOR_SYSTEM=name`` or ``open_cluster("name")`` picks one.

Every system is found the same way, through that entry-point group: bigactor registers its own
two there too (in its package metadata), so choosing ``test`` imports the testing package and
nothing here does. Each option of a system's constructor may also come from the environment,
as ``BIGACTOR_<SYSTEM>_<OPTION>`` (``BIGACTOR_LOCAL_FORKSERVER=no``); a keyword wins. A system
owns its :class:`Transport`: how its machines are reached.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

from .._rpc import Transport
from .._system import Instance, KeepaliveConfig, System
from .local import LocalSystem

__all__ = ["Instance", "KeepaliveConfig", "LocalSystem", "System", "Transport", "lookup"]

GROUP = "bigactor.systems"


def __getattr__(name: str) -> Any:
    # ``bigactor.systems.EC2``: the EC2 system, imported on first use only, so that importing
    # bigactor never imports the EC2 package (its boto3 is imported later still, at its first call).
    if name == "EC2":
        from .ec2 import EC2System

        return EC2System
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def lookup(name: str, **options: Any) -> System:
    """Build the system registered as ``name`` (entry-point group ``bigactor.systems``) with
    ``options``; ValueError naming the known systems if there is none.

    Without package metadata (bigactor run from a source tree, not installed), ``local`` is
    still found.
    """
    for ep in importlib.metadata.entry_points(group=GROUP, name=name):
        cls = ep.load()
        if not (isinstance(cls, type) and issubclass(cls, System)):
            raise TypeError(f"entry point {ep.name!r} of {GROUP} names {ep.value}, not a System subclass")
        system: System = cls(**options)
        return system
    if name == "local":
        return LocalSystem(**options)
    known = sorted({"local", *(ep.name for ep in importlib.metadata.entry_points(group=GROUP))})
    raise ValueError(f"unknown bigactor system {name!r} (known: {', '.join(known)})")
