"""``open_cluster``: where a program's cluster begins and ends, and how its errors leave it.

The cluster's nursery holds the body and every machine's lifecycle. Under strict exception
groups it would wrap whatever leaves the body in an ``ExceptionGroup``, however alone; the body's
exception leaves as itself instead, as trio-websocket's ``open_websocket`` does, and a Ctrl-C as
a bare ``KeyboardInterrupt`` (see :func:`open_cluster`). :func:`interrupt_exits_quietly` is how
``bigactor.run`` ends a program on Ctrl-C: one line and the shell's status 130.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from types import TracebackType
from typing import Any, cast

import sniffio
import trio

from ._actor import cluster_var
from ._cluster import Cluster
from ._debug import serve_debug
from ._errors import full_tracebacks
from ._machine import Machine, Notice
from ._system import System
from .systems import lookup


def open_cluster(
    system: System | str | None = None,
    *,
    debug_address: str | tuple[str, int] | None = None,
    debug_token: str | None = None,
    on_draining: Callable[[Machine, Notice], Awaitable[None] | None] | None = None,
    debug: bool = False,
    **options: Any,
) -> AbstractAsyncContextManager[Cluster]:
    """Open a cluster on ``system`` and close it, with every machine it started, on exit.

    Under Trio (``trio.run``, ``bigactor.run``) the cluster runs in the caller's task, as
    described below. Under asyncio (``asyncio.run(main())``) the same ``async with`` works:
    bigactor runs as a Trio guest on the asyncio loop, and the cluster, its handles and
    machines come as proxies whose async methods are asyncio coroutines (see ``bigactor._aio``).

    ``system`` is a System instance or a system name; without one, ``BIGACTOR_SYSTEM`` names
    it, else ``local``. ``options`` go to the named system's constructor; the options not
    given come from ``BIGACTOR_<SYSTEM>_<OPTION>`` variables where set. With
    ``debug_address`` (``"127.0.0.1:8080"``, or port 0 for any), the cluster also serves its
    debug pages there (see ``serve_debug``); ``cluster.debug_url`` says where, with the token
    they need: ``debug_token``, else ``BIGACTOR_DEBUG_TOKEN``, else a random one.

    ``breakpoint()`` in an actor on a local machine opens pdb in this program's terminal, one
    session at a time (the machine waits, and keepalives forgive it); Ctrl-C there interrupts
    pdb, not the program. With ``debug=True``, a method that raises opens a post-mortem
    session the same way before its caller gets the error.

    ``on_draining(machine, notice)`` is called each time one of the cluster's machines gives
    notice that it will go away soon (a spot instance being reclaimed: ``machine.draining``
    is then true, ``machine.notices`` lists what it said); it may be a coroutine function,
    run as a task of the cluster (it outlives the machine). It is ``cluster.on_draining``, to
    set or change later; what it raises ends the cluster like any error of its tasks.

    The cluster owns one nursery: every machine's lifecycle runs in it, and the body runs
    inside it. On exit (normal, error, cancellation or KeyboardInterrupt) every owned machine is
    shut down, its output flushed, and no worker process is left behind.

    An exception leaving the body leaves ``open_cluster`` as itself when it is the only error
    (catch it with a plain ``except``), as does one failure of the cluster's own tasks; an
    ``ExceptionGroup`` leaves only when there really are two or more errors. The ``Cancelled``
    exceptions of the other tasks are not errors: they are left out (the group they came in
    stays reachable as the exception's ``__context__``, not printed, when it had none of its
    own). Cancellation works as in any trio code: a ``trio.move_on_after`` around
    ``open_cluster`` catches its ``Cancelled``. A ``KeyboardInterrupt`` leaves as a bare
    ``KeyboardInterrupt``, even from inside the body's own nurseries, so that Python ends the
    program with the status of Ctrl-C (130); if other errors came with it, they are its
    ``__cause__``.
    """
    opener = partial(
        _open_trio,
        system,
        debug_address=debug_address,
        debug_token=debug_token,
        on_draining=on_draining,
        debug=debug,
        **options,
    )
    return _Opener(opener)


async def background_cluster(
    system: System | str | None = None,
    *,
    debug_address: str | tuple[str, int] | None = None,
    debug_token: str | None = None,
    on_draining: Callable[[Machine, Notice], Awaitable[None] | None] | None = None,
    debug: bool = False,
    **options: Any,
) -> Cluster:
    """Open a cluster that outlives the code that opened it, for notebooks: in Jupyter,
    ``cluster = await bigactor.background_cluster()`` in one cell, calls in the next ones,
    ``await cluster.aclose()`` at the end. Takes what :func:`open_cluster` takes.

    The documented exception to "``open_*`` owns its nursery": the cluster is owned by
    bigactor's Trio guest run on the running asyncio loop (the kernel's), not by a block. It
    ends with ``await cluster.aclose()``, or when the process ends: a kernel restart or
    shutdown leaves no worker behind (the local system's guardian, the other systems'
    watchdogs). An interrupt of the running cell cancels that cell's calls, never the
    cluster. Under Trio, use ``async with open_cluster()``: this raises RuntimeError.
    """
    if sniffio.current_async_library() != "asyncio":
        raise RuntimeError(
            "bigactor.background_cluster() is for asyncio programs and notebooks; "
            "under Trio, use `async with bigactor.open_cluster() as cluster:`"
        )
    # Entered and never exited here: the proxy's aclose() ends it (see bigactor._aio).
    opened = open_cluster(
        system,
        debug_address=debug_address,
        debug_token=debug_token,
        on_draining=on_draining,
        debug=debug,
        **options,
    )
    return await opened.__aenter__()


class _Opener:
    """What ``open_cluster`` returns: enters the Trio cluster, or its asyncio proxy (found out
    on entry, from the library that runs the entering task)."""

    def __init__(self, opener: Callable[[], AbstractAsyncContextManager[Cluster]]) -> None:
        self._opener = opener
        self._entered: AbstractAsyncContextManager[Any] | None = None  # Cluster, or its proxy

    async def __aenter__(self) -> Cluster:
        if self._entered is not None:
            raise RuntimeError("this open_cluster(...) was entered already: call open_cluster again")
        entered: AbstractAsyncContextManager[Any]
        if sniffio.current_async_library() == "asyncio":
            from . import _aio  # only asyncio programs pay for it

            entered = _aio.ClusterContext(self._opener)
        else:
            entered = self._opener()
        self._entered = entered
        # Under asyncio, a proxy that stands for the cluster (its methods, asyncio's way).
        return cast(Cluster, await entered.__aenter__())

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        assert self._entered is not None
        return await self._entered.__aexit__(kind, exc, tb)


@asynccontextmanager
async def _open_trio(
    system: System | str | None,
    *,
    debug_address: str | tuple[str, int] | None,
    debug_token: str | None,
    on_draining: Callable[[Machine, Notice], Awaitable[None] | None] | None,
    debug: bool = False,
    **options: Any,
) -> AsyncIterator[Cluster]:
    """``open_cluster`` under Trio (see its docstring)."""
    if system is None or isinstance(system, str):
        system = lookup(system or os.environ.get("BIGACTOR_SYSTEM") or "local", **options)
    elif options:
        raise TypeError("options go with a system name, not with a System instance")
    key = secrets.token_bytes(32)
    try:
        async with trio.open_nursery() as nursery:
            await system.setup(nursery, key)
            cluster = Cluster(nursery, key, system)
            cluster.on_draining = on_draining
            cluster.post_mortem = debug
            if debug_address is not None:
                host, port = (
                    debug_address.rpartition(":")[::2] if isinstance(debug_address, str) else debug_address
                )
                serve = partial(
                    serve_debug, cluster, host.strip("[]") or "127.0.0.1", int(port), token=debug_token
                )
                cluster.debug_url = await nursery.start(serve)
            token = cluster_var.set(cluster)
            try:
                yield cluster
            finally:
                cluster_var.reset(token)
                with trio.CancelScope(shield=True):
                    await cluster.aclose()
                    await system.aclose()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        alone = _alone(group)
        if alone is None:
            raise
        # Raised while ``group`` is handled, ``alone`` would get it as its printed context.
        context = (alone.__context__, alone.__suppress_context__)
        try:
            raise alone
        finally:
            _set_context(alone, context, group)
            del alone, context, group


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    """The exceptions in ``exc``, a group or not, depth first."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def _cancelled_only(exc: BaseException) -> bool:
    """Whether ``exc`` is a ``Cancelled``, or a group of nothing else."""
    return all(isinstance(leaf, trio.Cancelled) for leaf in _leaves(exc))


def _alone(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception to raise instead of the nursery's ``group``, or None to raise ``group``.

    The nursery's members are the body's exception and those of the cluster's own tasks. A member
    made only of ``Cancelled`` is no error: if nothing else is left, one ``Cancelled`` stands for
    all (any of them is caught by the cancel scope that was cancelled). A body that raised a group
    of its own (from its own nursery) raises that group, as itself. A ``KeyboardInterrupt``
    anywhere leaves bare, the way Python recognises Ctrl-C.
    """
    leaves = list(_leaves(group))
    errors = [exc for exc in leaves if not isinstance(exc, trio.Cancelled)]
    interrupts = [exc for exc in errors if isinstance(exc, KeyboardInterrupt)]
    if interrupts:
        if len(interrupts) == len(errors):
            return interrupts[0]
        interrupt = KeyboardInterrupt()
        interrupt.__cause__ = group
        return interrupt
    if not errors:
        return leaves[0]
    members = [exc for exc in group.exceptions if not _cancelled_only(exc)]
    return members[0] if len(members) == 1 else None


def _set_context(
    exc: BaseException, context: tuple[BaseException | None, bool], group: BaseExceptionGroup[BaseException]
) -> None:
    """Give ``exc``, raised out of ``group``, its own ``context`` back.

    When it had none, ``group`` becomes its context, reachable but not printed: beside ``exc`` it
    holds only ``Cancelled`` exceptions, or nothing.
    """
    if context[0] is None:
        exc.__context__, exc.__suppress_context__ = group, True
    else:
        exc.__context__, exc.__suppress_context__ = context


@contextlib.contextmanager
def interrupt_exits_quietly() -> Iterator[None]:
    """Make a Ctrl-C that ends the block end the program with one line and status 130.

    A ``KeyboardInterrupt`` leaving the block, bare or in groups beside nothing but
    ``Cancelled``, leaves as a bare ``KeyboardInterrupt`` that prints as the one line
    ``KeyboardInterrupt`` if it ends the program: Python then ends the program by SIGINT, as it
    does for every uncaught ``KeyboardInterrupt``, which the shell reports as status 130 (and a
    shell script running the program stops too). To print it, the first such interrupt wraps
    ``sys.excepthook`` in a hook that passes every other exception on. With
    ``BIGACTOR_TRACEBACK=full`` the interrupt prints its whole traceback instead. Any other
    exception leaves as it is.
    """
    try:
        yield
    except BaseException as exc:
        errors = [e for e in _leaves(exc) if not isinstance(e, trio.Cancelled)]
        if not errors or not all(isinstance(e, KeyboardInterrupt) for e in errors):
            raise
        if full_tracebacks():
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise KeyboardInterrupt from exc
        interrupt = KeyboardInterrupt()
        interrupt.__dict__[_BRIEF] = True
        if getattr(sys.excepthook, _BRIEF, None) is None:
            sys.excepthook = partial(_excepthook, sys.excepthook)
            setattr(sys.excepthook, _BRIEF, True)
        raise interrupt from None


_BRIEF = "_bigactor_brief"


def _excepthook(
    previous: Any, kind: type[BaseException], value: BaseException, tb: TracebackType | None
) -> None:
    """Print an interrupt of :func:`interrupt_exits_quietly` as one line, pass on the rest."""
    if value.__dict__.get(_BRIEF):
        print("KeyboardInterrupt", file=sys.stderr, flush=True)
    else:
        previous(kind, value, tb)
