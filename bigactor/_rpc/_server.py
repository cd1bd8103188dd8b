"""The machine's side of the wire: the actors a machine hosts and how calls reach them.

Ordering: a CALL frame is decoded by the connection's reader as it arrives. A call to a sync
method is queued on its actor at once, in arrival order, and one task per actor runs the queue
one call at a time in a worker thread; so calls from one caller run in the order sent. Async
methods run as their own task at once and interleave at await points. Generator methods stream
items under credit from the caller (back-pressure); steps of a sync generator queue like calls.

An actor hosted with ``max_concurrency=N`` (N > 1) runs its queue on N threads: calls start in
the order they arrived (each only once every earlier one has started), then overlap and may
finish out of order. At most N of its async methods (async generator streams included) run at
once; the others wait for a slot, cancellably and in arrival order.

Cancellation: a CANCEL frame cancels the async method's cancel scope; a queued sync call that
has not started is dropped; a running one gets ``MethodCancelled`` raised in its thread at its
next bytecode (C code runs to its end first; see ``_threads``), and nothing is sent back: the
caller has already raised ``trio.Cancelled``. The step a cancelled sync generator stream is
running stops the same way. A sync method that returns a coroutine, an async method that
returns one unawaited, or a generator that yields one, fails its call with a TypeError saying
so, and the coroutine is closed.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .. import _codec
from .._errors import CodecError, ProtocolError, ServiceNotFound
from .._metrics import MethodStats, Registry, payload_size
from . import _frames
from ._connection import STREAM_BYTES, STREAM_WINDOW, Connection, current_actor
from ._frames import Kind
from ._remote import encode_error
from ._threads import ThreadCall, Turnstile

log = logging.getLogger("bigactor.rpc")

RunSync = Callable[..., Awaitable[Any]]

SYNC, ASYNC, SYNC_GEN, ASYNC_GEN = "sync", "async", "sync_gen", "async_gen"


def is_cancellation(exc: BaseException) -> bool:
    """Whether ``exc`` is Trio cancelling the task (alone, or a group of nothing else).

    Everything else a method raises — ``SystemExit``, ``KeyboardInterrupt`` included — is an
    error of that one call: it goes to its caller, and the machine keeps serving the others.
    """
    if isinstance(exc, trio.Cancelled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        _, rest = exc.split(trio.Cancelled)
        return rest is None
    return False


def method_kind(fn: Any) -> str:
    """Classify a method as sync, async, sync generator or async generator."""
    fn = inspect.unwrap(fn)
    if inspect.isasyncgenfunction(fn):
        return ASYNC_GEN
    if inspect.isgeneratorfunction(fn):
        return SYNC_GEN
    if inspect.iscoroutinefunction(fn):
        return ASYNC
    return SYNC


def idempotent(fn: Any) -> Any:
    """Mark an actor method as safe to run more than once for one call.

    ``Machine.retry_call`` re-sends a call whose connection broke after it left (it may have
    run) only for methods marked so. Use it for reads and for writes that set rather than add::

        class Store:
            @bigactor.idempotent
            async def get(self, key): ...
    """
    inspect.unwrap(fn).__bigactor_idempotent__ = True
    return fn


def is_idempotent(fn: Any) -> bool:
    """Whether ``fn`` (a function or bound method) is marked with :func:`idempotent`."""
    return bool(getattr(inspect.unwrap(fn), "__bigactor_idempotent__", False))


def method_table(obj: Any) -> dict[str, str]:
    """Public methods of a class or instance with their kinds."""
    cls = obj if isinstance(obj, type) else type(obj)
    out = {}
    for name in dir(cls):
        if name.startswith("_"):
            continue
        attr = inspect.getattr_static(cls, name, None)
        if isinstance(attr, (staticmethod, classmethod)):
            attr = attr.__func__
        if callable(attr):
            out[name] = method_kind(attr)
    return out


class _Job:
    """Sync work for an actor's queue, and what to do with its outcome (on the event loop)."""

    __slots__ = ("call", "done", "finished", "queued", "then", "ticket")

    def __init__(
        self, fn: Callable[..., Any], args: Any, kwargs: Any, done: Callable[[bool, Any], None]
    ) -> None:
        self.call = ThreadCall(fn, args, kwargs)
        self.done = done
        self.queued = False  # submitted, or chained to run after another job
        self.finished = False  # ran (or was dropped) and its outcome was handed to done
        self.then: _Job | None = None  # runs next on the same thread of the queue
        self.ticket: int | None = None  # its place in the start order (max_concurrency > 1)

    @property
    def cancelled(self) -> bool:
        return self.call.requested

    def cancel(self) -> None:
        """Drop the job if it has not started; stop it at its next bytecode if it has."""
        self.call.cancel()


def _closed(name: str) -> Callable[[bool, Any], None]:
    def done(ok: bool, value: Any) -> None:
        if not ok:
            log.warning("actor %s: closing a generator raised %r", name, value)

    return done


def check_max_concurrency(instance: Any, max_concurrency: Any) -> int | None:
    """``max_concurrency`` if it is None or an int >= 1; a ValueError naming the actor if not."""
    if max_concurrency is None or (
        isinstance(max_concurrency, int) and not isinstance(max_concurrency, bool) and max_concurrency >= 1
    ):
        return max_concurrency
    raise ValueError(
        f"max_concurrency of a {type(instance).__name__} actor must be None or an int >= 1 "
        f"(how many of its sync methods may run at once), not {max_concurrency!r}"
    )


class Actor:
    """One hosted object: its instance, method kinds and queue of sync work.

    ``max_concurrency`` N (None or 1: one at a time) is how many threads run the queue's sync
    work at once, and, for N > 1, how many of its async methods (and async generator
    streams) may run at once; with None or 1 they are not limited. Sync calls start in the
    order they arrived: with N > 1 a call starts only after every earlier one has started,
    and then they overlap and may finish out of order.
    """

    def __init__(self, name: str, instance: Any, max_concurrency: int | None = None) -> None:
        self.name = name
        self.instance = instance
        self.methods = method_table(instance)
        self.threads = check_max_concurrency(instance, max_concurrency) or 1
        #: the cap on concurrent async methods (None: no cap)
        self.slots = trio.Semaphore(self.threads) if self.threads > 1 else None
        self._turnstile = Turnstile() if self.threads > 1 else None
        self._send, self._receive = trio.open_memory_channel[_Job](math.inf)

    def submit(self, job: _Job) -> None:
        """Queue sync work; it starts after everything queued before it."""
        job.queued = True
        if self._turnstile is not None:
            # Taken now, in arrival order: the threads' tasks take jobs from the queue in
            # order but run in any order, so a ticket taken there could come out of order.
            job.ticket = self._turnstile.ticket()
        self._send.send_nowait(job)

    def after(self, job: _Job, then: _Job) -> None:
        """Run ``then`` right after ``job`` on the same thread (at once if ``job`` is done).

        ``then`` is cleanup, not a call: it takes no place in the start order.
        """
        then.queued = True
        if job.finished:
            self._send.send_nowait(then)
        else:
            job.then = then

    async def run_sync(self, fn: Callable[..., Any], *args: Any, then: _Job | None = None) -> Any:
        """Run ``fn`` in this actor's queue and wait for its result (exceptions re-raised).

        Cancelling the wait cancels ``fn`` (dropped if it has not started, stopped at its next
        bytecode if it has) and schedules ``then`` to run once ``fn`` is over.
        """
        result: list[Any] = []
        finished = trio.Event()

        def done(ok: bool, value: Any) -> None:
            result[:] = [ok, value]
            finished.set()

        job = _Job(fn, args, {}, done)
        self.submit(job)
        try:
            await finished.wait()
        except BaseException:
            job.cancel()
            if then is not None:
                self.after(job, then)
            raise
        ok, value = result
        if not ok:
            raise value
        return value

    async def serve(self, run_sync: RunSync) -> None:
        """Run the queue forever on ``threads`` threads at once."""
        current_actor.set(self.name)  # its sync methods' threads copy this task's context
        if self.threads == 1:
            await self._consume(run_sync)
            return
        async with trio.open_nursery() as nursery:
            for i in range(self.threads):
                nursery.start_soon(self._consume, run_sync, name=f"actor {self.name} thread {i}")

    async def _consume(self, run_sync: RunSync) -> None:
        async for first in self._receive:
            job: _Job | None = first
            while job is not None:
                await self._run(job, run_sync)
                job.finished = True
                job = job.then

    async def _run(self, job: _Job, run_sync: RunSync) -> None:
        turnstile, ticket, turn = self._turnstile, job.ticket, None
        if job.cancelled:
            if turnstile is not None and ticket is not None:
                turnstile.skip(ticket)
            return
        if turnstile is not None and ticket is not None:
            turn = functools.partial(turnstile.wait, ticket)
        try:
            value = await run_sync(job.call.run, turn)
        except BaseException as exc:
            if turnstile is not None and ticket is not None and not job.call.entered:
                turnstile.skip(ticket)  # its thread never started: the next may begin
            if is_cancellation(exc):
                raise
            job.done(False, exc)
        else:
            job.done(True, value)

    def close(self) -> None:
        self._send.close()


class ActorTable:
    """The actors a machine hosts, by name."""

    def __init__(self, addr: str, nursery: trio.Nursery, run_sync: RunSync) -> None:
        self.addr = addr
        self.actors: dict[str, Actor] = {}
        #: server-side counters of every method called here ("actor.method")
        self.metrics = Registry()
        self._nursery = nursery
        self._run_sync = run_sync
        self._counter = 0

    def add(self, name: str | None, instance: Any, max_concurrency: int | None = None) -> Actor:
        """Host ``instance`` as ``name`` (a fresh name if None); a taken name is an error.

        ``max_concurrency`` (None or an int >= 1, else ValueError) is described on
        :class:`Actor`.
        """
        if name is None:
            self._counter += 1
            name = f"{type(instance).__name__}-{self._counter}"
        if name in self.actors:
            raise ValueError(f"machine {self.addr} already hosts an actor named {name!r}")
        actor = Actor(name, instance, max_concurrency)
        self.actors[name] = actor
        self._nursery.start_soon(actor.serve, self._run_sync, name=f"actor {name}")
        return actor

    def resolve(self, target: str) -> tuple[Actor, Callable[..., Any], str]:
        name, _, method = target.rpartition(".")
        actor = self.actors.get(name)
        if actor is None:
            raise ServiceNotFound(
                self.addr,
                target,
                f"no actor named {name!r} (hosted here: {', '.join(sorted(self.actors)) or 'none'})",
            )
        kind = actor.methods.get(method)
        if kind is None:
            raise ServiceNotFound(
                self.addr, target, f"{type(actor.instance).__name__} has no public method {method!r}"
            )
        return actor, getattr(actor.instance, method), kind


def _slot(actor: Actor) -> contextlib.AbstractAsyncContextManager[Any]:
    """A slot among the actor's concurrent async methods (none needed without a cap)."""
    return actor.slots if actor.slots is not None else contextlib.nullcontext()


def _returned_coroutine(coro: Any, actor: Actor, target: str, kind: str) -> TypeError:
    """The error of a method that returned a coroutine instead of its value; ``coro`` is closed."""
    coro.close()  # never awaited, and never will be: no RuntimeWarning
    method = f"{type(actor.instance).__name__}.{target.rpartition('.')[2]}"
    if kind == SYNC:
        return TypeError(
            f"{method} is a sync method but returned a coroutine: "
            "define it with `async def` or await the coroutine"
        )
    return TypeError(f"{method} returned a coroutine without awaiting it: return `await ...` instead")


class _Credit:
    """What a stream's producer may still send: items, and bytes in flight (back-pressure)."""

    __slots__ = ("event", "in_flight", "sizes")

    def __init__(self) -> None:
        self.sizes: deque[int] = deque()  # of the items sent and not yet credited back
        self.in_flight = 0
        self.event = trio.Event()

    def blocked(self) -> bool:
        return len(self.sizes) >= STREAM_WINDOW or (self.in_flight >= STREAM_BYTES and bool(self.sizes))

    def sent(self, size: int) -> None:
        self.sizes.append(size)
        self.in_flight += size

    def returned(self, n: int) -> None:
        for _ in range(min(n, len(self.sizes))):
            self.in_flight -= self.sizes.popleft()


class CallDispatcher:
    """Runs the calls arriving on one connection against an ActorTable."""

    def __init__(self, table: ActorTable, nursery: trio.Nursery, run_sync: RunSync) -> None:
        self._table = table
        self._nursery = nursery
        self._run_sync = run_sync
        self._scopes: dict[int, trio.CancelScope] = {}
        self._jobs: dict[int, _Job] = {}
        self._credits: dict[int, _Credit] = {}

    def call_received(self, conn: Connection, call_id: int, payload: memoryview, flags: int) -> None:
        try:
            target, args, kwargs = _codec.decode(payload, flags, f"a call on machine {self._table.addr}")
            if not isinstance(target, str) or not isinstance(args, tuple) or not isinstance(kwargs, dict):
                raise ProtocolError("CALL payload is not (target, args, kwargs)")
            actor, fn, kind = self._table.resolve(target)
            stream = bool(flags & _frames.STREAM)
            if stream != (kind in (SYNC_GEN, ASYNC_GEN)):
                raise TypeError(
                    f"{target} is a {'generator' if not stream else 'plain'} method: "
                    + ("iterate it with 'async for'" if not stream else "await it")
                )
        except ProtocolError:
            raise
        except Exception as exc:
            conn.send(Kind.ERROR, call_id, encode_error(exc, framework=True))
            return
        stat = self._table.metrics.get(target)
        start = time.perf_counter()
        size = payload_size(payload)
        if kind == SYNC:

            def done(ok: bool, value: Any) -> None:
                self._jobs.pop(call_id, None)
                if ok and inspect.iscoroutine(value):
                    ok, value = False, _returned_coroutine(value, actor, target, SYNC)
                if job.cancelled:
                    return  # as for an async method: its caller is gone and expects nothing
                self._reply(conn, call_id, ok, value, stat, start, size)

            job = _Job(fn, args, kwargs, done)
            self._jobs[call_id] = job
            actor.submit(job)
        elif kind == ASYNC:
            # The scope exists before the task runs: a CANCEL in the same message finds it.
            self._scopes[call_id] = trio.CancelScope()
            self._nursery.start_soon(
                self._run_async, conn, call_id, actor, target, fn, args, kwargs, stat, start, size
            )
        else:
            self._credits[call_id] = _Credit()
            self._scopes[call_id] = trio.CancelScope()
            self._nursery.start_soon(
                self._run_stream, conn, call_id, actor, fn, args, kwargs, kind, stat, start, size
            )

    def _reply(
        self, conn: Connection, call_id: int, ok: bool, value: Any, stat: MethodStats, start: float, size: int
    ) -> None:
        """Send the reply (or the error) and count the call: ``size`` request bytes since ``start``."""
        if ok:
            try:
                reply = _codec.encode(value, "the reply")
            except CodecError as exc:
                value = exc
            else:
                conn.send_payload(Kind.REPLY, call_id, reply)
                stat.record(time.perf_counter() - start, True, size, reply.size)
                return
        error = encode_error(value)
        conn.send(Kind.ERROR, call_id, error)
        stat.record(time.perf_counter() - start, False, size, len(error))

    async def _run_async(
        self,
        conn: Connection,
        call_id: int,
        actor: Actor,
        target: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        stat: MethodStats,
        start: float,
        size: int,
    ) -> None:
        current_actor.set(actor.name)
        with self._scopes[call_id]:
            try:
                # Waiting for a slot (max_concurrency) is cancellable like the call itself.
                async with _slot(actor):
                    value = await fn(*args, **kwargs)
                if inspect.iscoroutine(value):
                    raise _returned_coroutine(value, actor, target, ASYNC)
            except BaseException as exc:
                if is_cancellation(exc):
                    raise
                self._reply(conn, call_id, False, exc, stat, start, size)
                return
            finally:
                del self._scopes[call_id]
            self._reply(conn, call_id, True, value, stat, start, size)

    async def _run_stream(
        self,
        conn: Connection,
        call_id: int,
        actor: Actor,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        kind: str,
        stat: MethodStats,
        start: float,
        size: int,
    ) -> None:
        credit = self._credits[call_id]
        ok, sent = False, 0
        current_actor.set(actor.name)
        with self._scopes[call_id]:
            try:
                if kind == ASYNC_GEN:
                    async with _slot(actor):
                        agen = fn(*args, **kwargs)
                        try:
                            async for item in agen:
                                sent += await self._send_item(conn, call_id, credit, item)
                        finally:
                            await agen.aclose()
                else:
                    gen = await actor.run_sync(functools.partial(fn, *args, **kwargs))
                    end = object()
                    # Closed on the actor's own threads, where its code always runs (never on
                    # the event loop's): right after a cancelled step, which is stopped at its
                    # next bytecode but may still be inside C code, or else now.
                    close = _Job(gen.close, (), {}, _closed(actor.name))
                    try:
                        while (item := await actor.run_sync(next, gen, end, then=close)) is not end:
                            sent += await self._send_item(conn, call_id, credit, item)
                    finally:
                        if not close.queued:
                            actor.submit(close)
                conn.send(Kind.STREAM_END, call_id)
                ok = True
            except BaseException as exc:
                if is_cancellation(exc):
                    raise
                conn.send(Kind.ERROR, call_id, encode_error(exc))
            finally:
                del self._scopes[call_id]
                del self._credits[call_id]
                stat.record(time.perf_counter() - start, ok, size, sent)

    async def _send_item(self, conn: Connection, call_id: int, credit: _Credit, item: Any) -> int:
        if inspect.iscoroutine(item):
            item.close()  # never awaited, and never will be: no RuntimeWarning
            raise TypeError("a generator method yielded a coroutine: await it before yielding")
        while credit.blocked():
            await credit.event.wait()
            credit.event = trio.Event()
        data = _codec.encode(item, "a streamed item")
        credit.sent(data.size)
        conn.send_payload(Kind.STREAM_DATA, call_id, data)
        return data.size

    def cancel_received(self, call_id: int) -> None:
        scope = self._scopes.get(call_id)
        if scope is not None:
            scope.cancel()
        job = self._jobs.pop(call_id, None)
        if job is not None:
            job.cancel()

    def credit_received(self, call_id: int, n: int) -> None:
        credit = self._credits.get(call_id)
        if credit is not None:
            credit.returned(n)
            credit.event.set()

    def closed(self) -> None:
        for scope in self._scopes.values():
            scope.cancel()
        for job in self._jobs.values():
            job.cancel()
