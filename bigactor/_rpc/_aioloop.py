"""Actors whose async methods use asyncio: an asyncio loop on a thread of the actor's own.

A machine runs on Trio, and an ``async def`` method normally runs as a Trio task. A method that
awaits asyncio libraries (``asyncio.sleep``, an asyncio HTTP client or database driver) needs a
running asyncio loop instead. An actor spawned with ``cluster.options(asyncio=True)`` gets one:
a real ``asyncio`` event loop, run forever on a thread of its own (``bigactor asyncio NAME``).
Its constructor, its async methods and async generator methods, and an async ``shutdown()``
hook run there, so ``asyncio.get_running_loop()`` works in all of them and every asyncio
library sees an ordinary loop; its sync methods stay on the actor's own thread.

Why not trio-asyncio, which runs an asyncio loop *inside* Trio: it needs every crossing
between the two marked in the code (``aio_as_trio``), which actor code written for asyncio
does not have, and its maintainers advise against its implicit mode in non-trivial programs.
A loop of the actor's own needs nothing of the actor's code: the only crossing is the call
itself, which bigactor makes.

A call is handed to the loop with ``asyncio.run_coroutine_threadsafe``; its outcome comes
back to Trio through the Trio token. Cancelling the call (its caller was cancelled or lost)
cancels the asyncio task: ``asyncio.CancelledError`` is raised in the method at its current
``await``, as asyncio code expects, and its ``finally`` blocks run on the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

import trio

from ._threads import thread_limiter


class AsyncioLoop:
    """An asyncio event loop on a thread of its own, for one actor (see the module)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.loop = asyncio.new_event_loop()
        self._token = trio.lowlevel.current_trio_token()

    async def serve(self) -> None:
        """Run the loop's thread until :meth:`close` (or this task is cancelled)."""
        try:
            await trio.to_thread.run_sync(
                self._run,
                thread_name=f"bigactor asyncio {self.name}",
                abandon_on_cancel=True,  # the loop stops on close; a stuck method ends with the process
                limiter=thread_limiter(),
            )
        finally:
            self.close()

    def _run(self) -> None:
        loop = self.loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            # What is still running is cancelled and given its chance to clean up, as
            # asyncio.run does at the end.
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def close(self) -> None:
        """Stop the loop (what runs on it is cancelled first); idempotent."""
        with contextlib.suppress(RuntimeError):  # closed already
            self.loop.call_soon_threadsafe(self.loop.stop)

    async def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coro`` on the loop and return its result (or raise its exception).

        Cancelling the caller cancels the asyncio task running it.
        """
        try:
            future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        except RuntimeError:  # the loop is closed: the actor has stopped
            coro.close()
            raise trio.ClosedResourceError(f"actor {self.name} has stopped") from None
        done = trio.Event()

        def finished(_: concurrent.futures.Future[Any]) -> None:
            with contextlib.suppress(trio.RunFinishedError):  # the machine is ending
                self._token.run_sync_soon(done.set)

        future.add_done_callback(finished)
        try:
            await done.wait()
        except BaseException:
            future.cancel()  # the task is cancelled on the loop, at its current await
            raise
        return future.result()

    async def call(self, fn: Callable[[], Any]) -> Any:
        """Call the plain function ``fn`` on the loop (a constructor that may ask for the
        running loop) and return its result."""

        async def on_loop() -> Any:
            return fn()

        return await self.run(on_loop())
