"""The machine's side of the wire: the actors a machine hosts and how calls reach them.

Ordering: a CALL frame is decoded by the connection's reader as it arrives. A call to a sync
method is queued on its actor at once, in arrival order, and the actor's own thread runs the
queue one call at a time; so calls from one caller run in the order sent. Outcomes come back
to the event loop in batches: one wake-up for every call that finished since the last. Async
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
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from queue import SimpleQueue
from typing import Any

import trio

from .. import _codec
from .._errors import CodecError, ProtocolError, ServiceNotFound
from .._metrics import MethodStats, Registry, payload_size
from . import _frames
from ._aioloop import AsyncioLoop
from ._connection import STREAM_BYTES, STREAM_WINDOW, Connection, current_actor
from ._frames import Kind
from ._remote import encode_error
from ._threads import MethodCancelled, ThreadCall, Turnstile, run_in_thread, thread_limiter

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


def check_max_concurrency(kind: str, max_concurrency: Any) -> int | None:
    """``max_concurrency`` if it is None or an int >= 1; a ValueError naming the actor's
    ``kind`` (its class's name) if not."""
    if max_concurrency is None or (
        isinstance(max_concurrency, int) and not isinstance(max_concurrency, bool) and max_concurrency >= 1
    ):
        return max_concurrency
    raise ValueError(
        f"max_concurrency of a {kind} actor must be None or an int >= 1 "
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

    def __init__(
        self,
        name: str,
        instance: Any,
        max_concurrency: int | None = None,
        run_sync: RunSync = run_in_thread,
        asyncio: bool = False,
    ) -> None:
        self.name = name
        self.instance = instance
        #: its public methods and their kinds (none until it has an instance: see ActorTable.spawn)
        self.methods = method_table(instance) if instance is not None else {}
        kind = type(instance).__name__ if instance is not None else name
        self.threads = check_max_concurrency(kind, max_concurrency) or 1
        #: the cap on concurrent async methods (None: no cap)
        self.slots = trio.Semaphore(self.threads) if self.threads > 1 else None
        self._turnstile = Turnstile() if self.threads > 1 else None
        self._run_sync = run_sync
        self._closed = False
        # Sync work goes to the actor's own threads (``run_in_thread``, see _ActorThreads),
        # or through any other ``run_sync`` (the test system's, inline) from a queue task.
        self._own = _ActorThreads(self) if run_sync is run_in_thread else None
        self._send, self._receive = trio.open_memory_channel[_Job](math.inf)
        #: the asyncio loop its constructor, async methods and async hooks run on (``asyncio=True``)
        self.aio = AsyncioLoop(name) if asyncio else None

    async def await_method(self, coro: Any) -> Any:
        """Await a coroutine of the actor's async code: on its asyncio loop if it has one."""
        return await (self.aio.run(coro) if self.aio is not None else coro)

    def submit(self, job: _Job) -> None:
        """Queue sync work; it starts after everything queued before it."""
        if self._closed:
            raise trio.ClosedResourceError(f"actor {self.name} has stopped")
        job.queued = True
        if self._turnstile is not None:
            # Taken now, in arrival order: the threads take jobs from the queue in order but
            # run in any order, so a ticket taken there could come out of order.
            job.ticket = self._turnstile.ticket()
        self._put(job)

    def _put(self, job: _Job) -> None:
        if self._own is not None:
            self._own.queue.put(job)
        else:
            self._send.send_nowait(job)

    def after(self, job: _Job, then: _Job) -> None:
        """Run ``then`` right after ``job`` on the same thread (at once if ``job`` is done).

        ``then`` is cleanup, not a call: it takes no place in the start order.
        """
        then.queued = True
        if job.finished:
            self._put(then)
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

    async def serve(self) -> None:
        """Run the queue on ``threads`` threads at once, until :meth:`close`."""
        current_actor.set(self.name)  # its sync methods' threads copy this task's context
        own = self._own
        if own is None and self.threads == 1 and self.aio is None:
            await self._consume()
            return
        async with trio.open_nursery() as nursery:
            if self.aio is not None:
                nursery.start_soon(self.aio.serve, name=f"actor {self.name} asyncio loop")
            for i in range(self.threads):
                what = own.run if own is not None else self._consume
                nursery.start_soon(what, name=f"actor {self.name} thread {i}")

    async def _consume(self) -> None:
        async for first in self._receive:
            job: _Job | None = first
            while job is not None:
                await self._run(job)
                job.finished = True
                job = job.then

    async def _run(self, job: _Job) -> None:
        turnstile, ticket, turn = self._turnstile, job.ticket, None
        if job.cancelled:
            if turnstile is not None and ticket is not None:
                turnstile.skip(ticket)
            return
        if turnstile is not None and ticket is not None:
            turn = functools.partial(turnstile.wait, ticket)
        try:
            value = await self._run_sync(job.call.run, turn)
        except BaseException as exc:
            if turnstile is not None and ticket is not None and not job.call.entered:
                turnstile.skip(ticket)  # its thread never started: the next may begin
            if is_cancellation(exc):
                raise
            job.done(False, exc)
        else:
            job.done(True, value)

    def close(self) -> None:
        """Stop taking work; what is queued still runs, then the queue's threads end."""
        self._closed = True
        self._send.close()
        if self._own is not None:
            self._own.close()
        if self.aio is not None:
            self.aio.close()


class _ActorThreads:
    """An actor's own threads, each taking sync work from one queue, in order.

    Each thread is one long ``trio.to_thread.run_sync`` (so ``trio.from_thread`` works in
    sync methods as in any Trio worker thread) that loops over the queue. A call costs a
    ``SimpleQueue.put`` (a lock release waking an idle thread) on the way in; on the way out
    the thread appends the outcome to a deque and wakes Trio with ``run_sync_soon`` only if
    no wake-up is pending, so outcomes that finish together come back in one batch. That
    replaces a ``to_thread`` round trip, a scheduler pass and a task switch per call.

    Stopping abandons the ``to_thread`` call (a thread inside a long method finishes it in the
    background; the process is ending) and queues one sentinel per thread, behind the work
    already queued.
    """

    def __init__(self, actor: Actor) -> None:
        self._actor = actor
        self.queue: SimpleQueue[_Job | None] = SimpleQueue()
        self._finished: deque[tuple[_Job, tuple[bool, Any] | None]] = deque()
        self._waking = False
        self._token = trio.lowlevel.current_trio_token()
        self._lock = threading.Lock()
        self._loops = 0
        #: set when every thread has left its loop (after :meth:`close`, or never started)
        self.stopped = threading.Event()
        self.stopped.set()

    async def run(self) -> None:
        """Run one of the threads until the actor closes (or this task is cancelled)."""
        try:
            await trio.to_thread.run_sync(
                self._work,
                thread_name=f"bigactor actor {self._actor.name}",
                abandon_on_cancel=True,
                limiter=thread_limiter(),
            )
        finally:
            self.queue.put(None)  # a thread left idle by a cancelled task ends too

    def close(self) -> None:
        for _ in range(self._actor.threads):
            self.queue.put(None)

    def _work(self) -> None:
        """A thread's loop (see :meth:`_loop`), counted in :attr:`stopped`."""
        with self._lock:
            self._loops += 1
            self.stopped.clear()
        try:
            self._loop()
        finally:
            with self._lock:
                self._loops -= 1
                if not self._loops:
                    self.stopped.set()

    def _loop(self) -> None:
        """Take a job, run it, hand its outcome back; until a sentinel."""
        get, turnstile = self.queue.get, self._actor._turnstile
        while (job := get()) is not None:
            ticket = job.ticket
            done: tuple[bool, Any] | None
            if job.cancelled:
                if turnstile is not None and ticket is not None:
                    turnstile.skip(ticket)  # never started: the next may begin
                done = None
            else:
                turn = (
                    None if turnstile is None or ticket is None else functools.partial(turnstile.wait, ticket)
                )
                try:
                    done = (True, job.call.run(turn))
                except BaseException as exc:  # MethodCancelled, or anything the method raised
                    _raised(exc)
                    done = (False, exc)
            self._finished.append((job, done))
            del job, done
            if not self._waking:
                self._waking = True
                try:
                    self._token.run_sync_soon(self._drain)
                except trio.RunFinishedError:
                    return

    def _drain(self) -> None:
        """On the event loop: hand every finished job's outcome to its ``done``."""
        self._waking = False  # before taking: a job finishing from here on wakes us again
        finished = self._finished
        while finished:
            job, done = finished.popleft()
            job.finished = True
            if job.then is not None:
                self.queue.put(job.then)
            if done is not None:
                try:
                    job.done(*done)
                except Exception:  # pragma: no cover - done never raises; the loop must not die
                    log.exception("actor %s: handing back a result failed", self._actor.name)


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
        name = self._name(name, type(instance).__name__)
        actor = Actor(name, instance, max_concurrency, self._run_sync)
        self.actors[name] = actor
        self._nursery.start_soon(actor.serve, name=f"actor {name}")
        return actor

    async def spawn(
        self, name: str | None, cls: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any],
        max_concurrency: int | None = None, asyncio: bool = False,
    ) -> Actor:  # fmt: skip
        """Construct ``cls(*args, **kwargs)`` on the new actor's own thread, then host it as
        ``name`` (a fresh name if None; a taken one is a ValueError, before anything runs).

        Its constructor, sync methods and sync ``shutdown()`` hook all run on that thread, as
        a class that keeps thread-bound state (an ``sqlite3`` connection, thread-locals)
        expects. With ``asyncio``, the actor gets an asyncio loop of its own (see
        ``_aioloop``), and its constructor runs there instead. A constructor that raises (or
        is cancelled) hosts nothing: the threads end.
        """
        kind = getattr(cls, "__name__", type(cls).__name__)
        check_max_concurrency(kind, max_concurrency)
        name = self._name(name, kind)
        actor = Actor(name, None, max_concurrency, self._run_sync, asyncio=asyncio)
        self._nursery.start_soon(actor.serve, name=f"actor {name}")
        build = functools.partial(cls, *args, **kwargs)
        try:
            instance = await (actor.aio.call(build) if actor.aio is not None else actor.run_sync(build))
            self._name(name, kind)  # not taken while it was being constructed
        except BaseException:
            actor.close()
            raise
        actor.instance = instance
        actor.methods = method_table(instance)
        self.actors[name] = actor
        return actor

    def _name(self, name: str | None, kind: str) -> str:
        """``name``, or a fresh one made from ``kind`` if None; ValueError if it is taken."""
        if name is None:
            self._counter += 1
            name = f"{kind}-{self._counter}"
        if name in self.actors:
            raise ValueError(f"machine {self.addr} already hosts an actor named {name!r}")
        return name

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


#: what runs in the method's own thread when a method raises (``open_cluster(debug=True)``:
#: a post-mortem debugger session), set by :func:`set_post_mortem`
_post_mortem: Callable[[BaseException], None] | None = None


def set_post_mortem(hook: Callable[[BaseException], None] | None) -> None:
    """Run ``hook(exc)`` where a method raised ``exc``, before its caller hears of it."""
    global _post_mortem
    _post_mortem = hook


def _raised(exc: BaseException) -> None:
    """A method raised ``exc`` (not a cancellation): the post-mortem hook, if any, runs."""
    if _post_mortem is not None and not isinstance(exc, MethodCancelled):
        _post_mortem(exc)


def _hint_asyncio(exc: BaseException) -> None:
    """Say what to do when an async method of a Trio actor asked for asyncio's loop."""
    if isinstance(exc, RuntimeError) and exc.args == ("no running event loop",):
        exc.args = (
            "no running event loop: bigactor runs an actor's async methods on Trio; for a method "
            "that uses asyncio libraries, spawn its actor with cluster.options(asyncio=True)",
        )


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
                    value = await actor.await_method(fn(*args, **kwargs))
                if inspect.iscoroutine(value):
                    raise _returned_coroutine(value, actor, target, ASYNC)
            except BaseException as exc:
                if is_cancellation(exc):
                    raise
                if actor.aio is None:
                    _hint_asyncio(exc)
                _raised(exc)
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
                            while True:
                                try:
                                    item = await actor.await_method(agen.__anext__())
                                except StopAsyncIteration:
                                    break
                                sent += await self._send_item(conn, call_id, credit, item)
                        finally:
                            await actor.await_method(agen.aclose())
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
