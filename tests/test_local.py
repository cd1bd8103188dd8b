"""The local system with real worker processes: boot, environment, output, failures, shutdown.

Every test here starts real ``python -m bigactor.supervisor`` processes through
``bigactor.open_cluster()``; failures are real ``kill -9``. The driver scripts run as
subprocesses check what a user's ``__main__`` program sees.
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import cloudpickle
import psutil
import pytest
import trio
import trio.testing
from local_support import (
    Counter,
    Echo,
    FailsInit,
    HoldsSocket,
    Probe,
    Sleeper,
    call_killed_midway,
    existing,
    first_line,
    gone,
    run_script,
    socket_dir,
    wait_gone,
    worker_sys_path,
)

import bigactor
from bigactor import MachineLost, MachineStartError, Services, State, _codec, _rpc
from bigactor._rpc import Kind

pytestmark = pytest.mark.slow

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
            assert info.pickler == f"cloudpickle {cloudpickle.__version__}"
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
            print(bigactor.machine_of(talker).addr, flush=True)
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
        out = await first_line(proc, "its workers' pids")
        sockets, *rest = out.decode().split()
        pids = [int(p) for p in rest]
        assert len(pids) == 2
        assert not any(gone(pid) for pid in pids)
        # Workers are forked by the fork server: it must not outlive the driver either.
        parents = {psutil.Process(pid).ppid() for pid in pids} - {proc.pid}
        pids += sorted(parents)
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
        m = bigactor.machine_of(sleeper)
        # On the wire: a streaming CALL and its CANCEL queued together reach the worker in
        # one message (a caller abandoning a stream races the same way, less reliably).
        async with trio.open_nursery() as nursery:
            conn, _ = await _rpc.connect(nursery, m.addr, cluster._key, transport=_rpc.Transport())
            call_id = conn.open_stream(_codec.encode_call(f"{bigactor.name_of(sleeper)}.ticks", (), {}))
            conn.close_stream(call_id)
            # The reply to a later call on the same connection means the worker read both frames.
            kind, _, data = await conn.call(_codec.encode_call(f"{bigactor.name_of(sleeper)}.ping", (), {}))
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


# -- shutdown -----------------------------------------------------------------------------------


async def test_closing_the_cluster_leaves_no_process_and_no_socket_dir() -> None:
    """After open_cluster exits every worker process is gone and its socket directory removed."""
    async with bigactor.open_cluster() as cluster:
        machines = await cluster.start(2, Services(echo=Echo()))
        counter = await cluster.spawn(Counter)
        machines.append(bigactor.machine_of(counter))
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


async def test_worker_that_cannot_boot_fails_naming_its_output(tmp_path: Path) -> None:
    """A worker interpreter that cannot import bigactor fails the machine fast, quoting it."""
    broken = tmp_path / "python"
    broken.write_text("#!/bin/sh\necho 'no bigactor here' >&2\nexit 3\n")
    broken.chmod(0o755)
    async with bigactor.open_cluster(python=str(broken)) as cluster:
        [m] = await cluster.start(1, Services(echo=Echo()))
        with trio.fail_after(10):
            assert await m.wait(State.RUNNING) == State.STOPPED
        assert isinstance(m.error, MachineStartError)
        assert "exited with code 3" in str(m.error)
        assert "no bigactor here" in str(m.error)
        with pytest.raises(MachineLost):
            await m.call("echo.echo", 1)


async def test_workers_fork_from_a_template_unless_told_otherwise() -> None:
    """Workers fork from the fork server; forkserver=False or a PYTHON* Environ starts them fresh."""
    async with bigactor.open_cluster() as cluster:
        [forked] = await cluster.start(1, Services(echo=Echo()))
        [fresh] = await cluster.start(1, Services(echo=Echo()), bigactor.Environ({"PYTHONFAULTHANDLER": "1"}))
        forked_parent = psutil.Process((await forked.info()).pid).ppid()
        fresh_parent = psutil.Process((await fresh.info()).pid).ppid()
        assert fresh_parent == os.getpid()
        assert forked_parent != os.getpid()
        assert "bigactor fork server" in " ".join(psutil.Process(forked_parent).cmdline())
    async with bigactor.open_cluster(forkserver=False) as cluster:
        [m] = await cluster.start(1, Services(echo=Echo()))
        assert psutil.Process((await m.info()).pid).ppid() == os.getpid()
        assert await m.call("echo.echo", 3) == 3


async def test_forked_worker_sees_its_environ_and_cwd() -> None:
    """A forked worker gets the Environ asked for and the driver's working directory."""
    async with bigactor.open_cluster() as cluster:
        [m] = await cluster.start(1, Services(probe=Probe()), bigactor.Environ({"BIGACTOR_FORKED": "yes"}))
        env = await m.call("probe.environ", "BIGACTOR_FORKED")
        assert env["BIGACTOR_FORKED"] == "yes"
        assert await m.call("probe.cwd") == os.getcwd()


TESTS_DIR = str(Path(__file__).resolve().parent)
FLAGS_DRIVER = """
    import sys, bigactor, trio

    async def main():
        async with bigactor.open_cluster() as cluster:
            import flagged_module  # importable on the workers: sys.path travels with them
            [m] = await cluster.start(
                1, bigactor.Services(reader=flagged_module.Reader()),
                bigactor.Environ({"BIGACTOR_IMPORT_TIME": "from-environ"}),
            )
            print(*await m.call("reader.seen"))

    bigactor.run(main)
"""


async def test_modules_reading_flags_at_import_see_the_drivers_argv_and_environ(tmp_path: Path) -> None:
    """A worker imports user modules after the driver's argv and Environ are in place."""
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(FLAGS_DRIVER))
    done = await trio.run_process(
        [sys.executable, str(script), "--mode=fast", "--bigactor-log-level=warning"],
        capture_stdout=True,
        capture_stderr=True,
        env={**os.environ, "PYTHONPATH": TESTS_DIR},
        cwd=tmp_path,
    )
    assert done.stdout.decode().split() == ["fast", "from-environ"]
