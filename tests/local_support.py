"""Actors and helpers shared by the local-system tests (test_local*.py).

Classes defined here reach the workers by reference: the driver's ``sys.path`` is the workers'.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import trio
import trio.testing

import bigactor

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


async def first_line(proc: trio.Process, what: str) -> bytes:
    """The first line ``proc`` prints on its stdout pipe (within 60 s)."""
    assert proc.stdout is not None
    out = b""
    with trio.fail_after(60):
        while not out.endswith(b"\n"):
            chunk = await proc.stdout.receive_some(4096)
            assert chunk, f"the driver ended before it printed {what}"
            out += chunk
    return out


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
