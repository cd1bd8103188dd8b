"""Shared services and helpers of the test-system tests (see test_lifecycle.py and friends).

These are the counterparts of bigmachine's machine, rpc and testsystem tests (spec §8), run on
``bigactor.testing.TestSystem``: every call and service is still serialised, but machines live in
the test's process, so ``autojump_clock`` turns keepalive, retry and timeout logic into exact
virtual times. Timelines in comments are virtual seconds after ``t0``, the moment a test starts
watching.
"""

from __future__ import annotations

import dataclasses
import random
import socket
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import trio
import trio.testing

import bigactor
from bigactor import (
    KeepaliveConfig,
    Services,
    State,
    TransportError,
)

# A short keepalive: one every 0.5 s, 0.5 s per attempt, lost after 2 s of failures.
SHORT = KeepaliveConfig(period=1.0, timeout=2.0, rpc_timeout=0.5)


def since(t0: float) -> float:
    return trio.current_time() - t0


def exactly(seconds: float) -> Any:
    """Virtual times are exact; the tolerance only absorbs float rounding."""
    return pytest.approx(seconds, abs=1e-6)


# -- services and actors (module level: they travel by reference, like a user's library) ------


@dataclasses.dataclass
class Point:
    x: int
    tags: list[str]


class Service:
    """The service of most tests: its state, an echo, errors, and a method that never returns."""

    def __init__(self, index: int = 0) -> None:
        self.index = index

    def method(self) -> int:
        return self.index

    async def echo(self, value: Any) -> Any:
        return value

    async def hang(self) -> None:
        await trio.sleep_forever()

    async def fail(self, message: str) -> None:
        raise ValueError(message)

    async def numbers(self, n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i


class Refused(Exception):
    """A structured error: extra attributes beyond its message."""

    def __init__(self, reason: str, code: int) -> None:
        super().__init__(reason, code)
        self.reason = reason
        self.code = code


class Unshippable(Exception):
    """An exception that cannot be serialised on the machine (it holds a generator)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.rest = (i for i in range(3))


class Unrebuildable(Exception):
    """Serialises, but cannot be rebuilt in the caller: ``args`` do not fit ``__init__``."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a}/{b}")


class Failing:
    """Raises every kind of exception the error tests need."""

    def __init__(self) -> None:
        self.transport_errors_raised = 0

    def transport_errors(self) -> int:
        return self.transport_errors_raised

    async def value_error(self, message: str) -> None:
        raise ValueError(message)

    async def key_error(self, key: str) -> None:
        raise KeyError(key)

    async def refused(self) -> None:
        raise Refused("over quota", 7)

    async def unshippable(self) -> None:
        raise Unshippable("cannot ship")

    async def unrebuildable(self) -> None:
        raise Unrebuildable("left", "right")

    async def transport_error(self) -> None:
        self.transport_errors_raised += 1
        raise TransportError("tcp:elsewhere:1", "remote network down")


class Recorder:
    """A spawned actor that records what happens to it (built on the machine)."""

    def __init__(self) -> None:
        self.log: list[int] = []
        self.produced = 0
        self.hang_ended = trio.Event()
        self.hang_ended_by: str = ""
        self.stream_ended = trio.Event()
        self.gate = trio.Event()

    def append(self, i: int) -> None:
        self.log.append(i)

    def entries(self) -> list[int]:
        return list(self.log)

    async def echo(self, value: Any) -> Any:
        return value

    async def hang(self) -> None:
        try:
            await trio.sleep_forever()
        except BaseException as exc:
            self.hang_ended_by = type(exc).__name__
            raise
        finally:
            self.hang_ended.set()

    async def how_hang_ended(self) -> str:
        await self.hang_ended.wait()
        return self.hang_ended_by

    async def wait_gate(self) -> str:
        await self.gate.wait()
        return "passed"

    async def open_gate(self) -> None:
        self.gate.set()

    async def numbers(self, n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    def sync_numbers(self, n: int) -> Iterator[int]:
        yield from range(n)

    async def forever(self) -> AsyncIterator[int]:
        try:
            i = 0
            while True:
                self.produced += 1
                yield i
                i += 1
        finally:
            self.stream_ended.set()

    async def big_forever(self, size: int) -> AsyncIterator[bytes]:
        while True:
            self.produced += 1
            yield bytes(size)

    def produced_count(self) -> int:
        return self.produced

    async def stream_has_ended(self) -> bool:
        await self.stream_ended.wait()
        return True

    async def wait_forever_stream(self) -> AsyncIterator[int]:
        await trio.sleep_forever()
        yield 0

    async def three_then_fail(self) -> AsyncIterator[int]:
        for i in range(3):
            yield i
        raise ValueError("failed after three")

    async def chunks(self, n: int, size: int) -> AsyncIterator[bytes]:
        for i in range(n):
            yield random.Random(i).randbytes(size)


class Counter:
    def __init__(self, start: int = 0) -> None:
        self.n = start

    async def add(self, k: int) -> int:
        self.n += k
        return self.n


class Peer:
    """An actor that reaches others through its worker-side cluster (``init(ctx)``)."""

    async def init(self, ctx: bigactor.Context) -> None:
        await trio.lowlevel.checkpoint()
        self.addr = ctx.addr
        self.cluster = ctx.cluster

    async def where(self) -> str:
        return self.addr

    async def ping_by_dial(self, addr: str) -> tuple[bool, int]:
        machine = await self.cluster.dial(addr)
        return machine.owned, await machine.call("Supervisor.ping", 42)

    async def add_by_name(self, name: str, k: int) -> int:
        handle = await self.cluster.actor(name)
        return int(await handle.add(k))

    async def add_by_handle(self, handle: bigactor.ActorHandle, k: int) -> int:
        return int(await handle.add(k))


class InitFails:
    def init(self, ctx: bigactor.Context) -> None:
        raise RuntimeError("init exploded")

    def method(self) -> int:
        return 1


class Holder:
    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn


WATCHDOG_KILLED_AT: list[float] = []


class Watched:
    async def hang(self) -> None:
        try:
            await trio.sleep_forever()
        finally:
            WATCHDOG_KILLED_AT.append(trio.current_time())


async def start_one(cluster: bigactor.Cluster, **services: Any) -> bigactor.Machine:
    """Start one machine, wait until it runs and its first keepalive has been answered."""
    [machine] = await cluster.start(1, Services(**services))
    assert await machine.wait(State.RUNNING) == State.RUNNING
    await trio.testing.wait_all_tasks_blocked()
    return machine


# -- the test system and its fixtures (TestTestSystem) ----------------------------------------
