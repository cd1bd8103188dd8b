"""Errors as people read them: what leaves ``open_cluster``, Ctrl-C, and remote tracebacks.

In-process clusters (the test system) for what the exceptions are; real programs on the local
system (run as scripts, their stderr captured) for what is printed and for Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
import traceback
from pathlib import Path

import outcome
import psutil
import pytest
import trio
import trio.testing
from local_support import first_line, gone
from support import Failing, Service, start_one

import bigactor
from bigactor import RemoteError, ServiceNotFound
from bigactor._open import interrupt_exits_quietly
from bigactor.testing import TestSystem

# -- what leaves open_cluster --------------------------------------------------------------------


class BrokenSystem(TestSystem):
    """A test system with a task of its own in the cluster's nursery, which fails on demand."""

    def __init__(self) -> None:
        super().__init__()
        self.fail = trio.Event()

    async def setup(self, nursery: trio.Nursery, key: bytes) -> None:
        await super().setup(nursery, key)
        nursery.start_soon(self._fail_when_told)

    async def _fail_when_told(self) -> None:
        await self.fail.wait()
        raise RuntimeError("the system broke")


async def test_the_bodys_exception_leaves_open_cluster_as_itself() -> None:
    """An exception raised in the body is what ``except`` catches: no ExceptionGroup around it."""
    raised = ValueError("bad input")

    async def main() -> None:
        async with bigactor.open_cluster(TestSystem()) as cluster:
            await cluster.start(1)
            raise raised

    with pytest.raises(ValueError, match="bad input") as info:
        await main()
    assert info.value is raised
    # The group it came out of stays reachable, and is not printed.
    assert isinstance(info.value.__context__, BaseExceptionGroup)
    assert info.value.__suppress_context__
    printed = "".join(traceback.format_exception(info.value))
    assert "ExceptionGroup" not in printed
    assert printed.count("ValueError: bad input") == 1


@pytest.mark.parametrize("from_none", [False, True])
async def test_the_bodys_exception_keeps_its_own_context(from_none: bool) -> None:
    """An exception raised while handling another keeps that other one, printed or not as it said."""

    async def main() -> None:
        async with bigactor.open_cluster(TestSystem()):
            try:
                {"present": 1}["missing"]
            except KeyError as exc:
                raise ValueError("while looking up") from (None if from_none else exc)

    with pytest.raises(ValueError, match="while looking up") as info:
        await main()
    assert isinstance(info.value.__context__, KeyError)
    assert info.value.__suppress_context__
    printed = "".join(traceback.format_exception(info.value))
    assert ("KeyError: 'missing'" in printed) is not from_none


async def test_a_group_raised_by_the_body_leaves_as_that_group() -> None:
    """The body's own nursery raised a group: that group leaves, itself, not wrapped again."""
    raised: list[BaseException] = []

    async def main() -> None:
        try:
            async with bigactor.open_cluster(TestSystem()), trio.open_nursery() as nursery:
                nursery.start_soon(trio.sleep_forever)
                raise KeyError("k")
        except BaseException as exc:
            raised.append(exc)
            raise

    with pytest.raises(ExceptionGroup) as info:
        await main()
    assert [type(e) for e in info.value.exceptions] == [KeyError]
    assert info.value.exceptions[0].__traceback__ is not None


async def test_a_failure_of_the_clusters_own_task_leaves_as_itself(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A task of the cluster that fails cancels the body; its error alone leaves."""
    system = BrokenSystem()

    async def main() -> None:
        async with bigactor.open_cluster(system):
            system.fail.set()
            await trio.sleep_forever()

    with pytest.raises(RuntimeError, match="the system broke"):
        await main()


async def test_two_errors_leave_as_a_group(autojump_clock: trio.testing.MockClock) -> None:
    """When the body and a task of the cluster both fail, neither is hidden: a group leaves."""
    system = BrokenSystem()

    async def main() -> None:
        async with bigactor.open_cluster(system):
            system.fail.set()
            try:
                await trio.sleep_forever()
            finally:
                raise ValueError("cleanup failed")

    with pytest.raises(ExceptionGroup) as info:
        await main()
    assert sorted(type(e).__name__ for e in info.value.exceptions) == ["RuntimeError", "ValueError"]


async def test_cancelling_open_cluster_is_caught_by_the_cancel_scope(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``move_on_after`` around ``open_cluster`` ends it and catches its Cancelled."""
    with trio.move_on_after(5) as scope:
        async with bigactor.open_cluster(TestSystem()), trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            await trio.sleep_forever()
    assert scope.cancelled_caught
    assert trio.current_time() == 5


@pytest.mark.slow
async def test_cancelling_open_cluster_with_calls_pending_on_workers() -> None:
    """With worker processes and calls pending on them, the cancel scope still catches it all."""
    with trio.move_on_after(2) as scope:
        async with bigactor.open_cluster() as cluster:
            machine = await start_one(cluster, svc=Service())
            sleeper = await cluster.spawn(Service)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(machine.call, "svc.hang")
                nursery.start_soon(sleeper.hang)
                await trio.sleep_forever()
    assert scope.cancelled_caught


async def test_keyboard_interrupt_leaves_bare_from_the_bodys_nursery() -> None:
    """Ctrl-C reaches the body inside its own nursery; a bare KeyboardInterrupt leaves."""

    async def main() -> None:
        async with bigactor.open_cluster(TestSystem()), trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt) as info:
        await main()
    assert type(info.value) is KeyboardInterrupt
    assert info.value.__cause__ is None


async def test_keyboard_interrupt_with_another_error_keeps_both(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Ctrl-C while a task of the cluster failed: a bare KeyboardInterrupt caused by both."""
    system = BrokenSystem()

    async def main() -> None:
        async with bigactor.open_cluster(system):
            system.fail.set()
            try:
                await trio.sleep_forever()
            finally:
                raise KeyboardInterrupt  # as Ctrl-C would, during the cancellation

    with pytest.raises(KeyboardInterrupt) as info:
        await main()
    cause = info.value.__cause__
    assert isinstance(cause, BaseExceptionGroup)
    assert sorted(type(e).__name__ for e in cause.exceptions) == ["KeyboardInterrupt", "RuntimeError"]


# -- remote tracebacks ---------------------------------------------------------------------------


def nested_helper(x: str) -> None:
    raise ValueError(f"cannot parse {x!r}")


class Parser:
    """Methods that fail in the program's own code, a few frames deep."""

    async def parse(self, x: str) -> None:
        nested_helper(x)

    def parse_sync(self, x: str) -> None:
        nested_helper(x)

    async def parse_through(self, other: bigactor.ActorHandle, x: str) -> None:
        await other.parse_sync(x)


def frames_of(tb: str) -> list[str]:
    """The file names of the frames in formatted traceback ``tb``."""
    return [line.split('"')[1] for line in tb.splitlines() if line.lstrip().startswith('File "')]


# Where the frames live that remote tracebacks leave out.
HIDDEN = tuple(os.path.dirname(str(module.__file__)) + os.sep for module in (bigactor, trio, outcome))


@pytest.mark.parametrize("method", ["parse", "parse_sync"])
async def test_remote_traceback_shows_the_programs_frames_only(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock, method: str
) -> None:
    """The note shows the method's and helper's frames, none of bigactor's or trio's."""
    parser = await cluster.spawn(Parser)
    with pytest.raises(ValueError, match="cannot parse 'x'") as info:
        await getattr(parser, method)("x")
    exc = info.value
    assert isinstance(exc, RemoteError)
    shown = exc.remote_traceback
    assert f"in {method}" in shown
    assert "in nested_helper" in shown
    assert not [f for f in frames_of(shown) if f.startswith(HIDDEN)]
    [note] = exc.__notes__
    assert shown.strip() in note
    assert "BIGACTOR_TRACEBACK=full" in note.splitlines()[0]
    # The full traceback is kept, with the frames that bring every call to its method.
    full = exc.remote_traceback_full
    assert [f for f in frames_of(full) if f.startswith(os.path.dirname(bigactor.__file__))]
    assert [f for f in frames_of(full) if not f.startswith(HIDDEN)] == frames_of(shown)


async def test_full_tracebacks_on_demand(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With BIGACTOR_TRACEBACK=full the note shows bigactor's and trio's frames too."""
    monkeypatch.setenv("BIGACTOR_TRACEBACK", "full")
    parser = await cluster.spawn(Parser)
    with pytest.raises(ValueError, match="cannot parse") as info:
        await parser.parse("x")
    exc = info.value
    assert isinstance(exc, RemoteError)
    assert exc.remote_traceback == exc.remote_traceback_full
    assert [f for f in frames_of(exc.remote_traceback) if f.startswith(os.path.dirname(bigactor.__file__))]
    [note] = exc.__notes__
    assert exc.remote_traceback.strip() in note
    assert "BIGACTOR_TRACEBACK" not in note.splitlines()[0]


async def test_an_error_through_two_machines_shows_each_traceback_once(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """Driver -> a -> b: the notes show a's traceback, then b's, each once."""
    a = await cluster.spawn(Parser)
    b = await cluster.spawn(Parser)
    with pytest.raises(ValueError, match="cannot parse") as info:
        await a.parse_through(b, "x")
    notes = info.value.__notes__
    assert len(notes) == 2
    assert notes[0].startswith(f"remote traceback (machine {bigactor.machine_of(a).addr};")
    assert "in parse_through" in notes[0]
    assert "in nested_helper" not in notes[0]
    assert notes[1].startswith(f"remote traceback (machine {bigactor.machine_of(b).addr};")
    assert "in nested_helper" in notes[1]
    printed = "".join(traceback.format_exception(info.value))
    assert printed.count("remote traceback (machine") == 2


async def test_an_exception_that_cannot_be_rebuilt_prints_its_remote_traceback(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """A RemoteError standing for an exception the caller cannot rebuild still prints where it was raised."""
    machine = await start_one(cluster, failing=Failing())
    for method, line in [("unrebuildable", "raise Unrebuildable"), ("unshippable", "raise Unshippable")]:
        with pytest.raises(RemoteError) as info:
            await machine.call(f"failing.{method}")
        exc = info.value
        assert type(exc) is RemoteError
        printed = "".join(traceback.format_exception(exc))
        assert f"remote traceback (machine {machine.addr};" in printed
        assert line in printed
        assert f"in {method}" in printed


@pytest.mark.parametrize("rebuilt", [True, False])
async def test_the_methods_notes_follow_the_remote_traceback(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock, rebuilt: bool
) -> None:
    """Notes the method added are printed once, after its traceback, rebuilt exception or not."""
    noter = await cluster.spawn(Noter)
    with pytest.raises(RemoteError) as info:
        await noter.fail(rebuilt)
    assert isinstance(info.value, ValueError) is rebuilt
    notes = info.value.__notes__
    assert notes[0].startswith("remote traceback (machine ")
    assert notes[1:] == ["while reading row 3"]
    assert "".join(traceback.format_exception(info.value)).count("while reading row 3") == 1


class NotRebuilt(Exception):
    """Pickles, but cannot be rebuilt: ``args`` do not fit ``__init__``."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a}/{b}")


class Noter:
    async def fail(self, rebuilt: bool) -> None:
        exc = ValueError("bad row") if rebuilt else NotRebuilt("a", "b")
        exc.add_note("while reading row 3")
        raise exc


def test_service_not_found_without_a_machine_reads_well() -> None:
    """The driver's own lookups have no machine address: the message does not pretend one."""
    assert str(ServiceNotFound("", "nope", "no actor has this name")) == "nope: no actor has this name"
    assert str(ServiceNotFound("unix:/m", "a.b", "no such method")) == "machine unix:/m: a.b: no such method"


async def test_looking_up_an_unknown_actor_names_no_empty_machine(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """``cluster.actor("nope")`` raises ServiceNotFound whose text starts with the name."""
    with pytest.raises(ServiceNotFound) as info:
        await cluster.actor("nope")
    assert str(info.value).startswith("nope")
    assert "machine :" not in str(info.value)


# -- what a program prints: Ctrl-C and remote tracebacks (real worker processes) ----------------

CTRL_C = """
    import os
    import sys

    import trio

    import bigactor


    class Busy:
        def __init__(self):
            self.spinning = False

        def spin(self):
            self.spinning = True
            while True:
                pass

        async def is_spinning(self):
            return self.spinning

        async def pid(self):
            return os.getpid()


    class Sleepy:
        def __init__(self):
            self.napping = trio.Event()

        async def nap(self):
            self.napping.set()
            await trio.sleep_forever()

        async def wait_napping(self):
            await self.napping.wait()

        async def pid(self):
            return os.getpid()


    async def main():
        async with bigactor.open_cluster() as cluster:
            busy = await cluster.spawn(Busy)
            sleepy = await cluster.spawn(Sleepy)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(busy.spin)
                nursery.start_soon(sleepy.nap)
                while not await busy.is_spinning():
                    await trio.sleep(0.01)
                await sleepy.wait_napping()
                print("ready", os.getpid(), await busy.pid(), await sleepy.pid(), flush=True)
                await trio.sleep_forever()


    if sys.argv[1] == "bigactor.run":
        bigactor.run(main)
    else:
        trio.run(main)
"""


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


async def interrupted(
    tmp_path: Path, runner: str, *, via_shell: bool = False, env: dict[str, str] | None = None
) -> tuple[int, str, str, list[int]]:
    """Run the CTRL_C program, interrupt it once ready, and return how it ended.

    Returns its exit status, stdout and stderr, and the pids of every process it had started.
    Without ``via_shell``, SIGINT goes to the program's process group, as a terminal's Ctrl-C
    does; with it, the program runs under ``sh``, SIGINT goes to the program alone, and the
    shell prints the status it saw. ``env`` is added to the program's environment.
    """
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(CTRL_C))
    argv = [sys.executable, str(script), runner]
    if via_shell:
        argv = ["sh", "-c", '"$@"; echo "status $?"', "sh", *argv]
    # To a file, not a pipe: it is read once the program has ended.
    stderr = os.open(tmp_path / "stderr", os.O_WRONLY | os.O_CREAT)
    try:
        proc = await trio.lowlevel.open_process(
            argv,
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=tmp_path,
            start_new_session=True,
            env={**os.environ, **(env or {})},
            # As from a terminal: Ctrl-C's signal not ignored, even when this test runs as a
            # background job (whose SIGINT a non-interactive shell ignores, and exec inherits).
            preexec_fn=_default_sigint,
        )
    finally:
        os.close(stderr)
    try:
        ready = (await first_line(proc, "its ready line")).split()
        assert ready[0] == b"ready", ready
        driver, *actors = (int(pid) for pid in ready[1:])
        descendants = {p.pid for p in psutil.Process(driver).children(recursive=True)}
        assert set(actors) <= descendants
        if via_shell:
            os.kill(driver, signal.SIGINT)
        else:
            os.killpg(proc.pid, signal.SIGINT)
        assert proc.stdout is not None
        out = b""
        with trio.fail_after(30):
            while chunk := await proc.stdout.receive_some():
                out += chunk
            status = await proc.wait()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
    return status, out.decode(), (tmp_path / "stderr").read_text(), [driver, *descendants]


@pytest.mark.slow
async def test_ctrl_c_under_bigactor_run_prints_one_line_exits_130_and_leaves_no_worker(
    tmp_path: Path,
) -> None:
    """SIGINT to the program (a sync method spinning, an async one sleeping): one line, status 130."""
    t0 = time.monotonic()
    status, _, err, pids = await interrupted(tmp_path, "bigactor.run")
    # Python ends the program by SIGINT, as for any uncaught KeyboardInterrupt: the shell says 130.
    assert status == -signal.SIGINT, err
    assert err.splitlines() == ["KeyboardInterrupt"]
    assert [pid for pid in pids if not gone(pid)] == []
    assert time.monotonic() - t0 < 30


@pytest.mark.slow
async def test_ctrl_c_under_trio_run_leaves_open_cluster_as_a_bare_keyboard_interrupt(tmp_path: Path) -> None:
    """A plain ``trio.run`` program also exits by SIGINT, printing a KeyboardInterrupt, no group."""
    status, _, err, pids = await interrupted(tmp_path, "trio.run")
    assert status == -signal.SIGINT, err
    assert err.splitlines()[-1] == "KeyboardInterrupt"
    assert "ExceptionGroup" not in err
    assert "+-+" not in err
    assert [pid for pid in pids if not gone(pid)] == []


@pytest.mark.slow
async def test_ctrl_c_prints_its_traceback_on_demand(tmp_path: Path) -> None:
    """With BIGACTOR_TRACEBACK=full, bigactor.run prints where the program was interrupted."""
    status, _, err, pids = await interrupted(tmp_path, "bigactor.run", env={"BIGACTOR_TRACEBACK": "full"})
    assert status == -signal.SIGINT, err
    assert "await trio.sleep_forever()" in err
    assert err.splitlines()[-1] == "KeyboardInterrupt"
    assert [pid for pid in pids if not gone(pid)] == []


@pytest.mark.slow
async def test_the_shell_sees_status_130_after_ctrl_c(tmp_path: Path) -> None:
    """Run from a shell, the interrupted program's status is 130."""
    status, out, err, pids = await interrupted(tmp_path, "bigactor.run", via_shell=True)
    assert out.splitlines()[-1] == "status 130", (out, err)
    assert status == 0
    assert err.splitlines() == ["KeyboardInterrupt"]
    assert [pid for pid in pids if not gone(pid)] == []


FAILS = """
    import json
    import sys

    import trio

    import bigactor


    def helper(text):
        return json.loads(text)


    class Parser:
        async def parse(self, text):
            return helper(text)

        def parse_sync(self, text):
            return helper(text)

        def ghost(self, where):
            # A class the driver cannot import: its module exists on this machine only.
            sys.path.insert(0, where)
            import ghostmod

            raise ghostmod.Ghost("boo")


    async def main():
        async with bigactor.open_cluster() as cluster:
            parser = await cluster.spawn(Parser)
            if sys.argv[1] == "ghost":
                await parser.ghost(sys.argv[2])
            else:
                await getattr(parser, sys.argv[1])("{")


    trio.run(main)
"""


async def printed_failure(tmp_path: Path, *args: str) -> str:
    """Run the FAILS program with ``args``; return what it printed on stderr (it must fail)."""
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(FAILS))
    with trio.fail_after(60):
        result = await trio.run_process(
            [sys.executable, str(script), *args], capture_stderr=True, check=False, cwd=tmp_path
        )
    assert result.returncode == 1
    return result.stderr.decode()


@pytest.mark.slow
@pytest.mark.parametrize("method", ["parse", "parse_sync"])
async def test_a_printed_remote_error_shows_the_programs_frames(tmp_path: Path, method: str) -> None:
    """What a failing program prints: its own frames on both sides, no group, no machinery."""
    err = await printed_failure(tmp_path, method)
    assert "ExceptionGroup" not in err
    assert "+-+" not in err
    local, _, remote = err.partition("remote traceback (machine ")
    script = str(tmp_path / "driver.py")
    assert frames_of(remote) == [script, script, *frames_of(remote)[2:]]
    assert f"in {method}" in remote
    assert "in helper" in remote
    assert not [f for f in frames_of(remote) if f.startswith(HIDDEN)]
    # The caller's side: the program's frames, and trio's only where trio.run raises.
    assert frames_of(local)[0] == script
    assert len([f for f in frames_of(local) if f.startswith(HIDDEN[1])]) == 1
    assert err.rstrip().splitlines()[-1].startswith("json.decoder.JSONDecodeError: ")


@pytest.mark.slow
async def test_a_printed_error_that_cannot_be_rebuilt_shows_its_remote_traceback(tmp_path: Path) -> None:
    """An exception whose class the driver cannot import prints as a RemoteError with its traceback."""
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "ghostmod.py").write_text("class Ghost(Exception):\n    pass\n")
    err = await printed_failure(tmp_path, "ghost", str(tmp_path / "elsewhere"))
    assert "bigactor.RemoteError: ghostmod.Ghost: boo" in err
    _, _, remote = err.partition("remote traceback (machine ")
    assert "in ghost" in remote
    assert 'raise ghostmod.Ghost("boo")' in remote
    assert remote.rstrip().splitlines()[-1] == "ghostmod.Ghost: boo"


# -- how bigactor.run ends the program on Ctrl-C, in process --------------------------------------


async def test_an_interrupt_leaves_run_bare_and_prints_as_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C in groups beside Cancelled leaves bare; the excepthook prints it as one line."""
    seen: list[BaseException] = []
    monkeypatch.setattr(sys, "excepthook", lambda kind, value, tb: seen.append(value))
    group = BaseExceptionGroup("", [KeyboardInterrupt(), BaseExceptionGroup("", [await a_cancelled()])])
    with pytest.raises(KeyboardInterrupt) as info, interrupt_exits_quietly():
        raise group
    assert type(info.value) is KeyboardInterrupt
    assert info.value.__context__ is group  # reachable, not printed
    sys.excepthook(KeyboardInterrupt, info.value, info.value.__traceback__)
    assert capsys.readouterr().err == "KeyboardInterrupt\n"
    # Every other exception goes to the hook that was there before, and the hook is wrapped once.
    hook = sys.excepthook
    other = ValueError("not an interrupt")
    sys.excepthook(ValueError, other, None)
    assert seen == [other]
    with pytest.raises(KeyboardInterrupt), interrupt_exits_quietly():
        raise KeyboardInterrupt
    assert sys.excepthook is hook


def test_run_lets_every_other_exception_through() -> None:
    """An error, or a KeyboardInterrupt beside an error, leaves as it is."""
    error = ValueError("bad")
    with pytest.raises(ValueError, match="bad") as info, interrupt_exits_quietly():
        raise error
    assert info.value is error
    both = BaseExceptionGroup("", [KeyboardInterrupt(), ValueError("bad")])
    with pytest.raises(BaseExceptionGroup) as group_info, interrupt_exits_quietly():
        raise both
    assert group_info.value is both


async def a_cancelled() -> trio.Cancelled:
    """A real ``trio.Cancelled`` (it has no public constructor), from a scope of our own."""
    with trio.CancelScope() as scope:
        scope.cancel()
        try:
            await trio.lowlevel.checkpoint()
        except trio.Cancelled as exc:
            return exc
    raise AssertionError("the cancelled checkpoint did not raise")
