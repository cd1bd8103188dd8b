"""bigactor from asyncio: the same API in a program whose main is ``asyncio.run(main())``.

bigactor runs on Trio. Under asyncio, ``open_cluster`` starts Trio as a *guest* of the running
asyncio loop (``trio.lowlevel.start_guest_run``: Trio's scheduler runs in the loop's callbacks,
on the same thread, and only its I/O wait sits in a thread of its own). One guest run serves
every cluster open on the loop, and ends when the last one closes.

Everything the program gets is a thin proxy over the Trio object (a :class:`Proxy`): the
cluster, spawn options, actor handles, machines and streams. An ``async`` method of the object
becomes a coroutine of asyncio's: awaiting it runs the Trio method in a task of the cluster's
own (so the cluster's context, ``cluster_var``, is there), and the result comes back proxied.
Cancelling the asyncio task cancels the Trio call, and with it the remote method. Plain
methods (``cluster.machines()``, ``cluster.options(...)``, ``machine.cancel()``) run at once:
Trio's run state is set for the whole guest run, so its synchronous operations work from the
loop's callbacks. A proxy pickles as its object, so a handle passed to an actor arrives as a
handle.

The exception to "``open_*`` owns its nursery": the cluster's nursery lives in the guest run,
not in the caller's task; ``async with`` still closes the cluster, with every machine, when
the block ends, however it ends.
"""

from __future__ import annotations

import asyncio
import inspect
import weakref
from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any

import outcome
import trio

from ._actor import ActorHandle
from ._cluster import Cluster, Spawner
from ._errors import ClusterClosed
from ._machine import Machine
from ._stream import RemoteStream

#: the Trio objects an asyncio program gets as proxies
_PROXIED = (Cluster, Spawner, ActorHandle, Machine, RemoteStream)


class _Guest:
    """One Trio guest run on an asyncio loop, serving that loop's clusters."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.users = 0
        self.token: trio.lowlevel.TrioToken | None = None
        self.nursery: trio.Nursery | None = None
        self._stop: trio.Event | None = None
        self.started: asyncio.Future[None] = loop.create_future()
        self.finished: asyncio.Future[outcome.Outcome[None]] = loop.create_future()

    def start(self) -> None:
        trio.lowlevel.start_guest_run(
            self._main,
            run_sync_soon_threadsafe=self.loop.call_soon_threadsafe,
            run_sync_soon_not_threadsafe=self.loop.call_soon,
            done_callback=self._done,
            # asyncio owns the signal wakeup fd where it handles signals; Trio must not take it.
            host_uses_signal_set_wakeup_fd=True,
        )

    async def _main(self) -> None:
        self.token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with trio.open_nursery() as nursery:
            self.nursery = nursery
            self.started.set_result(None)
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    def _done(self, result: outcome.Outcome[None]) -> None:
        if not self.finished.done():
            self.finished.set_result(result)
        if not self.started.done():  # it ended before it began: say why to whoever waits
            self.started.set_exception(RuntimeError(f"bigactor's Trio guest run ended at once: {result!r}"))

    def run_soon(self, fn: Callable[..., object], *args: Any) -> None:
        assert self.token is not None
        self.token.run_sync_soon(fn, *args)

    def stop(self) -> None:
        assert self._stop is not None
        self.run_soon(self._stop.set)


_guests: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Guest] = weakref.WeakKeyDictionary()


async def _acquire() -> _Guest:
    loop = asyncio.get_running_loop()
    guest = _guests.get(loop)
    if guest is None:
        if _trio_running():
            raise RuntimeError("bigactor under asyncio: a Trio run is already active in this thread")
        guest = _guests[loop] = _Guest(loop)
        guest.start()
    guest.users += 1
    try:
        await asyncio.shield(guest.started)
    except BaseException:
        await _release(guest)
        raise
    return guest


def _trio_running() -> bool:
    try:
        trio.lowlevel.current_trio_token()
    except RuntimeError:
        return False
    return True


async def _release(guest: _Guest) -> None:
    guest.users -= 1
    if guest.users:
        return
    if _guests.get(guest.loop) is guest:
        del _guests[guest.loop]
    if guest.started.done() and guest.started.exception() is None:
        guest.stop()
    result = await asyncio.shield(guest.finished)
    result.unwrap()


class ClusterContext:
    """``async with bigactor.open_cluster(...)`` under asyncio (see the module docstring)."""

    def __init__(self, opener: Callable[[], AbstractAsyncContextManager[Cluster]]) -> None:
        self._opener = opener
        self._guest: _Guest | None = None
        self._exit: trio.Event | None = None
        self._closed: asyncio.Future[None] | None = None
        self._proxy: Proxy | None = None

    async def __aenter__(self) -> Proxy:
        if self._guest is not None:
            raise RuntimeError("this open_cluster(...) was entered already: call open_cluster again")
        guest = self._guest = await _acquire()
        loop = guest.loop
        entered: asyncio.Future[tuple[Cluster, trio.Nursery]] = loop.create_future()
        self._closed = loop.create_future()
        assert guest.nursery is not None
        guest.run_soon(guest.nursery.start_soon, self._run, entered)
        try:
            cluster, calls = await asyncio.shield(entered)
        except asyncio.CancelledError:
            # Cancelled while the cluster opened: close what did open, then leave.
            await self._close()
            raise
        except BaseException:
            await _release(guest)
            raise
        self._proxy = Proxy(cluster, _Calls(guest, calls), self)
        return self._proxy

    async def _run(self, entered: asyncio.Future[tuple[Cluster, trio.Nursery]]) -> None:
        assert self._closed is not None
        self._exit = trio.Event()
        try:
            async with self._opener() as cluster, trio.open_nursery() as calls:
                if entered.cancelled():
                    calls.cancel_scope.cancel()
                else:
                    entered.set_result((cluster, calls))
                    await self._exit.wait()
                    calls.cancel_scope.cancel()
        except trio.Cancelled:
            _settle(entered, ClusterClosed("bigactor's Trio guest run stopped before the cluster opened"))
            _settle(self._closed, None)
            raise
        except BaseException as exc:
            if not entered.done():
                entered.set_exception(exc)
                _settle(self._closed, None)
            else:
                _settle(self._closed, exc)
        else:
            _settle(entered, ClusterClosed("the cluster closed before it opened"))
            _settle(self._closed, None)

    async def _close(self) -> None:
        guest, closed = self._guest, self._closed
        assert guest is not None
        assert closed is not None
        guest.run_soon(self._signal_exit)
        try:
            await asyncio.shield(closed)  # closing takes the machines' grace; never cut short
        finally:
            await _release(guest)

    def _signal_exit(self) -> None:
        if self._exit is not None:
            self._exit.set()

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._close()

    async def aclose(self) -> None:
        """Close the cluster and every machine it started (idempotent)."""
        if self._closed is not None and not self._closed.done():
            await self._close()


def _settle(future: asyncio.Future[Any], value: Any) -> None:
    """Give ``future`` its result, or an exception instance, unless it has one."""
    if future.done():
        return
    if isinstance(value, BaseException):
        future.set_exception(value)
    else:
        future.set_result(value)


class _Calls:
    """Runs a Trio object's coroutines for asyncio, in the cluster's nursery for calls."""

    def __init__(self, guest: _Guest, nursery: trio.Nursery) -> None:
        self.guest = guest
        self.nursery = nursery

    async def run(
        self, fn: Callable[..., Coroutine[Any, Any, Any]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        loop = self.guest.loop
        future: asyncio.Future[Any] = loop.create_future()
        self.guest.run_soon(self.nursery.start_soon, self._call, fn, args, kwargs, future)
        # Cancelling the awaiting task cancels ``future``; the call sees it and stops.
        return await future

    async def _call(
        self,
        fn: Callable[..., Coroutine[Any, Any, Any]],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        future: asyncio.Future[Any],
    ) -> None:
        if future.done():
            return  # cancelled before it started
        with trio.CancelScope() as scope:
            future.add_done_callback(lambda f: self.guest.run_soon(scope.cancel) if f.cancelled() else None)
            try:
                result = await fn(*args, **kwargs)
            except trio.Cancelled:
                _settle(future, ClusterClosed("the cluster closed while the call ran"))
                raise
            except BaseException as exc:  # delivered to the awaiting asyncio task, not lost
                _settle(future, exc)
            else:
                _settle(future, _wrap(result, self))


def _wrap(value: Any, calls: _Calls, owner: ClusterContext | None = None) -> Any:
    """``value`` as the asyncio program gets it: bigactor's Trio objects proxied, also inside a
    list, tuple or dict (one level)."""
    if isinstance(value, _PROXIED):
        return Proxy(value, calls, owner)
    t = type(value)
    if t is list or t is tuple:
        return t(Proxy(v, calls) if isinstance(v, _PROXIED) else v for v in value)
    if t is dict:
        return {k: Proxy(v, calls) if isinstance(v, _PROXIED) else v for k, v in value.items()}
    return value


def _unwrap(value: Any) -> Any:
    """An argument as the Trio object takes it: proxies replaced by their objects (one level
    into a list, tuple or dict)."""
    if type(value) is Proxy:
        return value._target
    t = type(value)
    if t is list or t is tuple:
        return t(v._target if type(v) is Proxy else v for v in value)
    if t is dict:
        return {k: v._target if type(v) is Proxy else v for k, v in value.items()}
    return value


class Proxy:
    """A bigactor object (cluster, handle, machine, stream, spawn options) for asyncio code.

    Its attributes are the object's; its ``async`` methods return asyncio coroutines. It
    pickles as the object itself.
    """

    __slots__ = ("_calls", "_owner", "_target")

    def __init__(self, target: Any, calls: _Calls, owner: ClusterContext | None = None) -> None:
        self._target = target
        self._calls = calls
        self._owner = owner  # the cluster's own proxy closes through its context

    def __getattr__(self, name: str) -> Any:
        if name == "aclose" and self._owner is not None:
            return self._owner.aclose
        value = getattr(self._target, name)
        calls = self._calls
        if inspect.iscoroutinefunction(value):

            async def call(*args: Any, **kwargs: Any) -> Any:
                args = tuple(_unwrap(a) for a in args)
                kwargs = {k: _unwrap(v) for k, v in kwargs.items()}
                return await calls.run(value, args, kwargs)

            call.__name__ = name
            return call
        if callable(value) and not isinstance(value, type):

            def plain(*args: Any, **kwargs: Any) -> Any:
                result = value(*(_unwrap(a) for a in args), **{k: _unwrap(v) for k, v in kwargs.items()})
                return _wrap(result, calls)

            plain.__name__ = name
            return plain
        return _wrap(value, calls)

    def __dir__(self) -> list[str]:
        return dir(self._target)

    def __repr__(self) -> str:
        return repr(self._target)

    def __eq__(self, other: object) -> bool:
        return bool(self._target == (other._target if type(other) is Proxy else other))

    def __hash__(self) -> int:
        return hash(self._target)

    def __reduce__(self) -> Any:
        return self._target.__reduce__()

    # A stream: iterated and closed through the cluster's tasks.
    def __aiter__(self) -> Proxy:
        return self

    async def __anext__(self) -> Any:
        return await self._calls.run(self._target.__anext__, (), {})

    async def __aenter__(self) -> Proxy:
        await self._calls.run(self._target.__aenter__, (), {})
        return self

    async def __aexit__(self, *exc_info: Any) -> Any:
        if self._owner is not None:
            return await self._owner.__aexit__(*exc_info)
        return await self._calls.run(self._target.__aexit__, exc_info, {})
