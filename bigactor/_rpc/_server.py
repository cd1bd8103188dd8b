"""The machine's side of the wire: the actors a machine hosts and how calls reach them.

Ordering: a CALL frame is decoded by the connection's reader as it arrives. A call to a sync
method is queued on its actor at once, in arrival order, and one task per actor runs the queue
one call at a time in a worker thread; so calls from one caller run in the order sent. Async
methods run as their own task at once and interleave at await points. Generator methods stream
items under credit from the caller (back-pressure); steps of a sync generator queue like calls.

Cancellation: a CANCEL frame cancels the async method's cancel scope; a queued sync call that
has not started is dropped; a running one finishes and its result is discarded.
"""

from __future__ import annotations

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
from ._connection import STREAM_BYTES, STREAM_WINDOW, Connection
from ._frames import Kind
from ._remote import encode_error

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
    __slots__ = ("args", "cancelled", "done", "fn", "kwargs")

    def __init__(
        self, fn: Callable[..., Any], args: Any, kwargs: Any, done: Callable[[bool, Any], None]
    ) -> None:
        self.fn, self.args, self.kwargs, self.done = fn, args, kwargs, done
        self.cancelled = False


def _closed(name: str) -> Callable[[bool, Any], None]:
    def done(ok: bool, value: Any) -> None:
        if not ok:
            log.warning("actor %s: closing a generator raised %r", name, value)

    return done


class Actor:
    """One hosted object: its instance, method kinds and queue of sync work."""

    def __init__(self, name: str, instance: Any) -> None:
        self.name = name
        self.instance = instance
        self.methods = method_table(instance)
        self._send, self._receive = trio.open_memory_channel[_Job](math.inf)

    def submit(self, job: _Job) -> None:
        """Queue sync work; it runs after everything queued before it."""
        self._send.send_nowait(job)

    async def run_sync(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` in this actor's queue and wait for its result (exceptions re-raised)."""
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
            job.cancelled = True
            raise
        ok, value = result
        if not ok:
            raise value
        return value

    async def serve(self, run_sync: RunSync) -> None:
        """Run the queue forever, one job at a time."""
        async for job in self._receive:
            if job.cancelled:
                continue
            try:
                value = await run_sync(job.fn, *job.args, **job.kwargs)
            except BaseException as exc:
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

    def add(self, name: str | None, instance: Any) -> Actor:
        """Host ``instance`` as ``name`` (a fresh name if None); a taken name is an error."""
        if name is None:
            self._counter += 1
            name = f"{type(instance).__name__}-{self._counter}"
        if name in self.actors:
            raise ValueError(f"machine {self.addr} already hosts an actor named {name!r}")
        actor = Actor(name, instance)
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
                self._reply(conn, call_id, ok, value, stat, start, size)

            job = _Job(fn, args, kwargs, done)
            self._jobs[call_id] = job
            actor.submit(job)
        elif kind == ASYNC:
            # The scope exists before the task runs: a CANCEL in the same message finds it.
            self._scopes[call_id] = trio.CancelScope()
            self._nursery.start_soon(self._run_async, conn, call_id, fn, args, kwargs, stat, start, size)
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
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        stat: MethodStats,
        start: float,
        size: int,
    ) -> None:
        with self._scopes[call_id]:
            try:
                value = await fn(*args, **kwargs)
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
        with self._scopes[call_id]:
            try:
                if kind == ASYNC_GEN:
                    agen = fn(*args, **kwargs)
                    try:
                        async for item in agen:
                            sent += await self._send_item(conn, call_id, credit, item)
                    finally:
                        await agen.aclose()
                else:
                    gen = await actor.run_sync(functools.partial(fn, *args, **kwargs))
                    end = object()
                    try:
                        while (item := await actor.run_sync(next, gen, end)) is not end:
                            sent += await self._send_item(conn, call_id, credit, item)
                    finally:
                        # Closed on the actor's own thread, queued after the step that may
                        # still run there (a cancelled caller does not stop a running next()):
                        # the generator's finally runs as soon as that step ends, where its
                        # code always runs, never on the event loop's thread.
                        actor.submit(_Job(gen.close, (), {}, _closed(actor.name)))
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
            job.cancelled = True

    def credit_received(self, call_id: int, n: int) -> None:
        credit = self._credits.get(call_id)
        if credit is not None:
            credit.returned(n)
            credit.event.set()

    def closed(self) -> None:
        for scope in self._scopes.values():
            scope.cancel()
        for job in self._jobs.values():
            job.cancelled = True
