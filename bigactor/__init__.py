"""bigactor turns one Python program into a cluster.

Computing model
    The program you run is the *driver*. It opens a cluster on a *system* (worker processes on
    this host by default; in-process machines for tests; third-party systems by name), starts
    *machines* on it, and places *actors* on them: plain Python objects whose methods it then
    calls as if they were local. Machines never run your ``__main__``: classes and functions
    defined there travel by value (cloudpickle, through the C pickler) and keep their identity,
    so what a worker returns or raises is an instance of your own class (``isinstance``,
    ``==``, ``except MyError:``, enum members by ``is``). Locks, threads, open files,
    generators and database connections are refused before anything is sent, naming where
    in the value they were. The driver's ``sys.path``, working directory and
    ``sys.argv`` are the workers' too.

Example::

    import trio, bigactor

    class Counter:
        def __init__(self, start=0):
            self.n = start
        async def add(self, k):
            self.n += k
            return self.n

    async def main():
        async with bigactor.open_cluster() as cluster:
            counter = await cluster.spawn(Counter, 10)   # a new machine hosting Counter(10)
            print(await counter.add(5))                  # 15

    trio.run(main)

Lifecycle
    ``open_cluster`` owns a nursery in which every machine's life runs: boot, then keepalives.
    A machine moves through ``State.UNSTARTED < STARTING < RUNNING < STOPPED`` and never back.
    Leaving the ``async with`` shuts every machine down, flushes its output and leaves no
    process behind, whether the body returned, raised or was cancelled. A worker whose driver
    dies (even by SIGKILL) exits at once.

Actors
    ``cluster.spawn(cls, *args, **kwargs)`` gives every argument to the constructor; how the
    actor lives comes from ``cluster.options(name=, machine=, restart=, env=,
    max_concurrency=, cpus=, memory=, detached=).spawn(...)``. A handle's only attributes are
    the actor's methods (``name_of(handle)``, ``machine_of(handle)`` say where it is). An actor
    spawns actors through ``current_cluster()``: the driver starts and owns their machines,
    and they stop with their parent's machine unless detached. ``cluster.stop(handle)`` runs
    the actor's ``shutdown()`` hook and frees its machine. With ``restart=Restart(...)``, an
    actor whose machine dies is rebuilt on a new one and its handles follow it.
    ``gather``, ``as_completed`` and ``ActorPool`` run many calls and keep each result with
    its call. ``await cluster.put(value)`` stores a large value once in this host's shared
    memory; the :class:`Shared` it returns arrives as the value in calls and spawns on this
    host (mapped, not copied), as Ray's ``ray.put``.

Calls
    ``await handle.method(...)`` and ``await machine.call("service.method", ...)`` run the
    method on its machine. Async methods run concurrently on the machine's Trio loop; sync
    methods run one at a time per actor on the actor's own thread (where it was also
    constructed), in the order each caller sent them (``max_concurrency=N``: on N threads);
    generator methods stream (``async for x in handle.numbers(10)``). Cancelling the caller
    cancels the remote method: a sync method gets :class:`MethodCancelled` in its thread at
    its next bytecode (``cancelled()`` lets it look).
    Time limits are the caller's: ``with trio.fail_after(5)``.

Failure model
    Every failure is visible and names its cause. An exception raised remotely is re-raised in
    the caller as its own type and as :class:`RemoteError`, with the remote traceback as a note.
    When a machine stops (process exit, keepalive lapse, ``cancel()``) every pending and new
    call on it raises :class:`MachineLost` at once, and ``machine.error`` says why. A broken
    connection to a live machine raises :class:`TransportError` (the call may have run), or its
    subclass :class:`CallNotSent` when the call never left (safe to re-send); ``retry_call``
    re-sends the latter with backoff, and the former only for ``@bigactor.idempotent`` methods.
    An argument that cannot be serialised raises :class:`CodecError` in the caller, naming the
    culprit, before anything is sent. An exception leaving ``open_cluster`` leaves as itself
    when it is the only error; remote tracebacks show your frames (``BIGACTOR_TRACEBACK=full``
    shows bigactor's and trio's too); Ctrl-C under ``run`` ends the program with one line and
    status 130, every worker gone.

One program
    Every line a worker prints reaches the driver's stderr prefixed with its address; the
    driver's ``sys.argv`` and ``Environ`` are the workers'. ``cluster.status()``,
    ``cluster.profile(seconds)`` (merged over all machines) and ``cluster.stacks()`` show the
    cluster as one program, and ``open_cluster(debug_address=...)`` serves the same over HTTP
    (``python -m bigactor status|profile|stacks URL`` reads it from a terminal).

Security
    Every connection is authenticated with a per-cluster key before anything it carries is
    deserialised; local workers listen on Unix sockets only the driver's user can reach.
"""

from __future__ import annotations

import contextlib
import importlib
from typing import TYPE_CHECKING, Any

from ._actor import ActorHandle, Environ, Services, machine_of, name_of
from ._cluster import Cluster, Spawner, current_cluster
from ._contract import DiskInfo, Info, LoadInfo, MemInfo
from ._errors import (
    BigActorError,
    BigActorInternalError,
    CallNotSent,
    ClusterClosed,
    CodecError,
    MachineError,
    MachineLost,
    MachineStartError,
    ProtocolError,
    RemoteError,
    ServiceNotFound,
    TransportError,
)
from ._gather import ActorPool, as_completed, gather
from ._machine import Machine, Notice, State
from ._options import Restart, SpawnOptions
from ._rpc import MethodCancelled, Transport, cancelled, idempotent
from ._shared import Shared
from ._stream import RemoteStream
from ._system import Instance, KeepaliveConfig, System
from ._version import __version__
from .supervisor import Context

if TYPE_CHECKING:
    from ._debug import serve_debug
    from ._open import background_cluster, open_cluster

#: public names loaded on first use: what only a driver needs (its systems, its status page),
#: kept out of every worker's start (a worker imports this package before its own modules)
_LAZY = {"background_cluster": "._open", "open_cluster": "._open", "serve_debug": "._debug"}

__all__ = [
    "ActorHandle",
    "ActorPool",
    "BigActorError",
    "BigActorInternalError",
    "CallNotSent",
    "Cluster",
    "ClusterClosed",
    "CodecError",
    "Context",
    "DiskInfo",
    "Environ",
    "Info",
    "Instance",
    "KeepaliveConfig",
    "LoadInfo",
    "Machine",
    "MachineError",
    "MachineLost",
    "MachineStartError",
    "MemInfo",
    "MethodCancelled",
    "Notice",
    "ProtocolError",
    "RemoteError",
    "RemoteStream",
    "Restart",
    "ServiceNotFound",
    "Services",
    "Shared",
    "SpawnOptions",
    "Spawner",
    "State",
    "System",
    "Transport",
    "TransportError",
    "__version__",
    "as_completed",
    "background_cluster",
    "cancelled",
    "current_cluster",
    "gather",
    "idempotent",
    "machine_of",
    "name_of",
    "open_cluster",
    "run",
    "serve_debug",
    "take_flags",
]


def run(main: Any, *args: Any) -> Any:
    """Run ``main(*args)`` under Trio, after taking bigactor's own flags out of ``sys.argv``.

    ``--bigactor-system=NAME`` sets the default system (as ``BIGACTOR_SYSTEM`` does);
    ``--bigactor-log-level=LEVEL`` configures ``logging`` for the driver and its machines (see
    :func:`take_flags`). Other arguments are left for the program (and its workers, which see
    the same ``sys.argv``).

    Ctrl-C ends the program with the one line ``KeyboardInterrupt`` and the shell's status 130
    (Python ends it by SIGINT, as for any uncaught ``KeyboardInterrupt``), once every worker
    has stopped; ``BIGACTOR_TRACEBACK=full`` prints its traceback too. Under a plain
    ``trio.run``, a Ctrl-C inside ``open_cluster`` also ends the program with status 130, and
    Python prints the interrupt's traceback (no ``ExceptionGroup``); ``bigactor.run`` prints
    the one line by wrapping ``sys.excepthook`` once, for its own interrupt only.
    """
    import trio

    from ._open import interrupt_exits_quietly

    take_flags()
    with interrupt_exits_quietly():
        return trio.run(main, *args)


def take_flags() -> list[str]:
    """Apply bigactor's own flags and take them out of ``sys.argv``; return what is left.

    ``--bigactor-system=NAME`` sets the default system (as ``BIGACTOR_SYSTEM`` does), and
    ``--bigactor-log-level=LEVEL`` configures ``logging`` for the driver, and so for its
    machines (they take the driver's root level). :func:`run` calls it; a program that parses
    its own flags first calls it before its parser, which then never sees bigactor's::

        bigactor.take_flags()
        args = parser.parse_args()
        bigactor.run(main, args)

    Taking them twice changes nothing: the second call finds none.
    """
    import logging
    import os
    import sys

    rest = [sys.argv[0]] if sys.argv else []
    for arg in sys.argv[1:]:
        flag, sep, value = arg.partition("=")
        if flag == "--bigactor-system" and sep:
            os.environ["BIGACTOR_SYSTEM"] = value
        elif flag == "--bigactor-log-level" and sep:
            logging.basicConfig(level=value.upper())
        else:
            rest.append(arg)
    sys.argv[:] = rest
    return rest


def _public(obj: Any) -> Any:
    """Make a public name report ``bigactor`` as its module (stable names in tracebacks and in
    what the pickler writes, wherever the code lives)."""
    if getattr(obj, "__module__", "").startswith("bigactor."):
        with contextlib.suppress(AttributeError, TypeError):
            obj.__module__ = "bigactor"
    return obj


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bigactor' has no attribute {name!r}")
    value = globals()[name] = _public(getattr(importlib.import_module(module, __name__), name))
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


for _name in __all__:
    if _name not in _LAZY:
        _public(globals()[_name])
del _name
