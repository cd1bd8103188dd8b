"""The local system: machines are worker processes on this host.

Each worker is ``python -m bigactor.supervisor`` run by the driver's own interpreter, with the
driver's ``sys.path``, working directory and ``sys.argv``, plus the ``Environ`` asked for.

Security: a worker listens on a Unix socket in a directory only the driver's user can enter
(mode 0700), and every connection must also pass the cluster-key handshake before anything it
sends is decoded. The key reaches the worker through a private pipe, never argv or environment.

No orphans: the driver holds the only write end of a pipe to each worker; when the driver dies,
even by SIGKILL, the worker reads end-of-file and exits at once.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable

import attrs
import trio

from .._system import Instance, KeepaliveConfig, System
from ..supervisor import WatchdogConfig

log = logging.getLogger("bigactor.local")


class LocalInstance(Instance):
    """A worker process of the local system."""

    def __init__(self, addr: str, process: trio.Process, lifeline: trio.lowlevel.FdStream) -> None:
        self.addr = addr
        self.maxprocs = 1
        self.hostname = socket.gethostname()
        self.observes_exit = True
        self.process = process
        self._lifeline = lifeline

    async def wait_exit(self) -> str:
        code = await self.process.wait()
        await self._lifeline.aclose()
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"worker process {self.process.pid} was killed by {name}"
        return f"worker process {self.process.pid} exited with code {code}"

    async def tail(self, line: Callable[[str], None]) -> None:
        stdout = self.process.stdout
        assert stdout is not None
        buf = b""
        while True:
            chunk = await stdout.receive_some(65536)
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for raw in lines:
                line(raw.decode(errors="replace"))
        if buf:
            line(buf.decode(errors="replace"))

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()


@attrs.define(kw_only=True)
class LocalSystem(System):
    """Worker processes on this host (the default system).

    Args:
        keepalive: keepalive period/timeout/rpc timeout (bigmachine's local defaults).
        watchdog: when an unattended worker exits.
        python: the interpreter for workers (default: the driver's own).
        log_level: the ``logging`` level configured in workers.
    """

    name = "local"
    keepalive: KeepaliveConfig = KeepaliveConfig(period=60.0, timeout=120.0, rpc_timeout=10.0)
    watchdog: WatchdogConfig = WatchdogConfig()
    python: str = sys.executable
    log_level: int = logging.WARNING
    boot_timeout: float = 60.0
    key: bytes = b""
    _dir: str = ""
    _count: int = 0
    _instances: list[LocalInstance] = attrs.field(factory=list)

    async def setup(self, nursery: trio.Nursery, key: bytes) -> None:
        self.key = key
        self._dir = tempfile.mkdtemp(prefix="bigactor-")  # mode 0700: only this user enters

    async def start(self, n: int, env: dict[str, str]) -> list[Instance]:
        return [await self._start_one(env) for _ in range(n)]

    async def _start_one(self, env: dict[str, str]) -> LocalInstance:
        self._count += 1
        path = os.path.join(self._dir, f"m{self._count}")
        addr = f"unix:{path}"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        read_end, write_end = os.pipe()
        try:
            listener.bind(path)
            listener.listen(256)
            child_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
            process = await trio.lowlevel.open_process(
                [
                    self.python,
                    "-m",
                    "bigactor.supervisor",
                    "--listen-fd",
                    str(listener.fileno()),
                    "--lifeline-fd",
                    str(read_end),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=(listener.fileno(), read_end),
                env=child_env,
                cwd=os.getcwd(),
                start_new_session=True,
            )
        except BaseException:
            os.close(write_end)
            raise
        finally:
            listener.close()
            os.close(read_end)
        lifeline = trio.lowlevel.FdStream(write_end)
        cwd = os.getcwd()
        config = {
            "key": self.key.hex(),
            "addr": addr,
            # Relative entries (the script's own directory may be "") resolve against the cwd.
            "sys_path": [os.path.join(cwd, p) for p in sys.path],
            "argv": list(sys.argv),
            "watchdog": attrs.asdict(self.watchdog),
            "log_level": self.log_level,
        }
        await lifeline.send_all(json.dumps(config).encode() + b"\n")
        inst = LocalInstance(addr, process, lifeline)
        self._instances.append(inst)
        return inst

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            for inst in self._instances:
                inst.kill()
            for inst in self._instances:
                with trio.move_on_after(5):
                    await inst.process.wait()
                await inst._lifeline.aclose()
            self._instances.clear()
            if self._dir:
                shutil.rmtree(self._dir, ignore_errors=True)
