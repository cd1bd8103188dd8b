"""Machine: one worker process as the driver sees it, with its lifecycle and calls.

States only move forward: ``UNSTARTED < STARTING < RUNNING < STOPPED``. The first error that
stops a machine is kept (``machine.error``) and names its cause: the process's exit code or
signal, a keepalive lapse with its timing, ``cancel()``, a failed boot or service ``init``.

Fail fast: once a machine stops, every call pending on it raises :class:`MachineLost` at once,
and so does every new call. An owned machine is kept alive by keepalives (period, timeout and
per-attempt timeout from its system's :class:`KeepaliveConfig`); a dialed one is only pinged.

Draining: a worker may give notice that its machine will go away soon (a spot instance being
reclaimed: ``Worker.notice``). An owned machine subscribes to its worker's notices
(``Supervisor.notices``, a stream the worker replays from where the driver left off, so a notice
given while no connection was up is not lost); a notice makes the machine ``draining`` without
changing its state, and the error of its later loss names the notice.

Output: a machine's lines reach the driver's stderr prefixed ``addr: `` (see ``_output``), read
either by its system (``Instance.tail``: a pipe on this host) or, for a machine on another host
(``Instance.output_over_channel``), from its worker over the authenticated connection
(``Supervisor.output``): the same lines, the same sync marker at a clean shutdown.
"""

from __future__ import annotations

import datetime
import enum
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

import attrs
import trio

from . import _codec, _rpc
from ._contract import SYNC_MARKER, DiskInfo, Info, KeepaliveReply, LoadInfo, MemInfo
from ._errors import (
    BigActorError,
    CallNotSent,
    CodecError,
    MachineError,
    MachineLost,
    MachineStartError,
    RemoteError,
    TransportError,
)
from ._metrics import Registry, payload_size
from ._output import LineSplitter, Output
from ._rpc import Kind
from ._stream import RemoteStream
from ._system import Instance, KeepaliveConfig

log = logging.getLogger("bigactor")

SHUTDOWN_GRACE = 5.0
EXIT_RACE = 0.2
EXIT_KNOWN = 5.0
LAST_LINES = 20
#: the longest output line quoted in an error (20 lines of 2 MB made a 40 MB message)
QUOTED_LINE = 500


def backoff() -> Any:
    """bigmachine's retry waits: 1 s, then x1.5 each time, capped at 5 s."""
    wait = 1.0
    while True:
        yield wait
        wait = min(wait * 1.5, 5.0)


@attrs.frozen
class Notice:
    """A worker's notice that its machine will go away soon (``Worker.notice``).

    Attributes:
        kind: what kind of notice (``"interruption"``: a spot instance being reclaimed).
        message: what the worker said, e.g. ``"spot interruption: instance action terminate
            at 12:02:05 UTC"``.
        time: when the worker gave it (wall clock, ``time.time()`` on the worker).
    """

    kind: str
    message: str
    time: float

    def __str__(self) -> str:
        when = datetime.datetime.fromtimestamp(self.time, datetime.UTC).strftime("%H:%M:%S")
        return f"{self.kind} notice at {when} UTC: {self.message}"


class State(enum.IntEnum):
    """Where a machine is in its life; states only move forward."""

    UNSTARTED = 0
    STARTING = 1
    RUNNING = 2
    STOPPED = 3

    def __str__(self) -> str:
        return self.name


class Machine:
    """A machine of the cluster: call its services, watch its state, stop it.

    Machines come from ``Cluster.start``, ``Cluster.spawn`` or ``Cluster.dial``; there is no
    public constructor.
    """

    def __init__(
        self,
        addr: str,
        key: bytes,
        nursery: trio.Nursery,
        *,
        transport: _rpc.Transport,
        owned: bool,
        keepalive: KeepaliveConfig,
        maxprocs: int = 1,
        hostname: str = "",
        instance: Instance | None = None,
        services: dict[str, bytes] | None = None,
        boot_timeout: float = 60.0,
        on_stop: Callable[[Machine], None] | None = None,
        on_notice: Callable[[Machine, Notice], None] | None = None,
        names: Callable[[], dict[str, Any]] | None = None,
        serve: tuple[_rpc.ActorTable, _rpc.RunSync] | None = None,
    ) -> None:
        self.addr = addr
        self.owned = owned
        self.maxprocs = maxprocs
        #: bytes of memory the machine has (None where its system does not say)
        self.memory: int | None = instance.memory if instance is not None else None
        self._serve = serve
        self.hostname = hostname or _hostname(addr)
        self._key = key
        self._transport = transport
        self._cluster_nursery = nursery
        self._keepalive = keepalive
        self._instance = instance
        self._services = services or {}
        self._boot_timeout = boot_timeout
        self._on_stop = on_stop
        self._on_notice = on_notice
        self._names = names
        self._state = State.UNSTARTED
        self._events = {s: trio.Event() for s in State}
        self._error: MachineError | None = None
        self._conn: _rpc.Connection | None = None
        self._dial_lock = trio.Lock()
        #: the dial under way, if any: the machine's stop cancels it (see ``_connection``)
        self._dial: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._scope = trio.CancelScope()
        self._reply_times: deque[float] = deque(maxlen=10)
        self._next_keepalive = 0.0
        self._paused = 0  # debugger sessions holding the machine (see pause)
        self._shutting_down = False
        self._healthy = True
        #: "actor.method" -> whether it is marked @idempotent, as the machine said
        self._idempotent: dict[str, bool] = {}
        self._tail_done = trio.Event()
        self.last_lines: deque[str] = deque(maxlen=LAST_LINES)
        self.output = Output(f"{addr}: ")
        #: caller-side counters of every method called on this machine
        self.metrics = Registry()
        #: the notices the worker gave, oldest first (see the module docstring)
        self.notices: list[Notice] = []
        self._draining = trio.Event()
        # Set once the machine has a connection (or stopped): where its output can be read.
        self._connected = trio.Event()
        # What the machine cost so far is its price times (trio's) time from here to its stop:
        # a monotonic clock, so a wall clock set back never makes a cost negative.
        self._born = trio.current_time()
        self._died: float | None = None

    def __repr__(self) -> str:
        return f"<Machine {self.addr} {self._state}{' owned' if self.owned else ''}>"

    # -- accessors ----------------------------------------------------------------------------

    @property
    def state(self) -> State:
        """The machine's current state."""
        return self._state

    @property
    def error(self) -> MachineError | None:
        """The first error that stopped the machine (sticky), or None."""
        return self._error

    @property
    def draining(self) -> bool:
        """Whether the worker gave notice that the machine will go away soon (see
        :attr:`notices`). The state does not change: the machine serves until it is gone."""
        return self._draining.is_set()

    @property
    def draining_event(self) -> trio.Event:
        """Set at the machine's first notice: ``await m.draining_event.wait()``."""
        return self._draining

    @property
    def details(self) -> dict[str, str]:
        """What the machine's system says of it (instance id, type, market, zone, ...); empty
        where it says nothing (the local and test systems) and for a dialed machine."""
        return self._instance.details() if self._instance is not None else {}

    @property
    def price_per_hour(self) -> float | None:
        """The machine's price in US dollars per hour, where its system says (else None)."""
        return self._instance.price_per_hour if self._instance is not None else None

    def cost(self) -> float | None:
        """What the machine cost so far in US dollars: its price times the hours from when its
        system handed it over to when it stopped (or now); None if the price is unknown."""
        price = self.price_per_hour
        if price is None:
            return None
        end = self._died if self._died is not None else trio.current_time()
        return price * max(0.0, end - self._born) / 3600

    @property
    def keepalive_reply_times(self) -> list[float]:
        """Round-trip times (s) of the last ≤10 keepalives, most recent first."""
        return list(reversed(self._reply_times))

    @property
    def next_keepalive(self) -> float:
        """Wall-clock time (``time.time()``) until which the worker stays alive; 0 before the first."""
        return self._next_keepalive

    async def wait(self, state: State) -> State:
        """Wait until the machine's state is at least ``state``; return the state then.

        ``wait(State.RUNNING)`` also returns when the machine STOPPED: re-check the result.
        Cancelling the caller just stops the wait.
        """
        await self._events[state].wait()
        return self._state

    def cancel(self) -> None:
        """Stop the machine now: pending and new calls raise MachineLost; the worker is killed."""
        self._fail(MachineLost(self.addr, "cancelled by the caller"))

    async def shutdown(self) -> None:
        """Stop the machine gracefully: ask the worker to exit, flush its output, then stop.

        Waits up to 5 s for the worker to exit and its output to drain, then kills it. An
        unowned (dialed) machine is only forgotten, never stopped. Shielded from cancellation.
        """
        with trio.CancelScope(shield=True):
            if self.owned and self._state == State.RUNNING:
                self._shutting_down = True
                with trio.move_on_after(SHUTDOWN_GRACE):
                    try:
                        await self._raw_call("Supervisor.shutdown", 0.0, SYNC_MARKER)
                    except BigActorError as exc:
                        log.debug("%s: shutdown call failed: %s", self.addr, exc)
                    else:
                        if self._instance is not None:
                            await self._tail_done.wait()
                            await self.output.drained()
                            if self._instance.observes_exit:
                                # Let the worker finish exiting on its own (it flushes and
                                # saves what it must); the kill below is for stragglers.
                                await self._events[State.STOPPED].wait()
            self._fail(MachineLost(self.addr, "shut down"), logging.DEBUG)
            if self._instance is not None:
                self._instance.kill()

    # -- state changes ------------------------------------------------------------------------

    def _set_state(self, state: State) -> None:
        if state <= self._state:
            return
        self._state = state
        for s, event in self._events.items():
            if s <= state:
                event.set()

    def _fail(self, error: MachineError, level: int = logging.ERROR) -> None:
        """Stop the machine with ``error`` unless it already stopped (the first error sticks).

        An error of a machine that had notice names the notice (a clean end, logged at DEBUG,
        needs no explanation).
        """
        if self._state == State.STOPPED:
            return
        if self.notices and level > logging.DEBUG:
            # In place (args too, so it pickles as it reads), keeping its cause.
            error.message = f"{error.message} (after its {self.notices[-1]})"
            error.args = (error.addr, error.message)
        self._error = error
        self._died = trio.current_time()
        if isinstance(error, MachineStartError):
            self.output.show_held()
        log.log(level, "%s", error)
        self._set_state(State.STOPPED)
        self._connected.set()
        if self._dial is not None:
            self._dial.cancel()
        if self._conn is not None:
            self._conn.abort(self._lost())
            # A stopped machine is kept a while for status(): not its connection's buffers.
            self._conn = None
        self._scope.cancel()
        if self._on_stop is not None:
            self._on_stop(self)

    def _lost(self) -> MachineLost:
        err = self._error
        exc = MachineLost(self.addr, f"machine stopped: {err.message if err else 'unknown cause'}")
        exc.__cause__ = err
        return exc

    # -- lifecycle ----------------------------------------------------------------------------

    async def _run(self) -> None:
        """Run the machine's life: boot, then keepalives (owned) or pings (dialed)."""
        self._set_state(State.STARTING)
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    if self._instance is not None:
                        nursery.start_soon(self._watch_exit)
                    try:
                        await self._life()
                    except MachineError as exc:
                        self._fail(exc)
                    except _rpc.VersionMismatch as exc:
                        self._fail(MachineStartError(self.addr, str(exc)))
        finally:
            if self._state != State.STOPPED:
                self._fail(MachineLost(self.addr, "cluster closed"), logging.DEBUG)
            if self._instance is not None:
                self._instance.kill()

    async def _life(self) -> None:
        started = trio.current_time()
        try:
            with trio.fail_after(self._boot_timeout):
                await self._boot()
        except trio.TooSlowError:
            raise MachineStartError(self.addr, f"not ready after {self._boot_timeout:.0f} s") from None
        except TransportError as exc:
            # A worker that dies while booting resets its socket first; its exit, when the
            # system sees it, names the true cause.
            if isinstance(await self._classify(exc), MachineLost):
                return
            raise MachineStartError(self.addr, f"cannot reach the worker: {exc.message}") from exc
        self._set_state(State.RUNNING)
        log.debug("%s: running after %.3f s", self.addr, trio.current_time() - started)
        if self.owned:
            assert self._nursery is not None
            self._nursery.start_soon(self._watch_notices, name=f"notices {self.addr}")
            await self._keepalive_loop()
        else:
            await self._ping_loop()

    async def _watch_exit(self) -> None:
        assert self._instance is not None
        how = await self._instance.wait_exit()
        # The output usually ends first; give the tail a moment so the error can quote it.
        with trio.move_on_after(0.05):
            await self._tail_done.wait()
        if self._shutting_down:
            self._fail(MachineLost(self.addr, f"shut down ({how})"), logging.DEBUG)
            return
        tail = "".join(f"\n    {line}" for line in self.last_lines)
        msg = f"{how}" + (f"; last output:{tail}" if tail else "")
        cls = MachineLost if self._state >= State.RUNNING else MachineStartError
        self._fail(cls(self.addr, msg))

    async def _tail(self) -> None:
        """Copy the machine's output to the driver's stderr, prefixed with its address."""
        assert self._instance is not None

        def line(text: str) -> None:
            # The marker may follow output that did not end its line.
            marker = text.endswith(SYNC_MARKER)
            if marker:
                text = text[: -len(SYNC_MARKER)]
            if text or not marker:
                self.last_lines.append(
                    text if len(text) <= QUOTED_LINE
                    else f"{text[:QUOTED_LINE]}[... {len(text) - QUOTED_LINE} more characters]"
                )  # fmt: skip
                self.output.line(text)
            if marker:
                self._tail_done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.output.run)
            try:
                if self._instance.output_over_channel:
                    await self._read_output(line)
                else:
                    await self._instance.tail(line)
            finally:
                self.output.close()
                self._tail_done.set()

    async def _read_output(self, line: Callable[[str], None]) -> None:
        """Read the worker's output over the connection (``Supervisor.output``) until the sync
        marker or the machine's stop, resubscribing after a broken connection.

        The worker keeps what it captured (within its bound) until a subscriber takes it, so
        subscribing only once connected loses nothing; what was in flight on a connection that
        broke is lost with it. Once the marker is read the stream is closed: that is the
        worker's sign that its last line arrived, and it exits.
        """
        lines = LineSplitter()
        waits = backoff()
        await self._connected.wait()
        while not self._output_ended():
            try:
                conn = await self._connection(booting=True)
                call_id = conn.open_stream(_codec.encode_call("Supervisor.output", (), {}))
            except BigActorError:
                if not self._output_ended():
                    await trio.sleep(next(waits))
                continue
            try:
                while not self._tail_done.is_set():
                    kind, flags, data = await conn.next_item(call_id)
                    if kind == Kind.STREAM_END:
                        # A worker that does not capture its output (started without
                        # ``capture_output``): there is nothing to wait for.
                        log.warning("%s: the machine does not send its output over the connection",
                                    self.addr)  # fmt: skip
                        return
                    if kind != Kind.STREAM_DATA:
                        if not isinstance(data, BaseException):
                            # The worker refused (one without the method): never ask again.
                            log.warning("%s: cannot read the machine's output: %s",
                                        self.addr, _rpc.decode_error(data, self.addr))  # fmt: skip
                            return
                        break  # the connection broke: read on from a new one
                    waits = backoff()
                    chunk = _codec.decode(data, flags, f"output of {self.addr}")
                    for text in lines.feed(chunk):
                        line(text)
            finally:
                conn.close_stream(call_id)
            if not self._output_ended():
                await trio.sleep(next(waits))
        for text in lines.finish():
            line(text)

    def _output_ended(self) -> bool:
        """Whether the worker's output is all read: its sync marker came, or it stopped."""
        return self._tail_done.is_set() or self._state == State.STOPPED

    async def _watch_notices(self) -> None:
        """Take the worker's notices as they come (``Supervisor.notices``), resubscribing after
        a broken connection from the first notice not yet seen; runs until the machine stops."""
        waits = backoff()
        while True:
            try:
                conn = await self._connection()
                call_id = conn.open_stream(_codec.encode_call("Supervisor.notices", (len(self.notices),), {}))
            except BigActorError:
                await trio.sleep(next(waits))
                continue
            try:
                while True:
                    kind, flags, data = await conn.next_item(call_id)
                    if kind != Kind.STREAM_DATA:
                        break
                    waits = backoff()
                    t, what, message = _codec.decode(data, flags, f"a notice of {self.addr}")
                    self._take_notice(Notice(str(what), str(message), float(t)))
            finally:
                conn.close_stream(call_id)
            if kind == Kind.STREAM_END or (kind == Kind.ERROR and not isinstance(data, BaseException)):
                return  # the worker has no notices to give, or refused: nothing to watch
            await trio.sleep(next(waits))

    def _take_notice(self, notice: Notice) -> None:
        self.notices.append(notice)
        log.warning("%s: %s", self.addr, notice)
        self._draining.set()
        if self._on_notice is not None:
            self._on_notice(self, notice)

    async def _boot(self) -> None:
        conn = await self._connection(booting=True)
        del conn
        self._connected.set()
        self.output.start_printing()  # what came before was the interpreter starting
        await self._raw_call("Supervisor.info")  # the first call: the worker answers
        for name, blob in self._services.items():
            try:
                await self._raw_call("Supervisor.register", name, blob)
            except RemoteError as exc:
                raise MachineStartError(
                    self.addr, f"service {name!r} failed to start: {type(exc).__name__}: {exc}"
                ) from exc
            except CodecError as exc:
                raise MachineStartError(
                    self.addr, f"service {name!r} cannot be decoded on the machine: {exc}"
                ) from exc
        names = self._names() if self._names is not None else None
        if names:
            await self._raw_call("Supervisor.set_names", names)

    async def _keepalive_loop(self) -> None:
        cfg = self._keepalive
        while True:
            reply = await self._keepalive_once()
            _rpc.receive_buffers.trim()  # the driver's idle ones go back, however long it idles
            await trio.sleep(min(reply.next, cfg.period) / 2)

    async def _keepalive_once(self) -> KeepaliveReply:
        cfg = self._keepalive
        start = trio.current_time()
        waits = backoff()
        while True:
            t0 = trio.current_time()
            try:
                with trio.fail_after(cfg.rpc_timeout):
                    reply: KeepaliveReply = await self._raw_call("Supervisor.keepalive", cfg.unattended)
            except (TransportError, trio.TooSlowError, RemoteError) as exc:
                last: BaseException = exc
            else:
                self._reply_times.append(trio.current_time() - t0)
                self._next_keepalive = time.time() + reply.next
                await self._check_health(reply.healthy)
                return reply
            # Retried for the whole timeout, never less: the last wait is cut short so that one
            # attempt starts right at the deadline, and only its failure loses the machine (a
            # partition healed a moment before the timeout costs nothing).
            now = trio.current_time()
            if self._paused:
                start = now  # held in a debugger: its silence is no lapse (see pause)
            deadline = start + cfg.timeout
            if now >= deadline:
                what = "no reply within the rpc timeout" if isinstance(last, trio.TooSlowError) else str(last)
                raise MachineLost(
                    self.addr,
                    f"keepalive failed after {now - start:.1f} s "
                    f"(timeout={cfg.timeout} s, rpc timeout={cfg.rpc_timeout} s): {what}",
                )
            await trio.sleep(min(next(waits), deadline - now))

    def pause(self, paused: bool) -> None:
        """Say the machine is held in a debugger session (``breakpoint()``) or free again:
        while held, unanswered keepalives do not lose it; the timeout counts from the end."""
        self._paused += 1 if paused else -1

    async def _check_health(self, healthy: bool) -> None:
        """Log once per episode when the worker says it is short of memory, with what it holds."""
        if healthy == self._healthy:
            return
        self._healthy = healthy
        if healthy:
            log.info("%s: healthy again", self.addr)
            return
        try:
            with trio.move_on_after(self._keepalive.rpc_timeout):
                report = await self._raw_call("Supervisor.memory_report")
        except BigActorError as exc:
            report = f"(no memory report: {exc})"
        log.warning("%s: the machine reports itself unhealthy (memory nearly full); it holds:\n%s",
                    self.addr, report)  # fmt: skip

    async def _ping_loop(self) -> None:
        cfg = self._keepalive
        while True:
            await trio.sleep(cfg.period / 2)
            start = trio.current_time()
            waits = backoff()
            while True:
                try:
                    with trio.fail_after(cfg.rpc_timeout):
                        await self._raw_call("Supervisor.ping", 1)
                    break
                except (TransportError, trio.TooSlowError) as exc:
                    # As for keepalives: retried for the whole timeout, never less.
                    now = trio.current_time()
                    deadline = start + cfg.timeout
                    if now >= deadline:
                        raise MachineLost(
                            self.addr,
                            f"ping failed after {now - start:.1f} s "
                            f"(timeout={cfg.timeout} s): {exc or 'no reply'}",
                        ) from exc
                    await trio.sleep(min(next(waits), deadline - now))

    # -- calls --------------------------------------------------------------------------------

    async def _connection(self, booting: bool = False) -> _rpc.Connection:
        """The live connection, dialing it if needed; MachineLost once the machine stopped."""
        while True:
            if self._state == State.STOPPED:
                raise self._lost()
            if self._state == State.RUNNING or booting:
                conn = self._conn
                if conn is not None and not conn.broken:
                    return conn
                async with self._dial_lock:
                    if self._conn is None or self._conn.broken:
                        if self._nursery is None or self.state == State.STOPPED:
                            raise self._lost()
                        # A dial to a host that is gone (its connection broke a moment before
                        # the system saw it end) would hold this caller, and every caller queued
                        # on the lock, for the whole handshake timeout after the machine stopped:
                        # the stop cancels the dial (``_fail``).
                        dial = self._dial = trio.CancelScope()
                        try:
                            with dial:
                                new = await self._open_connection(self._nursery)
                        finally:
                            self._dial = None
                        # Stopped without a checkpoint left in the dial to be cancelled at: its
                        # connection's task dies with the machine's nursery.
                        if dial.cancelled_caught or self._events[State.STOPPED].is_set():
                            raise self._lost()
                        self._conn = new
                    return self._conn
            await self.wait(State.RUNNING)

    async def _open_connection(self, nursery: trio.Nursery) -> _rpc.Connection:
        """A new connection to the worker (its tasks in ``nursery``), versions checked and, for
        a machine that may call back, attached as its way to the driver; CallNotSent if none
        could be made. Cancelling it closes whatever was opened."""
        try:
            conn, peer = await _rpc.connect(
                nursery, self.addr, self._key, self._serve, transport=self._transport
            )
        except TransportError as exc:
            # No connection: whatever was to go on it never left.
            raise CallNotSent(self.addr, exc.message) from exc
        _rpc.check_versions(self.addr, peer)
        if self._serve is not None:
            await self._attach_driver(conn)
        return conn

    async def _attach_driver(self, conn: _rpc.Connection) -> None:
        """Make ``conn`` the machine's way back to its driver (actors spawning actors); a
        connection that cannot be made so is closed, never left running."""
        try:
            kind, _, data = await conn.call(_codec.encode_call("Supervisor.attach_driver", (), {}))
            if kind != Kind.REPLY:
                raise _rpc.decode_error(data, self.addr)
        except BaseException:
            await conn.aclose()
            raise

    async def _raw_call(self, target: str, *args: Any, **kwargs: Any) -> Any:
        return await self._invoke(_codec.encode_call(target, args, kwargs), target, booting=True)

    async def _invoke(self, payload: _codec.Payload, target: str, booting: bool = False) -> Any:
        start = time.perf_counter()
        stat = self.metrics.get(target)
        size = payload.size
        try:
            conn = await self._connection(booting)
            # Connection.call's body without its coroutine, and the payload let go once sent:
            # fewer objects per call in flight for the garbage collector to walk.
            call_id = conn.submit(payload)
            del payload
            kind, flags, data = await trio.lowlevel.wait_task_rescheduled(partial(conn.abandon, call_id))
        except TransportError as exc:
            stat.record(time.perf_counter() - start, False, size, 0)
            raise await self._classify(exc) from None
        stat.record(time.perf_counter() - start, kind == Kind.REPLY, size, payload_size(data))
        if kind == Kind.REPLY:
            return _codec.decode(data, flags, f"the reply of {target} from {self.addr}")
        raise _rpc.decode_error(data, self.addr)

    async def _classify(self, exc: BigActorError) -> BigActorError:
        """A broken connection: MachineLost if the machine's process ended, else ``exc``.

        A killed worker's socket can close a moment before the OS reports its exit; where the
        system observes exits, wait up to EXIT_RACE for that report so the caller gets the
        true cause (MachineLost, with the signal) rather than a TransportError. Where the
        system can already tell that the process is gone, wait for its description however
        long the loaded driver takes to make it (bounded by EXIT_KNOWN).
        """
        if isinstance(exc, MachineLost):
            return exc
        instance = self._instance
        if instance is not None and instance.observes_exit:
            with trio.move_on_after(EXIT_RACE):
                await self._events[State.STOPPED].wait()
            if self._state != State.STOPPED and instance.ended():
                with trio.move_on_after(EXIT_KNOWN):
                    await self._events[State.STOPPED].wait()
        return self._lost() if self._state == State.STOPPED else exc

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``"service.method"`` on the machine with the given arguments; return its result.

        Waits while the machine is starting. Raises the remote exception (also a RemoteError),
        MachineLost if the machine stops or stopped, CallNotSent if no connection could be made
        (the call never left), TransportError if the connection broke after the call left (it
        may have run), CodecError if an argument cannot be serialised (before anything is sent).
        Cancelling the caller cancels the remote method and raises ``trio.Cancelled``.
        """
        return await self._invoke(_codec.encode_call(method, args, kwargs), method)

    async def retry_call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Like :meth:`call`, but re-send after errors that allow it (backoff 1 s, x1.5, ≤5 s).

        A call is re-sent when it never left this process (:class:`CallNotSent`), or when its
        connection broke after it left (:class:`TransportError`: it may have run) and the method
        is marked ``@bigactor.idempotent`` (asked of the machine once, then remembered). Retries
        until the caller's deadline; a wait that would pass the deadline is not taken and the
        last error is raised instead. Never after MachineLost or an error the method raised.
        """
        waits = backoff()
        while True:
            try:
                return await self.call(method, *args, **kwargs)
            except BigActorError as exc:
                if not exc.retriable and not await self._may_repeat(method, exc):
                    raise
                wait = next(waits)
                deadline = trio.current_effective_deadline()
                if deadline != math.inf and trio.current_time() + wait > deadline:
                    raise
                log.debug("%s: retrying %s in %.1f s after: %s", self.addr, method, wait, exc)
                await trio.sleep(wait)

    async def _may_repeat(self, method: str, exc: BigActorError) -> bool:
        """Whether a call of ``method`` that may have run may run again (``@idempotent``)."""
        if not isinstance(exc, TransportError) or isinstance(exc, RemoteError):
            return False
        known = self._idempotent.get(method)
        if known is None:
            try:
                known = bool(await self.call("Supervisor.idempotent", method))
            except BigActorError:
                return False  # cannot tell (the machine is unreachable): never guess yes
            self._idempotent[method] = known
        return known

    def stream(self, method: str, *args: Any, **kwargs: Any) -> RemoteStream:
        """Call a generator method and iterate its items: ``async for x in m.stream(...)``.

        Items arrive with back-pressure. Use ``async with`` (or exhaust the stream) so that a
        stream you stop early is cancelled on the machine at once.
        """
        return RemoteStream(self, method, _codec.encode_call(method, args, kwargs))

    async def info(self) -> Info:
        """Versions, platform, code digest, pid, hostname and start time of the worker."""
        info: Info = await self.call("Supervisor.info")
        return info

    async def mem_info(self) -> MemInfo:
        """Memory of the machine and the worker's RSS (psutil)."""
        result: MemInfo = await self.call("Supervisor.mem_info")
        return result

    async def disk_info(self) -> DiskInfo:
        """Usage of the filesystem of the worker's temporary directory (psutil)."""
        result: DiskInfo = await self.call("Supervisor.disk_info")
        return result

    async def load_info(self) -> LoadInfo:
        """Load averages of the machine."""
        result: LoadInfo = await self.call("Supervisor.load_info")
        return result


def _hostname(addr: str) -> str:
    """The host of a dialed machine's address: ``scheme:host:port`` (``tcp:``, ``tls:``) names
    it; ``unix:`` and ``test:`` machines are on this host."""
    if addr.partition(":")[0] in ("unix", "test"):
        return "localhost"
    try:
        return _rpc.host_port(addr)[0] or "unknown"
    except ValueError:
        return "unknown"
