"""The local system with real worker processes: boot, calls, output, failures and security.

Every test here starts real ``python -m bigactor.supervisor`` processes through
``bigactor.open_cluster()`` and talks to them over their real Unix sockets; failures are real
``kill -9``. Classes defined in this module reach the workers by reference (the driver's
``sys.path`` is the workers'); the driver scripts run as subprocesses check what a user's
``__main__`` program sees.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import platform
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import dill
import psutil
import pytest
import trio
import trio.testing
import trio_websocket
from trio_websocket import ConnectionClosed

import bigactor
from bigactor import MachineLost, MachineStartError, RemoteError, Services, State, _codec, _rpc
from bigactor._rpc import Kind, _auth, _frames

pytestmark = pytest.mark.slow

MiB = 1 << 20


# -- actors hosted by the workers ---------------------------------------------------------------


class Echo:
    """Returns what it is given."""

    async def echo(self, value: Any) -> Any:
        return value

    def echo_sync(self, value: Any) -> Any:
        return value


class Counter:
    """A counter, for calls made from another actor."""

    def __init__(self, start: int = 0) -> None:
        self.n = start

    async def add(self, k: int) -> int:
        self.n += k
        return self.n

    def total(self) -> int:
        return self.n


class Relay:
    """Calls another actor through a handle it is given."""

    async def add_via(self, counter: bigactor.ActorHandle, k: int) -> tuple[int, int]:
        return await counter.add(k), os.getpid()


class Probe:
    """Reports the worker's process environment."""

    def environ(self, *names: str) -> dict[str, str | None]:
        return {name: os.environ.get(name) for name in names}

    def argv(self) -> list[str]:
        return list(sys.argv)

    def cwd(self) -> str:
        return os.getcwd()

    def path(self) -> list[str]:
        return list(sys.path)


class Recorder:
    """Sync methods that record their order and how many of them ran at once."""

    def __init__(self) -> None:
        self.items: list[int] = []
        self._lock = threading.Lock()
        self._active = 0
        self.max_active = 0

    def append(self, i: int) -> None:
        self.items.append(i)

    def appended(self) -> list[int]:
        return self.items

    def slow(self) -> None:
        with self._lock:
            self._active += 1
            self.max_active = max(self.max_active, self._active)
        time.sleep(0.01)
        with self._lock:
            self._active -= 1

    def most_at_once(self) -> int:
        return self.max_active


class Sleeper:
    """An async method that blocks until cancelled, and ways to watch it."""

    def __init__(self) -> None:
        self._sleeping = trio.Event()
        self._cancelled = trio.Event()
        self._idle = trio.Event()
        self._active = 0

    async def sleep_forever(self) -> None:
        self._active += 1
        self._sleeping.set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            self._cancelled.set()
            raise
        finally:
            self._active -= 1
            if not self._active:
                self._idle.set()

    async def ticks(self) -> Any:
        """Stream 0, 1, 2, ... for as long as the caller reads."""
        self._active += 1
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            self._active -= 1
            if not self._active:
                self._idle.set()

    async def wait_sleeping(self) -> None:
        await self._sleeping.wait()

    async def wait_cancelled(self) -> bool:
        await self._cancelled.wait()
        return True

    async def wait_idle(self) -> None:
        """Return once no sleep_forever call or ticks stream is running."""
        while self._active:
            await self._idle.wait()
            self._idle = trio.Event()

    async def ping(self) -> str:
        return "pong"


class CustomError(Exception):
    """An exception type of this module, rebuilt in the caller by reference."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class Failing:
    """Methods that raise."""

    async def key_error(self) -> None:
        raise KeyError("missing-key")

    async def custom(self, code: int) -> None:
        raise CustomError(code)

    def __init__(self) -> None:
        self.transport_errors = 0

    async def transport_error(self) -> None:
        self.transport_errors += 1
        raise bigactor.TransportError("tcp:elsewhere:1", "made up by the remote method")

    async def transport_error_count(self) -> int:
        return self.transport_errors

    async def sleep_forever(self) -> None:
        await trio.sleep_forever()

    async def ping(self) -> str:
        return "pong"


class Bulk:
    """Large values and streams."""

    async def chunks(self, n: int, size: int) -> Any:
        for i in range(n):
            yield bytes([i]) * size

    async def nothing(self) -> Any:
        return
        yield

    def chunks_sync(self, n: int, size: int) -> Any:
        for i in range(n):
            yield bytes([i]) * size

    async def echo(self, data: bytes) -> bytes:
        return data


class FailsInit:
    """A service whose init raises."""

    async def init(self, ctx: bigactor.Context) -> None:
        raise RuntimeError("init exploded on purpose")

    async def ping(self) -> str:
        return "pong"


class HoldsSocket:
    """A service that cannot be serialised."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock


# -- helpers ------------------------------------------------------------------------------------


async def run_script(tmp_path: Path, source: str) -> subprocess.CompletedProcess[bytes]:
    """Run ``source`` as a driver program (its own ``__main__``) and return its output."""
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(source))
    with trio.fail_after(60):
        result = await trio.run_process(
            [sys.executable, str(script)], capture_stdout=True, capture_stderr=True, check=False, cwd=tmp_path
        )
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result


def gone(pid: int) -> bool:
    """Whether process ``pid`` has exited (a zombie nobody reaped yet counts as exited)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def wait_gone(pids: list[int]) -> None:
    """Poll (bounded by the caller's deadline) until every process in ``pids`` has exited."""
    # The processes are not ours to wait for (their parent died): only polling can tell.
    while not all(gone(pid) for pid in pids):  # noqa: ASYNC110
        await trio.sleep(0.01)


async def wait_for_line(machine: bigactor.Machine, *words: str) -> str:
    """Poll (bounded by the caller's deadline) the machine's last output for a line with ``words``."""
    # Output is copied by the machine's tail task; nothing signals a new line, so poll.
    while True:
        for line in list(machine.last_lines):
            if all(w in line for w in words):
                return line
        await trio.sleep(0.01)


async def call_killed_midway(machine: bigactor.Machine, service: str) -> BaseException:
    """Call ``service.sleep_forever``, SIGKILL the worker once it has the call, return the error.

    ``service`` is a :class:`Sleeper`-like service with ``sleep_forever`` and ``ping``.
    """
    pid = (await machine.info()).pid
    raised: list[BaseException] = []
    done = trio.Event()

    async def pending() -> None:
        try:
            await machine.call(f"{service}.sleep_forever")
        except Exception as exc:
            raised.append(exc)
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pending)
        # The call is queued before `pending` first blocks; a later call on the same connection
        # answers only after the worker has read it.
        await trio.testing.wait_all_tasks_blocked()
        assert await machine.call(f"{service}.ping") == "pong"
        os.kill(pid, signal.SIGKILL)
        with trio.fail_after(2):  # a bound, not a benchmark
            await done.wait()
    assert len(raised) == 1, "the call returned although its worker was killed"
    return raised[0]


def socket_dir(machine: bigactor.Machine) -> str:
    """The directory holding a local machine's Unix socket."""
    scheme, _, path = machine.addr.partition(":")
    assert scheme == "unix"
    return os.path.dirname(path)


def worker_sys_path() -> list[str]:
    """The driver's sys.path as the local system hands it to workers (absolute paths)."""
    return [os.path.abspath(p) if p else os.getcwd() for p in sys.path]


def existing(paths: set[str]) -> set[str]:
    """The paths among ``paths`` that exist."""
    return {p for p in paths if os.path.exists(p)}


# -- boot and environment -----------------------------------------------------------------------


async def test_started_machines_run_and_report_matching_versions() -> None:
    """Two started machines reach RUNNING, answer calls and report the driver's versions."""
    async with bigactor.open_cluster() as cluster:
        machines = await cluster.start(2, Services(echo=Echo()))
        assert len(machines) == 2
        assert machines[0].addr != machines[1].addr
        pids = set()
        for m in machines:
            with trio.fail_after(30):
                assert await m.wait(State.RUNNING) == State.RUNNING
            assert m.state == State.RUNNING
            assert m.error is None
            assert await m.call("echo.echo", "hi") == "hi"
            assert m.owned is True
            assert m.maxprocs == 1
            assert m.hostname == socket.gethostname()
            info = await m.info()
            assert info.python == platform.python_version()
            assert info.bigactor == bigactor.__version__
            assert info.dill == dill.__version__
            assert info.hostname == socket.gethostname()
            assert info.pid != os.getpid()
            pids.add(info.pid)
        assert len(pids) == 2
        assert set(cluster.machines()) >= set(machines)


async def test_environ_argv_cwd_and_sys_path_reach_the_worker() -> None:
    """Environ entries (later wins), and the driver's argv, cwd and sys.path apply on the worker."""
    params = (
        bigactor.Environ({"BIGACTOR_TEST_X": "yes", "BIGACTOR_TEST_B": "first"}),
        bigactor.Environ(["BIGACTOR_TEST_A=1", "BIGACTOR_TEST_A=2"]),
        bigactor.Environ(["BIGACTOR_TEST_B=second"]),
    )
    async with bigactor.open_cluster() as cluster:
        [m] = await cluster.start(1, Services(probe=Probe()), *params)
        env = await m.call("probe.environ", "BIGACTOR_TEST_X", "BIGACTOR_TEST_A", "BIGACTOR_TEST_B")
        assert env == {"BIGACTOR_TEST_X": "yes", "BIGACTOR_TEST_A": "2", "BIGACTOR_TEST_B": "second"}
        assert await m.call("probe.argv") == sys.argv
        assert await m.call("probe.cwd") == os.getcwd()
        assert await m.call("probe.path") == worker_sys_path()


async def test_classes_of_an_importable_module_are_hosted_by_reference() -> None:
    """A class defined in an importable module (this one) is constructed and run on the worker."""
    async with bigactor.open_cluster() as cluster:
        counter = await cluster.spawn(Counter, 10)
        assert await counter.add(5) == 15
        assert await counter.total() == 15
        [m] = await cluster.start(1, Services(counter=Counter(100)))
        assert await m.call("counter.add", 1) == 101


MAIN_CLASSES = """
    import os
    import sys

    import trio

    import bigactor

    print("driver module body ran", file=sys.stderr)


    def double(x):
        return 2 * x


    class Greeter:
        def __init__(self, name):
            self.name = name

        def greet(self, fn):
            import __main__

            main_file = getattr(__main__, "__file__", None)
            return f"hello {self.name} {fn(21)} pid={os.getpid()} main={main_file}"


    async def main():
        async with bigactor.open_cluster() as cluster:
            greeter = await cluster.spawn(Greeter, "world")
            print(await greeter.greet(double))
            [m] = await cluster.start(1, bigactor.Services(g=Greeter("service")))
            print(await m.call("g.greet", double))
        print(f"driver pid={os.getpid()}")


    trio.run(main)
"""


async def test_classes_and_functions_of_main_travel_by_value(tmp_path: Path) -> None:
    """Classes and functions of a driver's __main__ work on workers that never run __main__."""
    result = await run_script(tmp_path, MAIN_CLASSES)
    lines = result.stdout.decode().splitlines()
    assert len(lines) == 3, lines
    driver_pid = lines[2].removeprefix("driver pid=")
    script = str(tmp_path / "driver.py")
    for line, name in zip(lines[:2], ["world", "service"], strict=True):
        assert line.startswith(f"hello {name} 42 pid=")
        assert f"pid={driver_pid} " not in line
        assert f"main={script}" not in line
    # The module body ran once: in the driver, never on a worker.
    assert result.stderr.decode().count("driver module body ran") == 1


# -- output -------------------------------------------------------------------------------------


OUTPUT = """
    import sys

    import trio

    import bigactor


    class Talker:
        def say(self, text):
            print(text)

        def say_to_stderr(self, text):
            print(text, file=sys.stderr)

        def say_many(self, n):
            for i in range(n):
                print(f"line {i}")

        def say_unfinished(self, text):
            print(text, end="")


    async def main():
        async with bigactor.open_cluster() as cluster:
            talker = await cluster.spawn(Talker)
            print(talker.machine.addr, flush=True)
            await talker.say("hello from worker")
            await talker.say_to_stderr("hello from worker's stderr")
            await talker.say_many(1000)
            await talker.say_unfinished("unfinished last words")


    trio.run(main)
"""


async def test_worker_output_reaches_driver_stderr_prefixed_and_complete(tmp_path: Path) -> None:
    """Worker stdout/stderr lines reach the driver's stderr as `addr: line`, none lost at exit."""
    result = await run_script(tmp_path, OUTPUT)
    addr = result.stdout.decode().strip()
    assert addr.startswith("unix:")
    err = result.stderr.decode()
    lines = err.splitlines()
    assert f"{addr}: hello from worker" in lines
    assert f"{addr}: hello from worker's stderr" in lines
    # Printed right before the cluster exits: every line arrives, in order.
    numbered = [line for line in lines if line.startswith(f"{addr}: line ")]
    assert numbered == [f"{addr}: line {i}" for i in range(1000)]
    # Even a last line without its newline, and the sync marker never shows.
    assert f"{addr}: unfinished last words" in lines
    assert "bigactor done" not in err


# -- failures -----------------------------------------------------------------------------------


async def test_kill_9_fails_pending_and_new_calls_with_machine_lost() -> None:
    """SIGKILL of a worker fails its pending call and every new one with MachineLost, naming it."""
    async with bigactor.open_cluster() as cluster:
        [m] = await cluster.start(1, Services(sleeper=Sleeper()))
        exc = await call_killed_midway(m, "sleeper")
        assert isinstance(exc, MachineLost), repr(exc)
        assert "SIGKILL" in str(exc)
        assert m.state == State.STOPPED
        assert isinstance(m.error, MachineLost)
        assert "SIGKILL" in str(m.error)
        with trio.fail_after(1), pytest.raises(MachineLost, match="SIGKILL"):
            await m.call("sleeper.ping")
        assert m.state == State.STOPPED


DRIVER_THAT_SLEEPS = """
    import os

    import trio

    import bigactor


    class Idle:
        def pid(self):
            return os.getpid()


    async def main():
        async with bigactor.open_cluster() as cluster:
            machines = await cluster.start(2, bigactor.Services(idle=Idle()))
            pids = [await m.call("idle.pid") for m in machines]
            print(os.path.dirname(machines[0].addr.partition(":")[2]), *pids, flush=True)
            await trio.sleep_forever()


    trio.run(main)
"""


async def test_driver_killed_with_sigkill_leaves_no_worker(tmp_path: Path) -> None:
    """Workers exit within 2 s of their driver being killed with SIGKILL."""
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(DRIVER_THAT_SLEEPS))
    proc = await trio.lowlevel.open_process(
        [sys.executable, str(script)], stdout=subprocess.PIPE, cwd=tmp_path
    )
    pids: list[int] = []
    sockets = ""
    try:
        assert proc.stdout is not None
        out = b""
        with trio.fail_after(60):
            while not out.endswith(b"\n"):
                chunk = await proc.stdout.receive_some(4096)
                assert chunk, "the driver exited before printing its workers' pids"
                out += chunk
        sockets, *rest = out.decode().split()
        pids = [int(p) for p in rest]
        assert len(pids) == 2
        assert not any(gone(pid) for pid in pids)
        proc.kill()
        await proc.wait()
        assert proc.returncode == -signal.SIGKILL
        with trio.fail_after(2):  # the contract's bound
            await wait_gone(pids)
    finally:
        proc.kill()
        await proc.wait()
        if proc.stdout is not None:
            await proc.stdout.aclose()
        for pid in pids:  # only if the test failed: leave nothing behind
            if not gone(pid):
                os.kill(pid, signal.SIGKILL)
        if sockets:  # a driver killed with SIGKILL cannot remove its socket directory
            shutil.rmtree(sockets, ignore_errors=True)


async def test_caller_giving_up_cancels_remote_async_method() -> None:
    """A caller's timeout cancels the remote async method's scope and raises nothing else."""
    async with bigactor.open_cluster() as cluster:
        sleeper = await cluster.spawn(Sleeper)
        timeout = trio.CancelScope()

        async def caller() -> None:
            with timeout:
                await sleeper.sleep_forever()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(caller)
            await sleeper.wait_sleeping()
            # The caller's timeout expires while the remote method runs (move_on_after, exactly).
            timeout.deadline = trio.current_time()
        assert timeout.cancelled_caught
        with trio.fail_after(5):
            assert await sleeper.wait_cancelled() is True
            await sleeper.wait_idle()
        assert await sleeper.ping() == "pong"


async def test_call_cancelled_as_it_is_sent_leaves_nothing_running() -> None:
    """A call whose CANCEL follows its CALL at once never leaves the remote method running."""
    async with bigactor.open_cluster() as cluster:
        sleeper = await cluster.spawn(Sleeper)
        # The deadline has passed already: the call's CALL and CANCEL frames are queued
        # together and reach the worker in one message.
        with trio.move_on_after(0) as scope:
            await sleeper.sleep_forever()
        assert scope.cancelled_caught
        # One round trip later the worker has read both frames and the method has had its turn.
        assert await sleeper.ping() == "pong"
        with trio.fail_after(5):
            await sleeper.wait_idle()


async def test_stream_abandoned_as_it_is_opened_stops_on_the_machine() -> None:
    """A stream whose caller gives up at once never leaves its generator running remotely."""
    async with bigactor.open_cluster() as cluster:
        sleeper = await cluster.spawn(Sleeper)
        m = sleeper.machine
        # On the wire: a streaming CALL and its CANCEL queued together reach the worker in
        # one message (a caller abandoning a stream races the same way, less reliably).
        async with trio.open_nursery() as nursery:
            conn, _ = await _rpc.connect(nursery, m.addr, cluster._key)
            call_id = conn.open_stream(_codec.dumps_call(f"{sleeper.name}.ticks", (), {}))
            conn.close_stream(call_id)
            # The reply to a later call on the same connection means the worker read both frames.
            kind, data = await conn.call(_codec.dumps_call(f"{sleeper.name}.ping", (), {}))
            assert (kind, _codec.loads(data)) == (Kind.REPLY, "pong")
            with trio.fail_after(5):
                await sleeper.wait_idle()
            await conn.aclose()
            nursery.cancel_scope.cancel()

        # The same through a handle: the caller gives up before the first item.
        with trio.move_on_after(0) as scope:
            async with sleeper.ticks() as ticks:
                async for _ in ticks:
                    pass
        assert scope.cancelled_caught
        assert await sleeper.ping() == "pong"
        with trio.fail_after(5):
            await sleeper.wait_idle()

        # A stream read for a while and then dropped stops too.
        got = []
        async with sleeper.ticks() as ticks:
            async for i in ticks:
                got.append(i)
                if len(got) == 5:
                    break
        assert got == list(range(5))
        with trio.fail_after(5):
            await sleeper.wait_idle()


# -- ordering and concurrency -------------------------------------------------------------------


async def test_sync_calls_from_one_caller_run_in_order_one_at_a_time() -> None:
    """Sync calls from one caller run in the order sent and never two at once."""
    n = 200
    async with bigactor.open_cluster() as cluster:
        recorder = await cluster.spawn(Recorder)
        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(recorder.append, i)
                # Call i is queued on the connection before call i+1 is issued.
                await trio.testing.wait_all_tasks_blocked()
        assert await recorder.appended() == list(range(n))

        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(recorder.slow)
        assert await recorder.most_at_once() == 1


async def test_thousand_concurrent_calls_each_get_their_own_reply() -> None:
    """1,000 concurrent calls on one connection each return their own reply."""
    async with bigactor.open_cluster() as cluster:
        echo = await cluster.spawn(Echo)
        replies: dict[int, Any] = {}

        async def one(i: int) -> None:
            replies[i] = await echo.echo(i)

        async def one_sync(i: int) -> None:
            replies[-i - 1] = await echo.echo_sync(-i - 1)

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for i in range(1000):
                    nursery.start_soon(one, i)
                    nursery.start_soon(one_sync, i)
        assert replies == {i: i for i in range(-1000, 1000)}


# -- bad input ----------------------------------------------------------------------------------


async def test_malformed_frames_close_that_connection_only_with_a_logged_reason() -> None:
    """Garbage and truncated frames close the offending connection; the worker logs why and serves on."""
    truncated = _frames.HEADER.pack(Kind.CALL, 0, 1, 100) + b"x" * 10
    unknown_kind = _frames.HEADER.pack(99, 0, 1, 0)
    cases = [
        (b"garbage", "truncated frame header"),
        (truncated, "payload of 100 bytes, 10 left"),
        (unknown_kind, "unknown frame kind 99"),
    ]
    async with bigactor.open_cluster(log_level=logging.WARNING) as cluster:
        [m] = await cluster.start(1, Services(echo=Echo()))
        assert await m.call("echo.echo", 1) == 1
        for message, reason in cases:
            async with trio.open_nursery() as nursery:
                conn, _ = await _rpc.connect(nursery, m.addr, cluster._key)
                await conn._ws.send_message(message)
                with trio.fail_after(5):
                    await conn._done.wait()
                assert conn.broken
                assert isinstance(conn.error, bigactor.TransportError)
                assert "1002" in str(conn.error)  # websocket close code: protocol error
                assert reason in str(conn.error)
                await conn.aclose()
                nursery.cancel_scope.cancel()
            with trio.fail_after(5):
                line = await wait_for_line(m, "closing connection", reason)
            assert "WARNING" in line
            assert await m.call("echo.echo", message) == message
        assert m.state == State.RUNNING


async def test_oversized_message_closes_that_connection_only() -> None:
    """A websocket message over the size limit closes its connection; the worker serves on."""
    async with bigactor.open_cluster() as cluster:
        [m] = await cluster.start(1, Services(echo=Echo()))
        with trio.fail_after(30):
            assert await m.wait(State.RUNNING) == State.RUNNING
        async with trio.open_nursery() as nursery:
            conn, _ = await _rpc.connect(nursery, m.addr, cluster._key)
            big = _frames.HEADER.pack(Kind.CALL, 0, 1, 3 * MiB) + bytes(3 * MiB)
            with contextlib.suppress(ConnectionClosed):  # the worker hangs up mid-message
                await conn._ws.send_message(big)
            with trio.fail_after(5):
                await conn._done.wait()
            assert "1009" in str(conn.error)  # websocket close code: message too big
            await conn.aclose()
            nursery.cancel_scope.cancel()
        assert await m.call("echo.echo", 2) == 2


async def test_bad_calls_get_clear_errors_and_the_connection_serves_on() -> None:
    """Undecodable payloads and unknown services or methods raise clear errors; calls go on."""
    async with bigactor.open_cluster() as cluster:
        [m] = await cluster.start(1, Services(echo=Echo()))
        with trio.fail_after(30):
            assert await m.wait(State.RUNNING) == State.RUNNING
        async with trio.open_nursery() as nursery:
            conn, _ = await _rpc.connect(nursery, m.addr, cluster._key)
            kind, data = await conn.call(b"\x80\x05this is not a pickle")
            assert kind is Kind.ERROR
            assert isinstance(_rpc.decode_error(data, m.addr), bigactor.CodecError)
            kind, data = await conn.call(_codec.dumps_call("echo.echo", (5,), {}))
            assert kind is Kind.REPLY
            assert _codec.loads(data) == 5
            assert not conn.broken
            await conn.aclose()
            nursery.cancel_scope.cancel()
        with pytest.raises(bigactor.ServiceNotFound, match="nope"):
            await m.call("nope.echo", 1)
        with pytest.raises(bigactor.ServiceNotFound, match="missing"):
            await m.call("echo.missing", 1)
        assert await m.call("echo.echo", 3) == 3


class _CreatesFile:
    """Unpickling this creates the file at ``path``: the payload an attacker would send."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


async def _send_unauthenticated(addr: str, *messages: bytes, hello: bool = False) -> None:
    """Open a raw websocket to ``addr``, optionally send a genuine HELLO (without knowing the
    key), then send ``messages``; return once the worker has closed the connection."""
    stream = await trio.open_unix_socket(addr.partition(":")[2])
    async with stream, trio.open_nursery() as nursery:
        ws = await trio_websocket.wrap_client_stream(nursery, stream, "bigactor", "/")
        if hello:
            await ws.send_message(_auth.MAGIC + secrets.token_bytes(_auth.NONCE) + b"{}")
            await ws.get_message()  # the worker's WELCOME
        with contextlib.suppress(ConnectionClosed):  # the worker may hang up before the last
            for message in messages:
                await ws.send_message(message)
        with trio.fail_after(5), pytest.raises(ConnectionClosed):
            await drain(ws)
        await ws.aclose()


async def drain(ws: trio_websocket.WebSocketConnection) -> None:
    """Read messages until the connection closes (raises ConnectionClosed)."""
    while True:
        await ws.get_message()


async def test_unauthenticated_peer_gets_nothing_deserialised(tmp_path: Path) -> None:
    """A peer without the cluster key is refused and nothing it sends is unpickled."""
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_CreatesFile(control))).close()
    assert control.exists()  # the payload is live: unpickling it creates the file
    target = tmp_path / "pwned"
    evil = pickle.dumps(_CreatesFile(target))
    evil_call = b"".join(_frames.encode(Kind.CALL, 1, evil))

    async with bigactor.open_cluster() as cluster:
        [m] = await cluster.start(1, Services(echo=Echo()))
        assert await m.call("echo.echo", 1) == 1

        async with trio.open_nursery() as nursery:
            with pytest.raises(bigactor.TransportError, match="authentication"):
                await _rpc.connect(nursery, m.addr, secrets.token_bytes(32))

        await _send_unauthenticated(m.addr, evil)
        await _send_unauthenticated(m.addr, evil_call)
        await _send_unauthenticated(m.addr, evil, evil_call, hello=True)
        with trio.fail_after(5):
            await wait_for_line(m, "rejected a connection")

        assert await m.call("echo.echo", 2) == 2
        assert not target.exists()
        assert m.state == State.RUNNING

        # Only the driver's user can reach the socket, and the key is in no argv or environment.
        mode = os.stat(socket_dir(m)).st_mode
        assert stat.S_IMODE(mode) == 0o700
        worker = psutil.Process((await m.info()).pid)
        key = cluster._key.hex()
        assert not any(key in arg for arg in worker.cmdline())
        assert not any(key in value for value in worker.environ().values())


# -- shutdown -----------------------------------------------------------------------------------


async def test_closing_the_cluster_leaves_no_process_and_no_socket_dir() -> None:
    """After open_cluster exits every worker process is gone and its socket directory removed."""
    async with bigactor.open_cluster() as cluster:
        machines = await cluster.start(2, Services(echo=Echo()))
        counter = await cluster.spawn(Counter)
        machines.append(counter.machine)
        pids = [(await m.info()).pid for m in machines]
        dirs = {socket_dir(m) for m in machines}
        assert len(dirs) == 1
        assert all(psutil.pid_exists(pid) for pid in pids)
    assert all(m.state == State.STOPPED for m in machines)
    assert not any(psutil.pid_exists(pid) for pid in pids)
    assert existing(dirs) == set()


# -- service errors -----------------------------------------------------------------------------


async def test_service_init_error_fails_the_machine_fast() -> None:
    """An exception in a service's init stops the machine at once with MachineStartError."""
    async with bigactor.open_cluster() as cluster:
        [m] = await cluster.start(1, Services(bad=FailsInit()))
        with trio.fail_after(10):
            assert await m.wait(State.RUNNING) == State.STOPPED
        assert m.state == State.STOPPED
        assert isinstance(m.error, MachineStartError)
        assert "init exploded on purpose" in str(m.error)
        with trio.fail_after(1), pytest.raises(MachineLost):
            await m.call("bad.ping")


async def test_unserialisable_service_raises_codec_error_naming_the_path() -> None:
    """A service that cannot be serialised makes start raise CodecError and start nothing."""
    with socket.socket() as sock:
        async with bigactor.open_cluster() as cluster:
            with pytest.raises(bigactor.CodecError) as info:
                await cluster.start(1, Services(x=HoldsSocket(sock)))
            assert "service 'x' -> .sock" in str(info.value)
            assert info.value.path.startswith("service 'x' -> .sock")
            assert cluster.machines() == []


# -- large values -------------------------------------------------------------------------------


async def test_large_streams_and_arguments_arrive_intact() -> None:
    """A 32 MiB stream arrives whole and in order, an empty stream ends at once, 32 MiB echoes."""
    async with bigactor.open_cluster() as cluster:
        bulk = await cluster.spawn(Bulk)
        with trio.fail_after(60):
            chunks = [chunk async for chunk in bulk.chunks(32, MiB)]
        assert [len(c) for c in chunks] == [MiB] * 32
        assert all(c == bytes([i]) * MiB for i, c in enumerate(chunks))

        with trio.fail_after(60):
            chunks = [chunk async for chunk in bulk.chunks_sync(32, MiB)]
        assert all(c == bytes([i]) * MiB for i, c in enumerate(chunks))
        assert len(chunks) == 32

        with trio.fail_after(5):
            assert [x async for x in bulk.nothing()] == []

        data = os.urandom(32 * MiB)
        with trio.fail_after(60):
            assert await bulk.echo(data) == data


# -- remote errors ------------------------------------------------------------------------------


async def test_remote_exceptions_keep_their_type_and_traceback() -> None:
    """Remote exceptions arrive as their own type and RemoteError, with the remote traceback."""
    async with bigactor.open_cluster() as cluster:
        [m] = await cluster.start(1, Services(failing=Failing()))

        with pytest.raises(KeyError) as key_info:
            await m.call("failing.key_error")
        exc = key_info.value
        assert isinstance(exc, RemoteError)
        assert exc.args == ("missing-key",)
        assert "key_error" in exc.remote_traceback
        assert "raise KeyError" in exc.remote_traceback
        assert any("key_error" in note and "missing-key" in note for note in exc.__notes__)

        with pytest.raises(CustomError) as custom_info:
            await m.call("failing.custom", 7)
        assert isinstance(custom_info.value, RemoteError)
        assert custom_info.value.code == 7
        assert "raise CustomError(code)" in custom_info.value.remote_traceback


async def test_remote_transport_error_is_not_a_local_transport_error() -> None:
    """A TransportError raised by a remote method is a non-retriable RemoteError; a kill is not remote."""
    async with bigactor.open_cluster() as cluster:
        [m] = await cluster.start(1, Services(failing=Failing()))
        with pytest.raises(RemoteError) as info:
            await m.call("failing.transport_error")
        assert "made up by the remote method" in str(info.value)
        # The method ran: re-sending it is not safe, and the machine is fine.
        assert not info.value.retriable
        assert m.state == State.RUNNING
        assert await m.call("failing.ping") == "pong"
        with trio.fail_after(3), pytest.raises(RemoteError):
            await m.retry_call("failing.transport_error")
        assert await m.call("failing.transport_error_count") == 2

        exc = await call_killed_midway(m, "failing")
        assert isinstance(exc, MachineLost)
        assert not isinstance(exc, RemoteError)


# -- actor to actor -----------------------------------------------------------------------------


async def test_handle_passed_to_another_actor_is_callable_there() -> None:
    """An actor handle passed to an actor on another machine calls the first actor from there."""
    async with bigactor.open_cluster() as cluster:
        counter = await cluster.spawn(Counter, 10)
        relay = await cluster.spawn(Relay)
        assert counter.machine is not relay.machine
        total, relay_pid = await relay.add_via(counter, 5)
        assert total == 15
        assert relay_pid == (await relay.machine.info()).pid
        assert relay_pid != (await counter.machine.info()).pid
        assert await counter.total() == 15
