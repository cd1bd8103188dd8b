"""Worker output on the driver's stderr: prefixed, in order, complete, never blocking a worker."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import trio
import trio.testing

from bigactor._output import Output


async def test_output_drops_oldest_lines_and_counts_them_when_the_writer_is_blocked() -> None:
    """While stderr is blocked, queueing never blocks; the oldest lines go, and are counted."""
    release = threading.Event()
    written: list[str] = []

    def write(text: str) -> None:
        release.wait(10)
        written.append(text)

    out = Output("m: ", write=write, limit=1000)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(out.run)
        out.start_printing()
        out.line("first")
        await trio.testing.wait_all_tasks_blocked()  # the writer is now stuck on "first"
        for i in range(500):
            out.line(f"line {i:03d}")  # never blocks
        release.set()
        out.close()
    text = "".join(written)
    assert text.startswith("m: first\n")
    assert "lines (" in text
    assert "of output dropped" in text
    assert text.endswith("m: line 499\n")
    kept = [line for line in text.splitlines() if line.startswith("m: line")]
    assert kept == sorted(kept)  # order kept among the survivors
    assert sum(len(line) - 3 for line in kept) <= 1000


async def test_start_up_lines_are_held_and_shown_only_if_boot_fails() -> None:
    """Lines before the machine is up are elided, unless it fails to boot."""
    for failed in (False, True):
        written: list[str] = []
        out = Output("m: ", write=written.append)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(out.run)
            out.line("interpreter noise")
            if failed:
                out.show_held()
            else:
                out.start_printing()
            out.line("user output")
            out.close()
        text = "".join(written)
        assert ("interpreter noise" in text) is failed
        assert "m: user output\n" in text


DRIVER = """
    import logging, os, sys, time, warnings, trio, bigactor

    class Talker:
        def talk(self, n):
            logging.getLogger("myapp").warning("careful: %d", 7)
            warnings.warn("deprecated thing")
            os.write(1, b"straight to fd 1\\n")
            print("to stderr", file=sys.stderr)
            for i in range(n):
                print(f"line {i:06d} " + "x" * 190)
            print("last words")
            return time.monotonic()

    async def main():
        async with bigactor.open_cluster() as cluster:
            talker = await cluster.spawn(Talker)
            start = time.monotonic()
            await talker.talk(int(sys.argv[1]))
            print(f"DONE {time.monotonic() - start:.2f}", flush=True)
            await trio.sleep(float(sys.argv[2]))

    trio.run(main)
"""


@pytest.mark.slow
async def test_worker_output_reaches_stderr_with_levels_and_fd_writes(tmp_path: Path) -> None:
    """Logging keeps level and logger name; warnings, fd-1 writes and stderr all arrive prefixed."""
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(DRIVER))
    done = await trio.run_process(
        [sys.executable, str(script), "3", "0"], capture_stdout=True, capture_stderr=True, cwd=tmp_path
    )
    err = done.stderr.decode()
    prefix = next(line.split(": ")[0] for line in err.splitlines() if "straight to fd 1" in line)
    for text in (
        "WARNING myapp: careful: 7",
        "deprecated thing",
        "straight to fd 1",
        "to stderr",
        "last words",
    ):
        assert any(line.startswith(prefix + ": ") and text in line for line in err.splitlines()), text


@pytest.mark.slow
async def test_a_driver_that_stops_reading_never_blocks_its_workers(tmp_path: Path) -> None:
    """With the driver's stderr unread, a worker printing 4 MB still finishes its call."""
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(DRIVER))
    proc = await trio.lowlevel.open_process(
        [sys.executable, str(script), "20000", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None
        assert proc.stderr is not None
        out = b""
        with trio.fail_after(60):  # the call returns although nobody reads stderr
            while b"DONE" not in out:
                chunk = await proc.stdout.receive_some(4096)
                assert chunk, "the driver ended before its call returned"
                out += chunk
        err = b""
        with trio.fail_after(60):
            while chunk := await proc.stderr.receive_some(1 << 16):
                err += chunk
        await proc.wait()
        text = err.decode()
        assert "of output dropped" in text
        assert "last words" in text  # the newest output survives
    finally:
        proc.kill()
        await proc.wait()


async def test_a_failing_stderr_loses_lines_counts_them_and_raises_nothing() -> None:
    """A writer that raises (closed or broken stderr) never ends the output task; drops count."""
    failures: list[BaseException] = [BrokenPipeError(32, "Broken pipe"), ValueError("closed file")]
    written: list[str] = []

    def write(text: str) -> None:
        if failures:
            raise failures.pop(0)
        written.append(text)

    out = Output("m: ", write=write)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(out.run)
        out.start_printing()
        for text in ("one", "two", "three"):
            out.line(text)
            await out.drained()
        out.close()
    assert written == ["m: three\n"]  # a stderr that recovers is written to again
    assert (out.dropped_lines, out.dropped_bytes) == (2, len("m: one\nm: two\n"))


async def test_no_stderr_at_all_is_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``sys.stderr`` None (the program started with ``2>&-``) lines are only counted."""
    monkeypatch.setattr(sys, "stderr", None)
    out = Output("m: ")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(out.run)
        out.start_printing()
        out.line("nobody reads this")
        out.close()
    assert out.dropped_lines == 1


CHATTY = """
    import sys, trio, bigactor

    class Talker:
        def talk(self, n):
            for i in range(n):
                print(f"line {i}")
            return n

    async def main():
        async with bigactor.open_cluster() as cluster:
            talker = await cluster.spawn(Talker)
            for _ in range(3):
                assert await talker.talk(200) == 200
            with trio.fail_after(30):
                while (await cluster.status())[0]["output_dropped_lines"] < 600:
                    await trio.sleep(0.05)  # the lines are on their way to the missing stderr
            print("DROPPED", (await cluster.status())[0]["output_dropped_lines"], flush=True)
        print("CLEAN EXIT", flush=True)

    trio.run(main)
"""


@pytest.mark.slow
@pytest.mark.parametrize("stderr", ["closed", "broken"])
async def test_a_driver_without_a_working_stderr_runs_its_cluster_to_a_clean_end(
    tmp_path: Path, stderr: str
) -> None:
    """``prog 2>&-`` and ``prog 2>&1 | head`` (stderr closed or broken) never touch the cluster."""
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(CHATTY))
    if stderr == "closed":
        # The shell closes fd 2 before exec: Python starts with sys.stderr = None.
        command = ["sh", "-c", 'exec "$0" "$@" 2>&-', sys.executable, str(script)]
        err_r, err_w = None, subprocess.DEVNULL
    else:
        err_r, err_w = os.pipe()
        command = [sys.executable, str(script)]
    proc = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE, stderr=err_w, cwd=tmp_path)
    if err_r is not None:
        assert isinstance(err_w, int)
        os.close(err_w)
        os.close(err_r)  # the reader is gone before the first line: every write breaks
    try:
        assert proc.stdout is not None
        out = b""
        with trio.fail_after(60):
            while chunk := await proc.stdout.receive_some(4096):
                out += chunk
            assert await proc.wait() == 0, out.decode()
    finally:
        proc.kill()
    text = out.decode()
    assert "CLEAN EXIT" in text
    dropped = int(text.split("DROPPED ")[1].split()[0])
    assert dropped >= 600  # every line the worker printed is counted as lost


class Printer:
    """Writes big output straight to fd 1, the way C code or a runaway print would."""

    def one_long_line(self, mb: int) -> int:
        chunk = b"x" * (1 << 20)
        for _ in range(mb):
            os.write(1, chunk)
        os.write(1, b"\nafter the long line\n")
        return mb

    def long_lines_then_exit(self, n: int, size: int, code: int) -> None:
        for i in range(n):
            os.write(1, str(i).encode() * size + b"\n")
        os._exit(code)


@pytest.mark.slow
async def test_a_100_mb_line_without_a_newline_passes_in_linear_time() -> None:
    """A 100 MB line reaches the driver in 64 KiB pieces in one pass (it took 74 s before)."""
    import bigactor
    from bigactor._output import MAX_LINE

    seen: list[str] = []
    async with bigactor.open_cluster() as cluster:
        printer = await cluster.spawn(Printer)
        machine = bigactor.machine_of(printer)
        machine.output._write = seen.append  # what would reach stderr
        machine.output._limit = 1 << 30  # keep every line: this test counts them
        with trio.fail_after(30):  # a bound far above linear time, far below quadratic
            assert await printer.one_long_line(100) == 100
            while not any("after the long line" in text for text in seen):  # noqa: ASYNC110
                await trio.sleep(0.05)
    lines = "".join(seen).splitlines()
    pieces = [line for line in lines if line.endswith("x" * 100)]
    assert sum(len(p) - len(machine.addr) - 2 for p in pieces) == 100 << 20  # nothing lost
    assert max(len(p) for p in pieces) <= MAX_LINE + len(machine.addr) + 2


@pytest.mark.slow
async def test_errors_quote_last_lines_cut_to_a_bounded_size() -> None:
    """20 lines of 2 MB then exit: the error names the real exit code and stays small."""
    import bigactor
    from bigactor import MachineLost, State

    async with bigactor.open_cluster() as cluster:
        printer = await cluster.spawn(Printer)
        with pytest.raises(MachineLost):
            await printer.long_lines_then_exit(20, 2 << 20, 3)
        await bigactor.machine_of(printer).wait(State.STOPPED)
        message = str(bigactor.machine_of(printer).error)
    assert "exited with code 3" in message
    assert len(message) < 20_000  # was 40 MB
