"""Semantics on the in-process test system: keepalives, timeouts, errors, streams, ordering.

These are the counterparts of bigmachine's machine, rpc and testsystem tests (spec §8), run on
``bigactor.testing.TestSystem``: every call and service is still serialised, but machines live in
the test's process, so ``autojump_clock`` turns keepalive, retry and timeout logic into exact
virtual times.

Timelines in comments are virtual seconds after ``t0``, the moment the test starts watching.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import random
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import dill
import pytest
import trio
import trio.testing

import bigactor
from bigactor import (
    Environ,
    KeepaliveConfig,
    MachineLost,
    MachineStartError,
    RemoteError,
    Services,
    State,
    TransportError,
)
from bigactor._rpc._connection import STREAM_WINDOW
from bigactor.supervisor import WatchdogConfig
from bigactor.testing import TestSystem

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


async def test_fixtures_give_a_cluster_on_the_test_system(
    cluster: bigactor.Cluster, test_system: TestSystem
) -> None:
    """The ``cluster`` fixture runs on the ``test_system`` fixture's system."""
    assert cluster.system is test_system
    assert test_system.n() == 0
    assert cluster.machines() == []


async def test_service_state_is_shipped_by_value_and_kill_breaks_calls(
    cluster: bigactor.Cluster, test_system: TestSystem, autojump_clock: trio.testing.MockClock
) -> None:
    """A service travels as a copy; ``kill`` ends the machine and the next call fails retriably."""
    svc = Service(index=1)
    machine = await start_one(cluster, svc=svc)
    svc.index = 99  # the machine got a copy when it started
    assert await machine.call("svc.method") == 1
    assert test_system.n() == 1
    assert test_system.kill()
    assert test_system.n() == 0
    assert not test_system.kill()  # nothing left to kill
    with pytest.raises(TransportError) as info:
        await machine.call("svc.method")
    # Transport loss is retriable and is never confused with an error raised remotely.
    assert info.value.retriable
    assert not isinstance(info.value, RemoteError)
    assert info.value.addr == machine.addr


async def test_call_pending_when_its_machine_is_killed_fails_retriably(
    cluster: bigactor.Cluster, test_system: TestSystem, autojump_clock: trio.testing.MockClock
) -> None:
    """A call in flight when its machine dies raises TransportError instead of hanging."""
    machine = await start_one(cluster, svc=Service())
    t0 = trio.current_time()
    async with trio.open_nursery() as nursery:

        async def pending() -> None:
            with pytest.raises(TransportError):
                await machine.call("svc.hang")
            # The test system cannot see a machine's death (only the keepalive can), so the
            # broken connection is reported at once, as a retriable transport error.
            assert since(t0) == exactly(0.0)

        nursery.start_soon(pending)
        await trio.testing.wait_all_tasks_blocked()
        test_system.kill(machine)
    assert machine.state == State.RUNNING  # only the keepalive can tell it is gone


# -- keepalive lapses ------------------------------------------------------------------------


async def test_killed_machine_stops_when_its_keepalive_lapses(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """After a kill, the keepalive declares the machine lost at the exact lapse time."""
    system = TestSystem(keepalive=SHORT)
    async with bigactor.open_cluster(system) as cluster:
        machine = await start_one(cluster, svc=Service())
        t0 = trio.current_time()
        system.kill(machine)
        # Keepalive at 0.5 fails (refused), wait 1 -> 1.5 fails; the next wait (1.5) would end
        # at 3.0, past the budget 0.5 + 2.0: lost at 1.5.
        assert await machine.wait(State.STOPPED) == State.STOPPED
        assert since(t0) == exactly(1.5)
        assert isinstance(machine.error, MachineLost)
        message = str(machine.error)
        assert "keepalive failed after 1.0 s" in message
        assert "timeout=2.0 s" in message
        assert "rpc timeout=0.5 s" in message
        assert machine.addr in message
        t1 = trio.current_time()
        with pytest.raises(MachineLost) as info:
            await machine.call("svc.method")
        assert since(t1) == 0
        assert info.value.__cause__ is machine.error
        assert machine not in cluster.machines()


async def test_keepalive_lapse_fails_pending_calls_with_machine_lost(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A call pending when the keepalive lapses raises MachineLost at the moment of the lapse."""
    system = TestSystem(keepalive=SHORT)
    async with bigactor.open_cluster(system) as cluster:
        machine = await start_one(cluster, svc=Service())
        t0 = trio.current_time()
        system.hang_keepalives(machine)
        # Attempt at 0.5 times out at 1.0; wait 1 -> attempt at 2.0 times out at 2.5; the next
        # wait (1.5) would end past 0.5 + 2.0: lost at 2.5, 2.0 s after the first failed attempt.
        with pytest.raises(MachineLost) as info:
            await machine.call("svc.hang")
        assert since(t0) == exactly(2.5)
        assert machine.state == State.STOPPED
        assert info.value.__cause__ is machine.error
        assert "keepalive failed after 2.0 s" in str(machine.error)
        assert "no reply within the rpc timeout" in str(machine.error)


@pytest.mark.parametrize(
    ("config", "after", "replies"),
    [
        (KeepaliveConfig(), 61.0, 3),  # at 0, 30 and 60: every min(300, 60) / 2 s
        (SHORT, 2.25, 5),  # at 0, 0.5, 1, 1.5 and 2: every min(300, 1) / 2 s
    ],
    ids=["default", "short"],
)
async def test_keepalives_go_out_every_half_period(
    autojump_clock: trio.testing.MockClock, config: KeepaliveConfig, after: float, replies: int
) -> None:
    """A keepalive goes out at RUNNING, then every min(reply.next, period) / 2 seconds."""
    async with bigactor.open_cluster(TestSystem(keepalive=config)) as cluster:
        machine = await start_one(cluster, svc=Service())
        assert len(machine.keepalive_reply_times) == 1
        await trio.sleep(after)
        assert len(machine.keepalive_reply_times) == replies


# -- timeouts and cancellation (TestCallTimeout, TestMachineContext) --------------------------


async def test_call_deadline_raises_too_slow_exactly(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """A hanging call under ``fail_after(2)`` raises exactly TooSlowError at +2 s."""
    machine = await start_one(cluster, svc=Service())
    t0 = trio.current_time()
    with pytest.raises(trio.TooSlowError) as info:
        with trio.fail_after(2):
            await machine.call("svc.hang")
    assert type(info.value) is trio.TooSlowError
    assert since(t0) == exactly(2.0)
    assert machine.state == State.RUNNING


async def test_call_cancelled_by_move_on_after_is_a_plain_cancellation(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """Cancelling the caller's scope cancels the call exactly as it would a local await."""
    machine = await start_one(cluster, svc=Service())
    t0 = trio.current_time()
    with trio.move_on_after(3) as scope:
        await machine.call("svc.hang")
    assert scope.cancelled_caught
    assert since(t0) == exactly(3.0)
    assert await machine.call("svc.method") == 0  # the machine is unaffected


async def test_cancelled_call_with_hung_keepalives_leaves_machine_running(
    cluster: bigactor.Cluster, test_system: TestSystem, autojump_clock: trio.testing.MockClock
) -> None:
    """With keepalives hanging, a call cancelled after 5 s returns then; the machine runs on."""
    [machine] = await cluster.start(1, Services(svc=Service()))
    test_system.hang_keepalives(machine)  # before boot: not even the first keepalive answers
    assert await machine.wait(State.RUNNING) == State.RUNNING
    t0 = trio.current_time()
    with trio.move_on_after(5) as scope:
        await machine.call("svc.hang")
    assert scope.cancelled_caught
    assert since(t0) == exactly(5.0)
    # The keepalive budget (2 min) has not run out: still RUNNING and answering.
    assert machine.state == State.RUNNING
    assert machine.error is None
    assert await machine.call("svc.method") == 0


async def test_caller_cancellation_cancels_the_remote_method(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """The remote async method is cancelled (its ``finally`` runs) when the caller gives up."""
    recorder = await cluster.spawn(Recorder)
    with trio.move_on_after(1) as scope:
        await recorder.hang()
    assert scope.cancelled_caught
    with trio.fail_after(1):
        assert await recorder.how_hang_ended() == "Cancelled"


async def test_async_methods_interleave(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """An async method waiting on the actor's state is released by a later call."""
    recorder = await cluster.spawn(Recorder)
    async with trio.open_nursery() as nursery:
        results: list[str] = []

        async def wait_gate() -> None:
            results.append(await recorder.wait_gate())

        nursery.start_soon(wait_gate)
        await trio.testing.wait_all_tasks_blocked()
        assert results == []
        await recorder.open_gate()
    assert results == ["passed"]


# -- services: serialisation and init (TestService*FastFail) ---------------------------------


async def test_unserialisable_service_fails_before_anything_starts(
    cluster: bigactor.Cluster, test_system: TestSystem
) -> None:
    """An unserialisable service raises CodecError naming its path; no machine is started."""
    with socket.socket() as conn, pytest.raises(bigactor.CodecError) as info:
        await cluster.start(1, Services(ok=Service(), x=Holder(conn)))
    assert "service 'x'" in info.value.path
    assert info.value.path.endswith(".conn -> socket")
    assert test_system.n() == 0
    assert cluster.machines() == []


async def test_unserialisable_argument_fails_in_the_caller(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """An argument that cannot be serialised raises CodecError naming it; nothing is sent."""
    machine = await start_one(cluster, svc=Service())
    with socket.socket() as conn, pytest.raises(bigactor.CodecError) as info:
        await machine.call("svc.echo", Holder(conn))
    assert info.value.path == "arg 0 -> .conn -> socket"
    assert machine.state == State.RUNNING


async def test_service_init_failure_fails_the_machine_fast(
    cluster: bigactor.Cluster, test_system: TestSystem, autojump_clock: trio.testing.MockClock
) -> None:
    """A service whose ``init`` raises stops the machine at once with MachineStartError."""
    t0 = trio.current_time()
    [machine] = await cluster.start(1, Services(svc=InitFails()))
    with pytest.raises(MachineLost) as info:
        await machine.call("svc.method")  # waits for RUNNING, which never comes
    assert machine.state == State.STOPPED
    assert await machine.wait(State.RUNNING) == State.STOPPED
    assert since(t0) == 0  # no retries, no waiting
    error = machine.error
    assert isinstance(error, MachineStartError)
    assert "init exploded" in str(error)
    assert "RuntimeError" in str(error)
    assert "'svc'" in str(error)
    assert info.value.__cause__ is error
    await trio.testing.wait_all_tasks_blocked()
    assert test_system.n() == 0  # the failed machine does not linger


async def test_async_init_gets_the_machine_address_and_a_working_cluster(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """``await init(ctx)`` runs on the machine with its address and a cluster that can dial."""
    a, b = await cluster.start(2, Services(peer=Peer()))
    for m in (a, b):
        assert await m.wait(State.RUNNING) == State.RUNNING
    assert await a.call("peer.where") == a.addr
    assert await b.call("peer.where") == b.addr
    owned, seq = await a.call("peer.ping_by_dial", b.addr)
    assert (owned, seq) == (False, 42)


# -- echo and errors (TestServer, TestNetError) ----------------------------------------------

ECHO_VALUES = [
    None,
    0,
    "text",
    b"\x00\xffbytes",
    {"a": {"b": [1, 2, {"c": (3, None)}]}, "d": {1, 2}},
    Point(3, ["x", "y"]),
    [Point(1, []), {"p": Point(2, ["z"])}],
]


@pytest.mark.parametrize("value", ECHO_VALUES, ids=repr)
async def test_echo_round_trips_values(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock, value: Any
) -> None:
    """A value sent to the machine and back is equal to the original."""
    machine = await start_one(cluster, svc=Service())
    back = await machine.call("svc.echo", value)
    assert back == value
    assert type(back) is type(value)


async def test_remote_exception_keeps_its_type_and_message(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """A remote ValueError is a ValueError and a RemoteError, with the message and traceback."""
    machine = await start_one(cluster, failing=Failing())
    with pytest.raises(ValueError, match=r"^xyz") as info:
        await machine.call("failing.value_error", "xyz")
    exc = info.value
    assert isinstance(exc, RemoteError)
    assert not exc.retriable
    assert exc.type_name == "ValueError"
    assert exc.message == "xyz"
    assert str(exc) == "xyz"
    assert exc.addr == machine.addr
    assert "value_error" in exc.remote_traceback
    assert "raise ValueError(message)" in exc.remote_traceback
    assert any(exc.remote_traceback.strip() in note for note in exc.__notes__)
    with pytest.raises(KeyError) as key_info:
        await machine.call("failing.key_error", "k")
    assert isinstance(key_info.value, RemoteError)
    assert str(key_info.value) == "'k'"


async def test_structured_remote_exception_keeps_its_attributes(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """A custom exception arrives as its own type with its extra attributes."""
    machine = await start_one(cluster, failing=Failing())
    with pytest.raises(Refused) as info:
        await machine.call("failing.refused")
    exc = info.value
    assert isinstance(exc, RemoteError)
    assert (exc.reason, exc.code) == ("over quota", 7)
    assert exc.args == ("over quota", 7)
    assert str(exc) == str(Refused("over quota", 7))


async def test_unserialisable_remote_exception_arrives_as_remote_error(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """An exception the machine cannot serialise arrives as RemoteError with its type and text."""
    machine = await start_one(cluster, failing=Failing())
    with pytest.raises(RemoteError) as info:
        await machine.call("failing.unshippable")
    exc = info.value
    assert type(exc) is RemoteError
    assert exc.type_name == f"{Unshippable.__module__}.Unshippable"
    assert exc.message == "cannot ship"
    assert "raise Unshippable" in exc.remote_traceback
    assert exc.addr == machine.addr


async def test_unrebuildable_remote_exception_arrives_as_remote_error(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """An exception the caller cannot rebuild arrives as RemoteError with its type and text."""
    machine = await start_one(cluster, failing=Failing())
    with pytest.raises(RemoteError) as info:
        await machine.call("failing.unrebuildable")
    exc = info.value
    assert type(exc) is RemoteError
    assert exc.type_name == f"{Unrebuildable.__module__}.Unrebuildable"
    assert exc.message == "left/right"
    assert "raise Unrebuildable" in exc.remote_traceback


async def test_remote_transport_error_is_a_remote_error(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """A TransportError raised by the remote method is a RemoteError, with its own text."""
    machine = await start_one(cluster, failing=Failing())
    with pytest.raises(RemoteError) as info:
        await machine.call("failing.transport_error")
    exc = info.value
    assert isinstance(exc, TransportError)
    assert exc.type_name == "bigactor.TransportError"
    assert str(exc) == str(TransportError("tcp:elsewhere:1", "remote network down"))


async def test_retry_call_does_not_resend_after_a_remote_transport_error(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """A TransportError raised remotely says the call ran: retry_call raises it at once."""
    machine = await start_one(cluster, failing=Failing())
    t0 = trio.current_time()
    with trio.fail_after(10), pytest.raises(RemoteError):
        await machine.retry_call("failing.transport_error")
    assert since(t0) == 0
    assert await machine.call("failing.transport_errors") == 1


async def test_local_transport_error_is_not_a_remote_error(
    cluster: bigactor.Cluster, test_system: TestSystem, autojump_clock: trio.testing.MockClock
) -> None:
    """A call to a killed machine fails with a local TransportError, never a RemoteError."""
    machine = await start_one(cluster, svc=Service())
    test_system.kill(machine)
    await trio.testing.wait_all_tasks_blocked()
    with pytest.raises(TransportError) as info:
        await machine.call("svc.method")
    assert not isinstance(info.value, RemoteError)
    assert info.value.retriable


async def test_unknown_actor_or_method_raises_service_not_found(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """A call to a missing actor or method raises ServiceNotFound, not a RemoteError."""
    machine = await start_one(cluster, svc=Service())
    with pytest.raises(bigactor.ServiceNotFound, match="nope") as info:
        await machine.call("svc.nope")
    assert not isinstance(info.value, RemoteError)
    with pytest.raises(bigactor.ServiceNotFound, match="ghost"):
        await machine.call("ghost.method")
    assert machine.state == State.RUNNING


# -- streams (TestStream, teststream) --------------------------------------------------------


async def test_async_generator_streams_items_in_order(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """An async generator method streams its items in order."""
    recorder = await cluster.spawn(Recorder)
    assert [x async for x in recorder.numbers(100)] == list(range(100))


async def test_empty_stream_ends_at_once(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """A generator that yields nothing ends the caller's loop at once."""
    recorder = await cluster.spawn(Recorder)
    t0 = trio.current_time()
    assert [x async for x in recorder.numbers(0)] == []
    assert since(t0) == 0


async def test_sync_generator_streams(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """A plain generator method streams like an async one."""
    recorder = await cluster.spawn(Recorder)
    assert [x async for x in recorder.sync_numbers(50)] == list(range(50))


async def test_machine_stream_iterates_a_service_generator(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """``machine.stream`` iterates a service's generator method."""
    machine = await start_one(cluster, svc=Service())
    async with machine.stream("svc.numbers", 5) as stream:
        assert [x async for x in stream] == [0, 1, 2, 3, 4]


async def test_breaking_out_of_a_stream_stops_the_generator(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """Leaving ``async with`` early stops the remote generator (its ``finally`` runs)."""
    recorder = await cluster.spawn(Recorder)
    seen = []
    async with recorder.forever() as stream:
        async for x in stream:
            seen.append(x)
            if x == 4:
                break
    assert seen == [0, 1, 2, 3, 4]
    with trio.fail_after(1):
        assert await recorder.stream_has_ended()


async def test_stream_is_back_pressured(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """The generator runs at most about one window of items ahead of the consumer."""
    recorder = await cluster.spawn(Recorder)
    consumed = 0
    async with recorder.forever() as stream:
        async for _ in stream:
            consumed += 1
            if consumed in (3, 40, 200):
                await trio.testing.wait_all_tasks_blocked()
                produced = await recorder.produced_count()
                # A window of items in flight, plus the one the generator is holding.
                assert consumed < produced <= consumed + STREAM_WINDOW + 1
            if consumed == 200:
                break


async def test_stream_error_arrives_after_the_items_before_it(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """A generator that fails after 3 items delivers those 3, then raises its exception."""
    recorder = await cluster.spawn(Recorder)
    async with recorder.three_then_fail() as stream:
        assert [await anext(stream) for _ in range(3)] == [0, 1, 2]
        with pytest.raises(ValueError, match=r"^failed after three") as info:
            await anext(stream)
    assert isinstance(info.value, RemoteError)


async def test_cancel_fails_a_pending_stream_with_machine_lost(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """A stream waiting for its next item raises MachineLost when its machine is cancelled."""
    machine = await start_one(cluster, svc=Service())
    async with machine.stream("svc.numbers", 3) as stream:
        assert await anext(stream) == 0
    recorder = await cluster.spawn(Recorder)
    async with recorder.wait_forever_stream() as stream, trio.open_nursery() as nursery:

        async def cancel_soon() -> None:
            await trio.testing.wait_all_tasks_blocked()
            recorder.machine.cancel()

        nursery.start_soon(cancel_soon)
        t0 = trio.current_time()
        with pytest.raises(MachineLost):
            await anext(stream)
        assert since(t0) == 0


async def test_generator_and_plain_methods_cannot_be_mixed_up(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """Calling a generator method, or streaming a plain one, is a clear TypeError."""
    machine = await start_one(cluster, svc=Service())
    with pytest.raises(TypeError, match=r"generator method.*async for"):
        await machine.call("svc.numbers", 3)
    async with machine.stream("svc.method") as stream:
        with pytest.raises(TypeError, match=r"plain method.*await it"):
            await anext(stream)
    with pytest.raises(TypeError, match="await"):
        await machine.stream("svc.numbers", 3)  # type: ignore[misc]
    assert await machine.call("svc.method") == 0


async def test_32_mib_stream_arrives_intact(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """A 32 MiB streamed reply arrives complete and unchanged."""
    recorder = await cluster.spawn(Recorder)
    n, size = 32, 1 << 20
    expected = hashlib.sha256()
    for i in range(n):
        expected.update(random.Random(i).randbytes(size))
    got = hashlib.sha256()
    total = 0
    async with recorder.chunks(n, size) as stream:
        async for chunk in stream:
            total += len(chunk)
            got.update(chunk)
    assert total == n * size
    assert got.hexdigest() == expected.hexdigest()


async def test_32_mib_argument_and_reply_round_trip(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """A 32 MiB argument echoed back arrives unchanged (chunked on the wire)."""
    machine = await start_one(cluster, svc=Service())
    blob = random.Random(7).randbytes(32 << 20)
    assert await machine.call("svc.echo", blob) == blob


# -- ordering and concurrency ----------------------------------------------------------------


async def test_sync_calls_run_in_the_order_sent(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """Sync-method calls sent one after another by one caller run in that order."""
    recorder = await cluster.spawn(Recorder)
    async with trio.open_nursery() as nursery:
        for i in range(50):
            nursery.start_soon(recorder.append, i)
            await trio.testing.wait_all_tasks_blocked()
    assert await recorder.entries() == list(range(50))


async def test_sync_calls_queued_together_run_in_the_order_sent(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """Calls sent back to back, all pending at once, still run in the order sent."""
    recorder = await cluster.spawn(Recorder)
    sequencer = trio.testing.Sequencer()

    # A released task runs to its send without a checkpoint, so releasing the tasks in order
    # orders the sends while earlier replies are still pending.
    async def send_in_order(i: int) -> None:
        async with sequencer(i):
            pass
        await recorder.append(i)

    async with trio.open_nursery() as nursery:
        for i in range(50):
            nursery.start_soon(send_in_order, i)
    assert await recorder.entries() == list(range(50))


async def test_a_thousand_concurrent_calls_get_their_own_replies(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """1,000 concurrent calls on one connection each get their own reply."""
    recorder = await cluster.spawn(Recorder)
    results: dict[int, Any] = {}

    async def one(i: int) -> None:
        results[i] = await recorder.echo(("reply", i))

    async with trio.open_nursery() as nursery:
        for i in range(1000):
            nursery.start_soon(one, i)
    assert results == {i: ("reply", i) for i in range(1000)}


# -- retry_call ------------------------------------------------------------------------------


async def test_retry_call_raises_non_retriable_errors_at_once(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """A remote application error is not retried: it is raised at once."""
    machine = await start_one(cluster, svc=Service())
    t0 = trio.current_time()
    with trio.fail_after(10), pytest.raises(ValueError, match=r"^no"):
        await machine.retry_call("svc.fail", "no")
    assert since(t0) == 0


async def test_retry_call_backs_off_until_the_deadline(
    cluster: bigactor.Cluster, test_system: TestSystem, autojump_clock: trio.testing.MockClock
) -> None:
    """Against a dead machine, retry_call backs off 1, 1.5, 2.25, 3.375 s and gives up in time."""
    machine = await start_one(cluster, svc=Service())
    test_system.kill(machine)
    await trio.testing.wait_all_tasks_blocked()  # the driver has seen the connection close
    t0 = trio.current_time()
    # Attempts (each refused at once) at 0, 1, 2.5, 4.75 and 8.125; the next wait (5 s) would
    # end at 13.125, past the deadline at 10: the last TransportError is raised at 8.125.
    with trio.fail_after(10), pytest.raises(TransportError):
        await machine.retry_call("svc.method")
    assert since(t0) == exactly(8.125)
    assert machine.state == State.RUNNING  # the keepalive has not lapsed yet


async def test_retry_call_without_time_for_a_retry_raises_the_error(
    cluster: bigactor.Cluster, test_system: TestSystem, autojump_clock: trio.testing.MockClock
) -> None:
    """When even the first wait would pass the deadline, the first error is raised at once."""
    machine = await start_one(cluster, svc=Service())
    test_system.kill(machine)
    await trio.testing.wait_all_tasks_blocked()
    t0 = trio.current_time()
    with trio.fail_after(0.5), pytest.raises(TransportError):
        await machine.retry_call("svc.method")
    assert since(t0) == 0


async def test_retry_call_stops_when_the_machine_is_lost(
    cluster: bigactor.Cluster, test_system: TestSystem, autojump_clock: trio.testing.MockClock
) -> None:
    """Without a deadline, retry_call retries until the keepalive declares the machine lost."""
    machine = await start_one(cluster, svc=Service())
    t0 = trio.current_time()
    test_system.kill(machine)
    # Default keepalive (period 60, timeout 120): the next keepalive at 30 is refused; its
    # retries run at 30 + 0, 1, 2.5, 4.75, 8.125, then every 5 s until the next wait would end
    # past 30 + 120: lost at 30 + 118.125 = 148.125.
    await trio.sleep(0.5)  # keep retry_call's attempts off the keepalive's instants
    # retry_call's attempts: 0.5 + 0, 1, 2.5, 4.75, 8.125, then every 5 s: ..., 143.625 (still
    # RUNNING: TransportError), 148.625 (STOPPED: MachineLost, not retriable).
    with pytest.raises(MachineLost):
        await machine.retry_call("svc.method")
    assert since(t0) == exactly(148.625)
    assert machine.state == State.STOPPED
    assert "keepalive failed after 118.1 s" in str(machine.error)


async def test_retry_call_does_not_retry_a_stopped_machine(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """MachineLost is not retriable: retry_call on a cancelled machine raises at once."""
    machine = await start_one(cluster, svc=Service())
    machine.cancel()
    t0 = trio.current_time()
    with pytest.raises(MachineLost):
        await machine.retry_call("svc.method")
    assert since(t0) == 0


# -- the Machine API -------------------------------------------------------------------------


async def test_states_only_move_forward(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """wait(RUNNING) returns RUNNING; after cancel() it returns STOPPED at once, and error sticks."""
    [machine] = await cluster.start(1, Services(svc=Service()))
    assert machine.state in (State.UNSTARTED, State.STARTING)
    assert machine.error is None
    assert await machine.wait(State.RUNNING) == State.RUNNING
    assert machine.owned
    machine.cancel()
    assert machine.state == State.STOPPED
    t0 = trio.current_time()
    assert await machine.wait(State.RUNNING) == State.STOPPED
    assert await machine.wait(State.STARTING) == State.STOPPED
    assert since(t0) == 0
    error = machine.error
    assert isinstance(error, MachineLost)
    assert "cancelled" in str(error)
    machine.cancel()
    assert machine.error is error


async def test_first_error_sticks(autojump_clock: trio.testing.MockClock) -> None:
    """A later failure (cancel, kill) does not overwrite the error that stopped the machine."""
    system = TestSystem(keepalive=SHORT)
    async with bigactor.open_cluster(system) as cluster:
        machine = await start_one(cluster, svc=Service())
        system.hang_keepalives(machine)
        await machine.wait(State.STOPPED)
        error = machine.error
        assert isinstance(error, MachineLost)
        assert "keepalive" in str(error)
        machine.cancel()
        system.kill(machine)
        await trio.sleep(10)
        assert machine.error is error
        assert machine.state == State.STOPPED


async def test_cancel_fails_pending_calls_at_once(
    cluster: bigactor.Cluster, test_system: TestSystem, autojump_clock: trio.testing.MockClock
) -> None:
    """cancel() makes every pending call raise MachineLost at once, and kills the machine."""
    machine = await start_one(cluster, svc=Service())
    failed_at: list[float] = []

    async def pending() -> None:
        with pytest.raises(MachineLost) as info:
            await machine.call("svc.hang")
        assert "cancelled by the caller" in str(info.value)
        failed_at.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(pending)
        await trio.testing.wait_all_tasks_blocked()
        t0 = trio.current_time()
        machine.cancel()
    assert failed_at == [exactly(t0)] * 3
    await trio.testing.wait_all_tasks_blocked()
    assert test_system.n() == 0


async def test_machines_lists_live_machines(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """cluster.machines() lists the started machines and drops stopped ones."""
    a, b = await cluster.start(2, Services(svc=Service()))
    assert set(cluster.machines()) == {a, b}
    assert await a.wait(State.RUNNING) == State.RUNNING
    a.cancel()
    assert cluster.machines() == [b]


async def test_start_without_services_starts_nothing(
    cluster: bigactor.Cluster, test_system: TestSystem
) -> None:
    """cluster.start without Services raises ValueError before starting any machine."""
    with pytest.raises(ValueError, match="at least one service"):
        await cluster.start(1)
    with pytest.raises(ValueError, match="at least one service"):
        await cluster.start(2, Environ(["A=1"]))
    assert test_system.n() == 0
    assert cluster.machines() == []


async def test_environ_reaches_the_machine(
    cluster: bigactor.Cluster, test_system: TestSystem, autojump_clock: trio.testing.MockClock
) -> None:
    """Environ params (list or dict form, later wins) reach the machine's environment."""
    [machine] = await cluster.start(
        1, Environ(["A=1", "B=x=y"]), Services(svc=Service()), Environ({"A": "2", "C": "3"})
    )
    assert test_system.environ(machine) == {"A": "2", "B": "x=y", "C": "3"}


async def test_dial_of_a_known_address_returns_a_working_machine(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """cluster.dial returns a machine that answers calls."""
    machine = await start_one(cluster, svc=Service(index=5))
    dialed = await cluster.dial(machine.addr)
    assert dialed.addr == machine.addr
    assert dialed.state == State.RUNNING
    assert await dialed.call("svc.method") == 5


async def test_keepalive_and_resource_info(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """Keepalive statistics and mem/disk/load/info report sane values."""
    machine = await start_one(cluster, svc=Service())
    assert machine.keepalive_reply_times  # the first keepalive was answered
    assert all(t >= 0 for t in machine.keepalive_reply_times)
    assert machine.next_keepalive > time.time() + 200  # bigmachine's 5 min ask
    mem = await machine.mem_info()
    assert mem.total > 0
    assert 0 < mem.available <= mem.total
    assert 0 <= mem.percent <= 100
    assert mem.rss > 0
    disk = await machine.disk_info()
    assert disk.total > 0
    assert 0 <= disk.used <= disk.total
    assert 0 <= disk.free <= disk.total
    assert 0 <= disk.percent <= 100
    load = await machine.load_info()
    assert min(load.load1, load.load5, load.load15) >= 0
    info = await machine.info()
    assert info.pid == os.getpid()  # test machines live in this process
    assert info.bigactor == bigactor.__version__
    assert info.dill == dill.__version__


# -- named actors and actor-to-actor calls ---------------------------------------------------


async def test_named_actor_is_found_by_name(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """spawn(name="x") makes the actor reachable through cluster.actor("x")."""
    await cluster.spawn(Counter, 10, name="x")
    handle = await cluster.actor("x")
    assert handle.name == "x"
    assert await handle.add(5) == 15
    assert await handle.add(1) == 16


async def test_named_actor_is_found_through_its_own_cluster(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With two clusters open, cluster.actor gives a handle that works through that cluster."""
    async with bigactor.open_cluster(TestSystem()) as outer:
        await outer.spawn(Counter, 10, name="x")
        async with bigactor.open_cluster(TestSystem()) as inner:
            await inner.spawn(Counter, 20, name="x")
            assert await (await outer.actor("x")).add(1) == 11
            assert await (await inner.actor("x")).add(1) == 21


async def test_duplicate_actor_name_is_refused(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """A second actor with a taken name raises ValueError; the first keeps working."""
    first = await cluster.spawn(Counter, 1, name="x")
    n = len(cluster.machines())
    with pytest.raises(ValueError, match="'x'"):
        await cluster.spawn(Counter, 2, name="x")
    assert len(cluster.machines()) == n
    assert await first.add(1) == 2


async def test_unknown_actor_name_raises_service_not_found(cluster: bigactor.Cluster) -> None:
    """cluster.actor of a name nobody took raises ServiceNotFound."""
    with pytest.raises(bigactor.ServiceNotFound, match="nobody"):
        await cluster.actor("nobody")


async def test_actor_finds_a_named_actor_through_its_cluster(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """An actor on another machine looks up "x" with ctx.cluster and calls it."""
    counter = await cluster.spawn(Counter, 100, name="x")
    peer = await cluster.spawn(Peer)
    assert peer.machine is not counter.machine
    assert await peer.add_by_name("x", 1) == 101
    # Names published after the peer booted reach it too.
    await cluster.spawn(Counter, 0, name="y")
    assert await peer.add_by_name("y", 2) == 2


async def test_handle_passed_to_another_actor_calls_back(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """A handle passed as an argument is callable on the other machine (actor-to-actor)."""
    counter = await cluster.spawn(Counter, 0)
    peer = await cluster.spawn(Peer)
    assert await peer.add_by_handle(counter, 3) == 3
    assert await counter.add(1) == 4


# -- the worker's watchdog -------------------------------------------------------------------


async def test_worker_exits_after_its_boot_grace_without_keepalives(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A worker that never receives a keepalive exits at the first watchdog tick past its grace."""
    WATCHDOG_KILLED_AT.clear()
    system = TestSystem(watchdog=WatchdogConfig(tick=1, boot_grace=3))
    async with bigactor.open_cluster(system) as cluster:
        t0 = trio.current_time()  # the worker starts now: deadline t0 + 3
        [machine] = await cluster.start(1, Services(w=Watched()))
        system.hang_keepalives(machine)  # no keepalive ever reaches the worker
        assert await machine.wait(State.RUNNING) == State.RUNNING
        # Ticks at 1, 2, 3 (not past the deadline), 4: exit.
        with pytest.raises(TransportError):
            await machine.call("w.hang")
        assert system.exited
        assert [exactly(t0 + 4)] == WATCHDOG_KILLED_AT
        assert system.n() == 0


async def test_worker_exits_when_keepalives_stop_arriving(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A worker exits at the first watchdog tick past the 5 min its last keepalive asked for."""
    WATCHDOG_KILLED_AT.clear()
    # A driver patient enough (timeout 1000 s) that the worker's watchdog acts first.
    patient = KeepaliveConfig(period=60.0, timeout=1000.0, rpc_timeout=10.0)
    system = TestSystem(keepalive=patient, watchdog=WatchdogConfig(tick=1, boot_grace=3))
    async with bigactor.open_cluster(system) as cluster:
        machine = await start_one(cluster, w=Watched())
        t0 = trio.current_time()  # the last keepalive that arrives: deadline t0 + 300
        system.hang_keepalives(machine)
        # Ticks every second since the worker started (at t0): the first past the deadline
        # is at 301.
        with pytest.raises(TransportError):
            await machine.call("w.hang")
        assert system.exited
        [killed_at] = WATCHDOG_KILLED_AT
        assert killed_at - t0 == exactly(301.0)


async def test_keepalives_keep_the_worker_past_its_boot_grace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Answered keepalives push the watchdog's deadline far past the boot grace."""
    system = TestSystem(watchdog=WatchdogConfig(tick=1, boot_grace=3))
    async with bigactor.open_cluster(system) as cluster:
        machine = await start_one(cluster, svc=Service())
        await trio.sleep(100)
        assert not system.exited
        assert system.n() == 1
        assert await machine.call("svc.method") == 0


# -- errors pickle ---------------------------------------------------------------------------

ERRORS = [
    bigactor.BigActorError("boom"),
    bigactor.MachineError("test:1-1", "went away"),
    bigactor.MachineStartError("test:1-1", "init failed"),
    bigactor.MachineLost("test:1-1", "keepalive failed after 2.0 s"),
    bigactor.TransportError("test:1-1", "connection reset"),
    bigactor.RemoteError("KeyError", "'k'", "Traceback ...", "test:1-1"),
    bigactor.CodecError("cannot serialise arg 0", "arg 0 -> .conn -> socket"),
    bigactor.ServiceNotFound("test:1-1", "svc.nope", "no public method"),
    bigactor.ProtocolError("truncated frame"),
    bigactor.ClusterClosed("the cluster is closed"),
    bigactor.BigActorInternalError("oops"),
]


def test_every_error_class_is_covered() -> None:
    """The list below holds one instance of every error class bigactor exports."""
    exported = {
        obj
        for name in bigactor.__all__
        if isinstance(obj := getattr(bigactor, name), type) and issubclass(obj, BaseException)
    }
    assert exported == {type(e) for e in ERRORS}


@pytest.mark.parametrize("exc", ERRORS, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("lib", [pickle, dill], ids=["pickle", "dill"])
def test_errors_round_trip_through_pickle_and_dill(exc: BaseException, lib: Any) -> None:
    """Every error comes back with its type, text, args and attributes."""
    back = lib.loads(lib.dumps(exc))
    assert type(back) is type(exc)
    assert str(back) == str(exc)
    assert back.args == exc.args
    assert back.__dict__ == exc.__dict__


@pytest.mark.parametrize("lib", [pickle, dill], ids=["pickle", "dill"])
async def test_rebuilt_remote_exception_round_trips(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock, lib: Any
) -> None:
    """A remote KeyError (KeyError and RemoteError) pickles back to the same class and data."""
    machine = await start_one(cluster, failing=Failing())
    with pytest.raises(KeyError) as info:
        await machine.call("failing.key_error", "k")
    exc = info.value
    back = lib.loads(lib.dumps(exc))
    assert type(back) is type(exc)
    assert isinstance(back, KeyError)
    assert isinstance(back, RemoteError)
    assert str(back) == str(exc) == "'k'"
    assert back.args == exc.args
    assert back.type_name == "KeyError"
    assert back.remote_traceback == exc.remote_traceback
    assert back.addr == machine.addr
