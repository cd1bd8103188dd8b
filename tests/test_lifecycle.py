"""Machine lifecycle on the test system: kill, keepalives, timeouts, states, watchdog."""

from __future__ import annotations

import os
import time

import cloudpickle
import pytest
import trio
import trio.testing
from support import SHORT, WATCHDOG_KILLED_AT, Service, Watched, exactly, since, start_one

import bigactor
from bigactor import (
    Environ,
    KeepaliveConfig,
    MachineLost,
    RemoteError,
    Services,
    State,
    TransportError,
)
from bigactor.supervisor import WatchdogConfig
from bigactor.testing import TestSystem


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
    """A service travels as a copy; ``kill`` breaks calls: one already on the connection may
    have run (TransportError), one that finds no connection never left (CallNotSent)."""
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
    # Transport loss is never confused with an error raised remotely.
    assert not isinstance(info.value, RemoteError)
    assert info.value.addr == machine.addr
    with pytest.raises(bigactor.CallNotSent) as not_sent:
        await machine.call("svc.method")  # no connection can be made: nothing left
    assert not_sent.value.retriable
    assert not isinstance(not_sent.value, RemoteError)


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
        # Keepalive at 0.5 fails (refused), wait 1 -> 1.5 fails; the next wait (1.5) is cut to
        # the deadline 0.5 + 2.0: the attempt at 2.5 fails too, and the machine is lost then,
        # never before its whole timeout has passed.
        assert await machine.wait(State.STOPPED) == State.STOPPED
        assert since(t0) == exactly(2.5)
        assert isinstance(machine.error, MachineLost)
        message = str(machine.error)
        assert "keepalive failed after 2.0 s" in message
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
        # Attempt at 0.5 times out at 1.0; wait 1 -> attempt at 2.0 times out at 2.5, the
        # deadline 0.5 + 2.0: lost at 2.5, 2.0 s after the first failed attempt.
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


async def test_start_without_services_starts_bare_machines(
    cluster: bigactor.Cluster, test_system: TestSystem
) -> None:
    """cluster.start without Services starts bare machines, with their Environ, to spawn on."""
    machines = await cluster.start(2, Environ(["A=1"]))
    assert test_system.n() == 2
    for m in machines:
        assert await m.wait(State.RUNNING) == State.RUNNING
        assert list(await m.call("Supervisor.actors")) == ["Supervisor"]
    actor = await cluster.options(machine=machines[1]).spawn(Service, 5)
    assert bigactor.machine_of(actor) is machines[1]
    assert await actor.echo("x") == "x"


async def test_environ_reaches_the_machine(
    cluster: bigactor.Cluster, test_system: TestSystem, autojump_clock: trio.testing.MockClock
) -> None:
    """Environ params (list or dict form, later wins) reach the machine's environment."""
    [machine] = await cluster.start(
        1, Environ(["A=1", "B=x=y"]), Services(svc=Service()), Environ({"A": "2", "C": "3"})
    )
    assert test_system.environ(machine).items() >= {"A": "2", "B": "x=y", "C": "3"}.items()


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
    assert info.pickler == f"cloudpickle {cloudpickle.__version__}"


# -- named actors and actor-to-actor calls ---------------------------------------------------


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


async def test_a_machine_that_stops_mid_dial_fails_the_dialing_call_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A call that redials a broken connection while the machine stops raises MachineLost at
    the stop, not after the dial's handshake timeout (a host that is gone never answers)."""
    system = TestSystem(keepalive=SHORT)
    async with bigactor.open_cluster(system) as cluster:
        machine = await start_one(cluster, svc=Service())
        [instance] = system._all
        # From now on a dial reaches nobody: the machine's listener drops every connection
        # unseen, so the websocket upgrade waits for an answer that never comes.
        instance.listener.send.send_nowait = lambda stream: None
        conn = machine._conn
        assert conn is not None
        conn.abort(bigactor.TransportError(machine.addr, "the connection broke"))
        outcome: list[BaseException] = []

        async def call() -> None:
            try:
                await machine.call("svc.method")
            except BaseException as exc:
                outcome.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(call)
            await trio.sleep(1)  # the call is dialing now
            assert not outcome
            t0 = trio.current_time()
            machine.cancel()
        assert since(t0) == 0
        [error] = outcome
        assert isinstance(error, MachineLost)
