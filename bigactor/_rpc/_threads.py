"""Sync methods in threads: stopping one whose caller gave up, starting them in order, and the
threads that run them (:func:`run_in_thread`; an actor's own threads are in ``_server``).

A sync actor method runs in one of its actor's threads, where Trio cannot cancel it. When its caller
gives up, :meth:`ThreadCall.cancel` raises :class:`MethodCancelled` inside that thread with
``PyThreadState_SetAsyncExc``; the interpreter raises it at the thread's next bytecode, as it
raises ``KeyboardInterrupt`` in the main thread. C code is not interrupted: a ``time.sleep(30)``
or a long numpy call runs to its end, and the exception is raised as soon as it returns to
Python bytecode.

An asynchronous exception is dangerous only where it lands: it must land inside the method,
never after it returned (in Trio's thread-pool code, or in the next job that reuses the
thread). A lock and three states make the handshake between the canceller and the thread::

    PENDING --(thread enters)--> RUNNING --(thread leaves)--------------------> DONE
                                    \\                                          ^
                                     `--(cancel: exception set)--> CANCELLING --'
                                                                   (thread leaves: the
                                                                    exception is flushed)

The canceller sets the exception only while it holds the lock and the state is RUNNING, and
then moves to CANCELLING, so the method sees it at most once. The thread moves to RUNNING
inside the wrapper's ``try`` and to DONE under the same lock; from then on the canceller sets
nothing. Wherever the exception is raised between those two points — in the method, or in
the wrapper around it — the wrapper's ``except`` catches it. If the thread leaves CANCELLING
it flushes the exception, still in the wrapper: it sets it again (which replaces one still
pending) and runs bytecode until it is raised, and catches it.

Why flush rather than withdraw (``PyThreadState_SetAsyncExc`` with NULL): on CPython 3.11
(3.13 keeps the flag per thread) the "asynchronous exception pending" flag is the
interpreter's, and only raising one clears it. A withdrawal leaves it set: every thread then
stops at every function call to look for pending work, about twice as slow, and under a
trace function (coverage, a debugger) a thread loops on that check forever. Raising clears
the flag for the whole interpreter, so an exception set at the same moment for another thread
is seen at that thread's next periodic check (the interpreter's switch interval, 5 ms)
rather than at its next bytecode.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import math
import threading
from collections.abc import Callable
from typing import Any

import trio

log = logging.getLogger("bigactor.rpc")

# A prototype of our own (PYFUNCTYPE: called with the GIL held), rather than setting argtypes
# on the process-wide ``ctypes.pythonapi`` entry other code may call differently.
_set_async_exc = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.c_ulong, ctypes.py_object)(
    ("PyThreadState_SetAsyncExc", ctypes.pythonapi)
)

_PENDING, _RUNNING, _CANCELLING, _DONE = "pending", "running", "cancelling", "done"

_local = threading.local()


class MethodCancelled(BaseException):
    """Raised inside a sync actor method whose caller gave up, at its next bytecode.

    Like ``trio.Cancelled`` it derives from ``BaseException``, so ``except Exception:`` in the
    method does not swallow it; ``finally:`` blocks and ``with`` statements run as usual. It is
    raised at most once per call, so cleanup that runs after it is never interrupted again.
    Let it propagate: the caller has already seen ``trio.Cancelled``, and whatever the method
    returns or raises after it is discarded. The caller never sees this class.
    """


def _interrupt(thread: int) -> int:
    """Set MethodCancelled to be raised in ``thread``; the number of threads hit (1)."""
    result: int = _set_async_exc(thread, MethodCancelled)
    return result


def _breaker() -> None:
    """Nothing; calling it runs the interpreter's check for a pending asynchronous exception."""


def _flush() -> None:
    """Raise here, and catch, the MethodCancelled set for this thread (pending or raised already)."""
    try:
        _set_async_exc(threading.get_ident(), MethodCancelled)  # one pending, for certain
        while True:
            _breaker()
    except MethodCancelled:
        pass


def cancelled() -> bool:
    """Whether the caller of the sync actor method running in this thread has given up.

    It is cheap (a thread-local read) and meant for loops in sync methods that want to stop
    at a point of their choosing, or for cleanup that should know: the interpreter also
    raises :class:`MethodCancelled` in the method at its next bytecode, but not inside C code
    (``time.sleep``, a numpy call), and not again once it has been raised and caught. Outside
    a sync actor method (in async methods, which get ``trio.Cancelled``, or in the driver) it
    returns False.
    """
    call: ThreadCall | None = getattr(_local, "call", None)
    return call is not None and call.requested


class ThreadCall:
    """One call of ``fn(*args, **kwargs)`` in a thread that another thread may cancel.

    :meth:`run` runs in the worker thread (once); :meth:`cancel` in any other thread. The
    state machine and why it is safe are described in this module's docstring.
    """

    __slots__ = ("_args", "_fn", "_kwargs", "_lock", "_state", "_thread", "entered", "requested")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._fn, self._args, self._kwargs = fn, args, kwargs
        self._lock = threading.Lock()
        self._state = _PENDING
        self._thread = 0
        #: whether :meth:`run` was entered (read once the thread is done with it)
        self.entered = False
        #: whether :meth:`cancel` was called
        self.requested = False

    def cancel(self) -> None:
        """Stop the call: it never starts, or :class:`MethodCancelled` is raised in it."""
        with self._lock:
            self.requested = True
            # Never into the canceller's own thread: a call run inline (the test system runs
            # sync methods on the event loop) cannot be cancelled while it runs.
            if self._state is _RUNNING and self._thread != threading.get_ident():
                self._state = _CANCELLING
                if _interrupt(self._thread) != 1:  # pragma: no cover
                    # The thread is inside run() under our lock, so it exists exactly once.
                    log.error("could not interrupt thread %d of a cancelled call", self._thread)

    def run(self, turn: Callable[[], None] | None = None) -> Any:
        """Call ``fn`` in this thread (after ``turn()``, which waits for this call's turn).

        Returns what ``fn`` returns and raises what it raises; raises :class:`MethodCancelled`
        when the call was cancelled before it started or while it ran.
        """
        self.entered = True
        if turn is not None:
            turn()
        previous = getattr(_local, "call", None)
        try:
            self._enter()
            _local.call = self
            try:
                return self._fn(*self._args, **self._kwargs)
            finally:
                self._leave()
        except MethodCancelled:
            # Raised in the method, or in this wrapper before _leave() flushed it.
            self._leave()
            raise
        finally:
            _local.call = previous

    def _enter(self) -> None:
        with self._lock:
            if self.requested:
                self._state = _DONE
                raise MethodCancelled
            self._thread = threading.get_ident()
            self._state = _RUNNING

    def _leave(self) -> None:
        with self._lock:
            cancelling = self._state is _CANCELLING
            self._state = _DONE
        if cancelling:
            # Raised already, or still pending (the method returned first, or is in C code):
            # either way it is raised and caught here, and cannot land after the method.
            _flush()


class Turnstile:
    """Lets threads begin calls in the order of their tickets, then run them side by side.

    Tickets are taken in arrival order on the event loop; a thread passes :meth:`wait` only
    once every earlier ticket has passed or been :meth:`skip`-ped (its call never reached a
    thread). The queue hands calls out in ticket order, so the lowest ticket waiting is always
    free to pass: threads never wait on each other in a cycle.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._issued = 0
        self._next = 0
        self._skipped: set[int] = set()

    def ticket(self) -> int:
        """The next ticket (event loop only)."""
        ticket, self._issued = self._issued, self._issued + 1
        return ticket

    def wait(self, ticket: int) -> None:
        """Block this thread until ``ticket``'s turn, and pass."""
        if trio.lowlevel.in_trio_run():
            # Run inline on the event loop (the test system): calls run one at a time there
            # anyway, and waiting would stop the loop that runs the earlier tickets.
            self.skip(ticket)
            return
        with self._cond:
            while self._next != ticket:
                self._cond.wait()
            self._advance()

    def skip(self, ticket: int) -> None:
        """Give up ``ticket`` (its call never reached a thread): later tickets need not wait."""
        with self._cond:
            if self._next == ticket:
                self._advance()
            else:
                self._skipped.add(ticket)

    def _advance(self) -> None:
        self._next += 1
        while self._next in self._skipped:
            self._skipped.remove(self._next)
            self._next += 1
        self._cond.notify_all()


_THREADS: trio.lowlevel.RunVar[trio.CapacityLimiter] = trio.lowlevel.RunVar("bigactor_threads")


async def run_in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run blocking work in a worker thread (constructors, hooks; the default ``RunSync``).

    As an ``ActorTable``'s ``run_sync`` it means: each actor runs its sync methods on threads of
    its own (``_server._ActorThreads``), not one ``to_thread`` call each.

    Not bounded by Trio's default of 40 threads per process: each actor's queue bounds its
    own threads (its ``max_concurrency``), and one actor's long methods must not hold up
    another actor's calls, or a spawn's constructor, on the same machine. Cancelling the
    caller waits for ``fn`` to return (it is never abandoned).
    """
    return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs), limiter=thread_limiter())


def thread_limiter() -> trio.CapacityLimiter:
    """This run's limiter for bigactor's threads: unbounded (see :func:`run_in_thread`)."""
    try:
        return _THREADS.get()
    except LookupError:
        limiter = trio.CapacityLimiter(math.inf)
        _THREADS.set(limiter)
        return limiter
