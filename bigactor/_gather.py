"""Many calls at once, results in order: :func:`gather`, :func:`as_completed`, :class:`ActorPool`.

Calls started together finish in any order, and the obvious hand-written helper loses data:
``total += await squarer.square(i)`` in concurrent tasks reads ``total`` *before* the await
and writes it back after, so every task but the last overwrites the others' updates. These
helpers keep each result with the call that made it::

    import trio, bigactor

    class Squarer:
        async def square(self, x, delay=0.0):
            await trio.sleep(delay)
            return x * x

    async def main():
        async with bigactor.open_cluster() as cluster:
            squarer = await cluster.spawn(Squarer)
            print(await bigactor.gather(squarer.square(1, 0.2), squarer.square(2)))  # [1, 4]

    trio.run(main)

Every helper follows trio's structured concurrency: its calls run in a nursery it opens in
the caller's task, no call outlives it (it returns or raises only once each call has ended),
the first error cancels the other calls (a cancelled call is cancelled on its machine too)
and is raised as itself, and cancelling the caller cancels every call. When several errors
happen before cancellation reaches the other calls (every call in flight on a machine that
is lost fails at once), they leave together as an ``ExceptionGroup``, in the order they
happened: handle them with ``except*``. None is ever dropped.

Iterating while calls run needs an ``async with``: results are consumed in the caller's task
while the calls run in a nursery, and a nursery cannot stay open across the ``yield`` of an
async generator (the consumer would run inside the generator's cancel scope, and a loop left
by ``break`` would leave the calls running until garbage collection; PEP 789). The context
manager's exit is where an early ``break`` cancels the calls still running and waits for them.
trio's own ``as_safe_channel`` (trio 0.30 and later) has the same shape; it is not used here
because bigactor supports older trio, and because it would run a generator in one more task,
one item per request, behind one more nursery wrapping every error in one more group. Here
the calls run straight in the block's nursery and send their results to a channel.
"""

from __future__ import annotations

import inspect
import itertools
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Generic, TypeAlias, TypeVar

import sniffio
import trio

T = TypeVar("T")
A = TypeVar("A")
V = TypeVar("V")
R = TypeVar("R")

#: A call to make: an awaitable (the coroutine ``handle.method(...)`` returns), or a function
#: of no arguments returning one (``functools.partial(handle.method, ...)``, trio's form).
Call: TypeAlias = Awaitable[T] | Callable[[], Awaitable[T]]

# How far a pool's map runs ahead of its consumer, in results per slot: enough to keep every
# slot busy while the consumer, or the oldest call of an ordered map, is slow.
WINDOW_PER_SLOT = 2

_END: Any = object()


async def gather(*calls: Call[T]) -> list[T]:
    """Run every call concurrently and return their results in the order of ``calls``.

    Each call is an awaitable, usually the coroutine ``handle.method(...)`` returns (it sends
    nothing before it is awaited), or a function of no arguments returning one
    (``functools.partial(handle.method, x)``, trio's form), which is called in the call's own
    task. An argument that is neither raises TypeError before anything starts, and every
    coroutine passed is closed unstarted (no "never awaited" warning).

    The first call to raise cancels the others, waits for them to end, and its exception is
    raised as itself; several errors that happen before the cancellation reaches the other
    calls leave together as an ``ExceptionGroup``. Cancelling the caller cancels every call.

    Example, with an actor ``Squarer`` whose ``square(x, delay=0.0)`` sleeps ``delay``
    seconds and returns ``x * x`` (later calls finish first)::

        squarer = await cluster.spawn(Squarer)
        calls = [squarer.square(x, delay=1 / (x + 1)) for x in range(5)]
        print(await bigactor.gather(*calls))  # [0, 1, 4, 9, 16]
    """
    _check_calls(calls, "gather")
    if sniffio.current_async_library() == "asyncio":
        return await _gather_asyncio(calls)
    results: list[Any] = [None] * len(calls)
    async with as_completed(*calls) as completed:
        async for index, value in completed:
            results[index] = value
    return results


async def _gather_asyncio(calls: tuple[Call[T], ...]) -> list[T]:
    """``gather`` for an asyncio program (see ``bigactor._aio``): the same order, and the first
    error cancels the other calls before it is raised."""
    import asyncio

    tasks = [asyncio.ensure_future(call if inspect.isawaitable(call) else call()) for call in calls]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def _trio_only(helper: str, calls: Iterable[Any] = ()) -> None:
    """Raise RuntimeError, closing ``calls`` unstarted, unless Trio runs the caller."""
    if sniffio.current_async_library() != "trio":
        _close_unstarted(calls)
        raise RuntimeError(
            f"bigactor.{helper} runs under Trio; under asyncio use bigactor.gather, or asyncio's "
            "own as_completed, gather and TaskGroup over the calls (each is an asyncio coroutine)"
        )


# Not ``open_*`` as the house style names a context manager owning a nursery: asyncio and
# ``concurrent.futures`` call this ``as_completed``, and that is the name a user looks for.
@asynccontextmanager
async def as_completed(
    *calls: Call[T],
) -> AsyncIterator[AsyncIterator[tuple[int, T]]]:
    """Run every call concurrently; iterate ``(index, result)`` pairs as the calls finish.

    ``calls`` are taken as by :func:`gather`, and ``index`` is a call's position among them.

    All calls start on entry. Leaving the block, also by ``break`` or an exception, cancels
    the calls still running and waits for them to end. The first call to raise cancels the
    others and the body (at its next checkpoint), and its exception leaves the ``async
    with`` as itself; an exception of the body leaves the same way. Several errors at once
    leave as an ``ExceptionGroup``.

    Example, with an actor ``Squarer`` whose ``square(x, delay=0.0)`` sleeps ``delay``
    seconds and returns ``x * x``::

        squarer = await cluster.spawn(Squarer)
        calls = [squarer.square(x, delay=1 / (x + 1)) for x in range(3)]
        async with bigactor.as_completed(*calls) as completed:
            print([pair async for pair in completed])  # [(2, 4), (1, 1), (0, 0)]
    """
    _check_calls(calls, "as_completed")
    _trio_only("as_completed", calls)
    send, receive = trio.open_memory_channel[tuple[int, T]](math.inf)
    try:
        async with _open_nursery(f"{len(calls)} concurrent calls") as nursery:
            for index, call in enumerate(calls):
                nursery.start_soon(_complete, index, call, send, name=f"call {index}")
            yield _Results(receive, ordered=False, with_index=True, total=len(calls))
            nursery.cancel_scope.cancel()
    finally:
        _close_unstarted(calls)


class ActorPool(Generic[A]):
    """Maps values over a fixed set of actors with at most ``per_actor`` calls on each at once.

    Like Ray's ``ActorPool``: ``fn(actor, value)`` makes one call (``lambda a, v:
    a.double(v)``), and each value goes to an actor with a free slot, the one idle longest
    first. The cap holds across every map running on the pool at once; calls made to the
    same actors outside the pool are not counted. ``actors`` may be handles or anything else
    ``fn`` knows how to call (machines, say).

    A pool keeps no tasks of its own: each map runs its calls in a nursery it opens in the
    caller's task (see :meth:`map`). An actor whose machine is lost is not replaced: its
    calls raise (``MachineLost``) like any other error, which ends the map.

    Example, with an actor ``Squarer`` whose ``square(x, delay=0.0)`` sleeps ``delay``
    seconds and returns ``x * x``::

        squarers = [await cluster.spawn(Squarer) for _ in range(3)]
        pool = bigactor.ActorPool(squarers, per_actor=2)
        async with pool.map(lambda s, x: s.square(x), range(10)) as squares:
            print([y async for y in squares])  # [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]
    """

    def __init__(self, actors: Iterable[A], *, per_actor: int = 1) -> None:
        self._actors = tuple(actors)
        if not self._actors:
            raise ValueError("an ActorPool needs at least one actor")
        if per_actor < 1:
            raise ValueError(f"per_actor must be at least 1, not {per_actor}")
        self._per_actor = per_actor
        # One token per free slot, naming its actor; a call holds its token until it ends.
        # Laid out round-robin, so that the first calls spread over every actor.
        self._free_send, self._free = trio.open_memory_channel[int](math.inf)
        for _ in range(per_actor):
            for index in range(len(self._actors)):
                self._free_send.send_nowait(index)

    @property
    def actors(self) -> tuple[A, ...]:
        """The pool's actors, in the order given."""
        return self._actors

    @property
    def per_actor(self) -> int:
        """The most calls the pool has in flight on one actor at once."""
        return self._per_actor

    def __repr__(self) -> str:
        return f"<ActorPool of {len(self._actors)} actors, {self._per_actor} calls each>"

    def map(
        self, fn: Callable[[A, V], Awaitable[R]], values: Iterable[V]
    ) -> AbstractAsyncContextManager[AsyncIterator[R]]:
        """Call ``fn(actor, value)`` for each value; iterate the results in the order of ``values``.

        ``async with pool.map(fn, values) as results: async for r in results: ...``. Calls
        start on entry, as slots free up, and ``values`` is read as they do (it may be a
        generator). The pool runs ahead of a slow consumer by at most two results per slot,
        so a long map holds a bounded number of results. Leaving the block, also by
        ``break`` or an exception, cancels the calls in flight and waits for them. The first
        call (or ``values``) to raise cancels the others and the body, and its exception
        leaves the ``async with`` as itself; several errors at once leave as an
        ``ExceptionGroup``.
        """
        return self._map(fn, values, ordered=True)

    def map_unordered(
        self, fn: Callable[[A, V], Awaitable[R]], values: Iterable[V]
    ) -> AbstractAsyncContextManager[AsyncIterator[R]]:
        """Like :meth:`map`, but iterate the results as the calls finish.

        Return what identifies a result from ``fn`` when the order matters, for example
        ``async def fn(a, v): return v, await a.double(v)``.
        """
        return self._map(fn, values, ordered=False)

    @asynccontextmanager
    async def _map(
        self, fn: Callable[[A, V], Awaitable[R]], values: Iterable[V], *, ordered: bool
    ) -> AsyncIterator[AsyncIterator[R]]:
        _trio_only("ActorPool")
        send, receive = trio.open_memory_channel[tuple[int, R]](math.inf)
        window = trio.Semaphore(WINDOW_PER_SLOT * self._per_actor * len(self._actors))
        async with _open_nursery(f"calls of a map over {len(self._actors)} actors") as nursery:
            nursery.start_soon(self._dispatch, nursery, fn, values, send, window, name="dispatch")
            yield _Results(receive, ordered=ordered, window=window)
            nursery.cancel_scope.cancel()

    async def _dispatch(
        self,
        nursery: trio.Nursery,
        fn: Callable[[A, V], Awaitable[R]],
        values: Iterable[V],
        send: trio.MemorySendChannel[tuple[int, R]],
        window: trio.Semaphore,
    ) -> None:
        # The results channel ends when this task and every call have closed their clone.
        with send:
            iterator = iter(values)
            for index in itertools.count():
                await window.acquire()
                slot = await self._free.receive()
                # The next value is read only once a call can start with it; the slot goes
                # back if there is none, or if reading it raised.
                started = False
                try:
                    value = next(iterator, _END)
                    if value is _END:
                        return
                    nursery.start_soon(self._call, fn, slot, value, index, send.clone(), name=f"call {index}")
                    started = True
                finally:
                    if not started:
                        self._free_send.send_nowait(slot)

    async def _call(
        self,
        fn: Callable[[A, V], Awaitable[R]],
        slot: int,
        value: V,
        index: int,
        send: trio.MemorySendChannel[tuple[int, R]],
    ) -> None:
        with send:
            try:
                # A call that failed a moment ago freed its slot before its error cancelled
                # the map, and the dispatcher may have used it: start nothing after the error.
                await trio.lowlevel.checkpoint_if_cancelled()
                result = await fn(self._actors[slot], value)
            finally:
                # Free the slot however the call ended (a cancelled receive loses no token,
                # and this send never blocks: the channel is unbounded).
                self._free_send.send_nowait(slot)
            send.send_nowait((index, result))


class _Results(Generic[T]):
    """The iterator an ``async with`` of this module yields: results from the calls' channel.

    The channel carries ``(index, value)`` pairs as the calls finish. Unordered, they are
    yielded as they arrive, whole when ``with_index`` else only ``value``. Ordered, a value
    is held until every lower index has been yielded. Each item yielded frees one place in
    the producer's ``window``, when there is one. Iteration ends after ``total`` items, or
    when the channel does (every producer closed its end). There is no public constructor.
    """

    def __init__(
        self,
        receive: trio.MemoryReceiveChannel[tuple[int, Any]],
        *,
        ordered: bool,
        with_index: bool = False,
        window: trio.Semaphore | None = None,
        total: int | None = None,
    ) -> None:
        self._receive = receive
        self._ordered = ordered
        self._with_index = with_index
        self._window = window
        self._left = total
        self._next = 0
        self._held: dict[int, Any] = {}

    def __aiter__(self) -> _Results[T]:
        return self

    async def __anext__(self) -> T:
        if self._left == 0:
            # Every call delivered; still a checkpoint, as trio's async functions are.
            await trio.lowlevel.checkpoint()
            raise StopAsyncIteration
        if self._ordered:
            if self._next in self._held:
                await trio.lowlevel.checkpoint()
            while self._next not in self._held:
                index, value = await self._receive_or_stop()
                self._held[index] = value
            item = self._held.pop(self._next)
            self._next += 1
        else:
            pair = await self._receive_or_stop()
            item = pair if self._with_index else pair[1]
        if self._left is not None:
            self._left -= 1
        if self._window is not None:
            self._window.release()
        result: T = item
        return result

    async def _receive_or_stop(self) -> tuple[int, Any]:
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:
            # A call that failed closed its end before its error cancelled this task: take
            # that cancellation here rather than end the loop as if every result had come.
            await trio.lowlevel.checkpoint()
            assert not self._held, "results ended with a gap (please report)"
            raise StopAsyncIteration from None


async def _complete(index: int, call: Call[T], send: trio.MemorySendChannel[tuple[int, T]]) -> None:
    awaitable = call if inspect.isawaitable(call) else call()
    send.send_nowait((index, await awaitable))


@asynccontextmanager
async def _open_nursery(what: str) -> AsyncIterator[trio.Nursery]:
    """A nursery whose errors leave as themselves: the only error as itself, several as one
    ``ExceptionGroup`` (``what`` says whose), and ``trio.Cancelled`` only if nothing else."""
    error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            yield nursery
    except BaseExceptionGroup as group:
        error = _collapse(group, what)
    if error is not None:
        # Raised outside the ``except`` block so that the error keeps its own context and
        # cause instead of gaining the nursery's group as context.
        try:
            raise error
        finally:
            del error


def _collapse(group: BaseExceptionGroup[BaseException], what: str) -> BaseException:
    # Only the group's top level: a call that raised a group of its own keeps it whole.
    errors = [e for e in group.exceptions if not isinstance(e, trio.Cancelled)]
    if not errors:
        # Only an outer cancellation: leave as trio does, one Cancelled.
        return group.exceptions[0]
    if len(errors) == 1:
        return errors[0]
    return BaseExceptionGroup(f"{len(errors)} errors from {what}", errors)


def _check_calls(calls: tuple[Any, ...], helper: str) -> None:
    for position, call in enumerate(calls):
        if inspect.isawaitable(call) or callable(call):
            continue
        hint = ""
        if isinstance(call, list | tuple):
            hint = f": pass the calls as separate arguments, {helper}(*calls)"
            _close_unstarted(call)
        elif hasattr(call, "__aiter__"):
            hint = ": a generator method's stream is iterated with `async for`, not awaited"
        _close_unstarted(calls)
        raise TypeError(
            f"{helper}: argument {position} ({type(call).__name__}) is neither an awaitable nor a "
            f"function of no arguments returning one{hint}"
        )


def _close_unstarted(calls: Iterable[Any]) -> None:
    """Close the coroutines that never ran, so that Python does not warn they were never awaited."""
    for call in calls:
        if inspect.iscoroutine(call) and inspect.getcoroutinestate(call) == inspect.CORO_CREATED:
            call.close()
