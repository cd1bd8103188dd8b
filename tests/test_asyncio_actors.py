"""Actors whose async methods use asyncio libraries: spawned with ``options(asyncio=True)``
they run on an asyncio loop of their own; cancellation and fail-fast work as for any method,
and a Trio actor that asks for asyncio's loop says what to do. Real workers; a real asyncio
TCP server and client inside the actor stand for an asyncio network library."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import pytest
import trio

import bigactor

pytestmark = pytest.mark.slow  # real worker processes


class AsyncioService:
    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()  # the constructor runs on the loop
        self.lock = asyncio.Lock()
        self.finally_ran = False
        self.server: asyncio.base_events.Server | None = None

    async def sleep_and_add(self, a: int, b: int) -> int:
        await asyncio.sleep(0.01)
        async with self.lock:
            return a + b

    async def echo_over_tcp(self, data: bytes) -> bytes:
        """An asyncio server and client on loopback, in the method, as an asyncio library would."""

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(await reader.readexactly(len(data)))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(data)
            await writer.drain()
            back = await reader.readexactly(len(data))
            writer.close()
            await writer.wait_closed()
        return back

    async def count(self, n: int):  # type: ignore[no-untyped-def]
        for i in range(n):
            await asyncio.sleep(0)
            yield i

    async def wait_forever(self) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            self.finally_ran = True

    def saw_cancellation(self) -> bool:
        """A sync method: on the actor's own thread, not the loop's."""
        deadline = time.monotonic() + 5
        while not self.finally_ran and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.finally_ran and threading.current_thread().name.startswith("bigactor actor")

    async def thread(self) -> str:
        return threading.current_thread().name

    async def pid(self) -> int:
        return os.getpid()

    async def shutdown(self) -> None:
        await asyncio.sleep(0.01)  # an async hook runs on the loop too
        print("asyncio actor shut down", flush=True)


class TrioActor:
    async def uses_asyncio(self) -> None:
        await asyncio.sleep(0.01)


async def test_asyncio_methods_run_on_the_actors_own_loop() -> None:
    """asyncio.sleep, asyncio locks, asyncio streams and async generators work; the methods
    run on the actor's asyncio thread."""
    async with bigactor.open_cluster() as cluster:
        s = await cluster.options(asyncio=True).spawn(AsyncioService)
        assert await s.sleep_and_add(2, 3) == 5
        assert await s.echo_over_tcp(b"x" * 100_000) == b"x" * 100_000
        assert [x async for x in s.count(4)] == [0, 1, 2, 3]
        assert (await s.thread()).startswith("bigactor asyncio AsyncioService")
        assert await bigactor.gather(*(s.sleep_and_add(i, i) for i in range(20))) == [
            2 * i for i in range(20)
        ]


async def test_cancelling_the_caller_cancels_the_asyncio_task() -> None:
    """A caller that gives up cancels the asyncio task: CancelledError at its await, its
    finally runs, and the actor serves on."""
    async with bigactor.open_cluster() as cluster:
        s = await cluster.options(asyncio=True).spawn(AsyncioService)
        with trio.move_on_after(0.5):
            await s.wait_forever()
        assert await s.saw_cancellation()
        assert await s.sleep_and_add(1, 1) == 2


async def test_a_killed_machine_fails_its_pending_asyncio_call_at_once() -> None:
    """Fail-fast holds: SIGKILL of the worker raises MachineLost in the pending call."""
    async with bigactor.open_cluster() as cluster:
        s = await cluster.options(asyncio=True).spawn(AsyncioService)
        pid = await s.pid()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_kill_soon, pid)
            with pytest.raises(bigactor.MachineLost), trio.fail_after(10):
                await s.wait_forever()


async def _kill_soon(pid: int) -> None:
    await trio.sleep(0.3)
    os.kill(pid, signal.SIGKILL)


async def test_a_trio_actor_asking_for_asyncio_says_how_to_spawn_it() -> None:
    """Without asyncio=True, the error says the methods run on Trio and what to pass."""
    async with bigactor.open_cluster() as cluster:
        t = await cluster.spawn(TrioActor)
        with pytest.raises(
            RuntimeError, match=r"runs an actor's async methods on Trio.*options\(asyncio=True\)"
        ):
            await t.uses_asyncio()


async def test_stopping_an_asyncio_actor_runs_its_async_shutdown_on_the_loop(
    capfd: pytest.CaptureFixture[str],
) -> None:
    """cluster.stop runs the async shutdown() hook on the actor's loop (asyncio.sleep works)."""
    async with bigactor.open_cluster() as cluster:
        s = await cluster.options(asyncio=True).spawn(AsyncioService)
        await cluster.stop(s)
    assert "asyncio actor shut down" in capfd.readouterr().err
