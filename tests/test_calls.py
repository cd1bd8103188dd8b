"""Calls on the test system: cancellation, services, echo, remote errors, ordering, retries,
named actors."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import trio
import trio.testing
from support import (
    Counter,
    Failing,
    Holder,
    InitFails,
    Peer,
    Point,
    Recorder,
    Refused,
    Service,
    Unrebuildable,
    Unshippable,
    exactly,
    since,
    start_one,
)

import bigactor
from bigactor import (
    MachineLost,
    MachineStartError,
    RemoteError,
    Services,
    State,
    TransportError,
)
from bigactor.testing import TestSystem


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
    # retries run at 30 + 0, 1, 2.5, 4.75, 8.125, then every 5 s up to 30 + 118.125, and a last
    # one at the deadline 30 + 120: lost at 150, never before the whole timeout.
    await trio.sleep(0.5)  # keep retry_call's attempts off the keepalive's instants
    # retry_call's attempts: 0.5 + 0, 1, 2.5, 4.75, 8.125, then every 5 s: ..., 148.625 (still
    # RUNNING: TransportError), 153.625 (STOPPED: MachineLost, not retriable).
    with pytest.raises(MachineLost):
        await machine.retry_call("svc.method")
    assert since(t0) == exactly(153.625)
    assert machine.state == State.STOPPED
    assert "keepalive failed after 120.0 s" in str(machine.error)


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


async def test_named_actor_is_found_by_name(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """spawn(name="x") makes the actor reachable through cluster.actor("x")."""
    await cluster.options(name="x").spawn(Counter, 10)
    handle = await cluster.actor("x")
    assert bigactor.name_of(handle) == "x"
    assert await handle.add(5) == 15
    assert await handle.add(1) == 16


async def test_named_actor_is_found_through_its_own_cluster(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With two clusters open, cluster.actor gives a handle that works through that cluster."""
    async with bigactor.open_cluster(TestSystem()) as outer:
        await outer.options(name="x").spawn(Counter, 10)
        async with bigactor.open_cluster(TestSystem()) as inner:
            await inner.options(name="x").spawn(Counter, 20)
            assert await (await outer.actor("x")).add(1) == 11
            assert await (await inner.actor("x")).add(1) == 21


async def test_duplicate_actor_name_is_refused(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """A second actor with a taken name raises ValueError; the first keeps working."""
    first = await cluster.options(name="x").spawn(Counter, 1)
    n = len(cluster.machines())
    with pytest.raises(ValueError, match="'x'"):
        await cluster.options(name="x").spawn(Counter, 2)
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
    counter = await cluster.options(name="x").spawn(Counter, 100)
    peer = await cluster.spawn(Peer)
    assert bigactor.machine_of(peer) is not bigactor.machine_of(counter)
    assert await peer.add_by_name("x", 1) == 101
    # Names published after the peer booted reach it too.
    await cluster.options(name="y").spawn(Counter, 0)
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
