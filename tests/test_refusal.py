"""Objects that cannot cross a process are refused in the caller, before anything is sent,
with the path to them and why: locks (held or not), threads, open files, generators and
coroutines, sqlite3 connections, a held trio lock. The actor keeps serving."""

from __future__ import annotations

import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

import bigactor
from bigactor import CodecError, Services
from bigactor.testing import TestSystem


class Box:
    """Something that holds a value in an attribute, as a user's object would."""

    def __init__(self, value: Any) -> None:
        self.value = value


class Inbox:
    """Counts the calls that reached it."""

    def __init__(self) -> None:
        self.arrived = 0

    async def take(self, *args: Any, **kwargs: Any) -> str:
        self.arrived += 1
        return "taken"

    async def count(self) -> int:
        return self.arrived

    async def make_lock(self) -> dict[str, Any]:
        return {"guard": threading.Lock()}


# Each case: (what, a context manager that makes the object and cleans it up, the type name the
# path ends with, words the message must hold).
Case = tuple[str, Callable[[Path], AbstractContextManager[Any]], str, str]


@contextmanager
def held_lock(_: Path) -> Iterator[Any]:
    lock = threading.Lock()
    with lock:
        yield lock


@contextmanager
def free_lock(_: Path) -> Iterator[Any]:
    yield threading.Lock()


@contextmanager
def held_rlock(_: Path) -> Iterator[Any]:
    lock = threading.RLock()
    with lock:
        yield lock


@contextmanager
def event(_: Path) -> Iterator[Any]:
    yield threading.Event()


@contextmanager
def thread(_: Path) -> Iterator[Any]:
    t = threading.Thread(target=lambda: None)
    t.start()
    t.join()
    yield t


@contextmanager
def file_for_reading(tmp_path: Path) -> Iterator[Any]:
    (tmp_path / "notes.txt").write_text("hello")
    with open(tmp_path / "notes.txt") as f:
        yield f


@contextmanager
def file_for_writing(tmp_path: Path) -> Iterator[Any]:
    with open(tmp_path / "out.bin", "wb") as f:
        yield f


@contextmanager
def running_generator(_: Path) -> Iterator[Any]:
    gen = (i for i in range(3))
    next(gen)
    yield gen


async def nap() -> None:
    pass


@contextmanager
def coroutine(_: Path) -> Iterator[Any]:
    coro = nap()  # made, never awaited: closed below
    try:
        yield coro
    finally:
        coro.close()


@contextmanager
def sqlite_connection(_: Path) -> Iterator[Any]:
    conn = sqlite3.connect(":memory:")
    try:
        yield conn
    finally:
        conn.close()


CASES: list[Case] = [
    ("held lock", held_lock, "lock", "a lock cannot cross a process"),
    ("free lock", free_lock, "lock", "a lock cannot cross a process"),
    ("held RLock", held_rlock, "RLock", "a lock cannot cross a process"),
    ("threading.Event", event, "Event", "a threading.Event cannot cross a process"),
    ("thread", thread, "Thread", "a thread cannot cross a process"),
    ("file for reading", file_for_reading, "TextIOWrapper", "an open file cannot cross a process"),
    ("file for writing", file_for_writing, "BufferedWriter", "an open file cannot cross a process"),
    ("running generator", running_generator, "generator", "a generator cannot cross a process"),
    ("coroutine", coroutine, "coroutine", "a coroutine cannot cross a process"),
    ("sqlite3 connection", sqlite_connection, "Connection", "a database connection cannot cross a process"),
]


@pytest.mark.parametrize(("what", "make", "type_name", "words"), CASES, ids=[c[0] for c in CASES])
async def test_object_that_cannot_cross_a_process_is_refused_in_the_caller(
    cluster: bigactor.Cluster,
    tmp_path: Path,
    what: str,
    make: Callable[[Path], AbstractContextManager[Any]],
    type_name: str,
    words: str,
) -> None:
    """The call raises CodecError naming the path and why; nothing reaches the actor, which
    keeps serving."""
    inbox = await cluster.spawn(Inbox)
    with make(tmp_path) as obj:
        with pytest.raises(CodecError) as info:
            await inbox.take(1, Box(obj))
        assert info.value.path == f"arg 1 -> .value -> {type_name}"
        assert words in str(info.value), str(info.value)
        with pytest.raises(CodecError) as info:
            await inbox.take(config={"state": [obj]})
        assert info.value.path == f"kwarg 'config' -> ['state'] -> [0] -> {type_name}"
    assert await inbox.count() == 0  # nothing was sent
    assert await inbox.take("fine") == "taken"
    assert await inbox.count() == 1


async def test_thread_is_named_not_the_lock_inside_it(cluster: bigactor.Cluster) -> None:
    """A thread subclass is refused as a thread: the path ends at it, not at its inner lock."""

    class Worker(threading.Thread):
        pass

    inbox = await cluster.spawn(Inbox)
    with pytest.raises(CodecError) as info:
        await inbox.take(Box(Worker()))
    assert info.value.path == "arg 0 -> .value -> Worker"
    assert "a thread cannot cross a process" in str(info.value)


async def test_held_trio_lock_is_refused_naming_the_task_holding_it(cluster: bigactor.Cluster) -> None:
    """A held ``trio.Lock`` refers to the task holding it, which is refused with the path."""
    inbox = await cluster.spawn(Inbox)
    lock = trio.Lock()
    async with lock:
        with pytest.raises(CodecError) as info:
            await inbox.take(Box(lock))
    assert info.value.path == "arg 0 -> .value -> ._owner -> Task"
    assert "a trio.lowlevel.Task cannot cross a process" in str(info.value)
    assert await inbox.count() == 0


class Service:
    """A service built in the driver that makes its trio primitives in ``__init__``."""

    def __init__(self) -> None:
        self.ready = trio.Event()
        self.lock = trio.Lock()
        self.send, self.receive = trio.open_memory_channel[int](1)

    async def use(self) -> bool:
        async with self.lock:
            self.ready.set()
        await self.send.send(1)
        return self.ready.is_set() and await self.receive.receive() == 1


async def test_unused_trio_primitives_travel_as_fresh_ones(cluster: bigactor.Cluster) -> None:
    """A service built in the driver with an unused Event, Lock and channel works on its
    machine: they are not refused, and arrive as fresh ones."""
    [machine] = await cluster.start(1, Services(svc=Service()))
    assert await machine.call("svc.use") is True


async def test_standard_streams_still_travel_by_name(cluster: bigactor.Cluster) -> None:
    """The standard streams are not refused: they mean the receiver's own (a function whose
    default argument is ``sys.stderr`` can be sent)."""

    def log(message: str, file: Any = sys.__stderr__) -> None:
        print(message, file=file)

    inbox = await cluster.spawn(Inbox)
    assert await inbox.take(sys.__stdout__, log) == "taken"


async def test_reply_holding_a_lock_is_refused_on_the_machine(cluster: bigactor.Cluster) -> None:
    """A reply that holds a lock raises CodecError in the caller, naming its path; the actor
    keeps serving."""
    inbox = await cluster.spawn(Inbox)
    with pytest.raises(CodecError) as info:
        await inbox.make_lock()
    assert info.value.path == "the reply -> ['guard'] -> lock"
    assert "a lock cannot cross a process" in str(info.value)
    assert await inbox.take() == "taken"


async def test_spawn_and_start_with_a_lock_start_nothing(
    cluster: bigactor.Cluster, test_system: TestSystem
) -> None:
    """A lock in a constructor's arguments or in a service is refused before any machine starts."""
    with pytest.raises(CodecError) as info:
        await cluster.spawn(Box, threading.Lock())
    assert info.value.path.endswith("-> lock")
    with pytest.raises(CodecError) as info:
        await cluster.start(1, Services(box=Box(threading.Lock())))
    assert info.value.path == "service 'box' -> .value -> lock"
    assert test_system.n() == 0


@pytest.mark.slow
async def test_refused_on_real_worker_processes(tmp_path: Path) -> None:
    """On the local system too: a held lock and a sqlite3 connection are refused in the caller,
    a lock in a worker's reply is refused there, and the worker keeps serving."""
    async with bigactor.open_cluster("local") as cluster:
        inbox = await cluster.spawn(Inbox)
        with held_lock(tmp_path) as lock, pytest.raises(CodecError) as info:
            await inbox.take(Box(lock))
        assert info.value.path == "arg 0 -> .value -> lock"
        with sqlite_connection(tmp_path) as conn, pytest.raises(CodecError) as info:
            await inbox.take(Box(conn))
        assert "a database connection cannot cross a process" in str(info.value)
        with pytest.raises(CodecError) as info:
            await inbox.make_lock()
        assert info.value.path == "the reply -> ['guard'] -> lock"
        assert await inbox.count() == 0
        assert await inbox.take() == "taken"
