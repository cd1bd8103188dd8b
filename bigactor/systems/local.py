"""The local system: machines are worker processes on this host.

Each worker runs the driver's own interpreter with the driver's ``sys.path``, working directory
and ``sys.argv``, plus the ``Environ`` asked for. Workers are forked from a *fork server*, a
template process that imported bigactor, trio and dill once, so a worker is ready in
milliseconds rather than the ~0.3 s a fresh interpreter needs (see ``supervisor._forkserver``);
where forking is not possible, or an ``Environ`` variable concerns the interpreter's own start
(``PYTHON*``, ``LD_*``, ``MALLOC_*``), a fresh ``python -m bigactor.supervisor`` is started.

Security: a worker listens on a Unix socket in a directory only the driver's user can enter
(mode 0700), and every connection must also pass the cluster-key handshake before anything it
sends is decoded. The key reaches the worker through a private pipe, never argv or environment.

No orphans: the driver holds the only write end of a pipe to each worker; when the driver dies,
even by SIGKILL, the worker reads end-of-file and exits at once (and so does the fork server).
"""

from __future__ import annotations

import array
import contextlib
import itertools
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
from . import _oom

log = logging.getLogger("bigactor.local")

_FRESH_PREFIXES = ("PYTHON", "LD_", "MALLOC_")


def _raise_fd_limit(want: int = 65536) -> None:
    """Each local machine holds three descriptors in the driver (its connection, lifeline and
    output pipe): raise the soft limit toward the hard one so hundreds of machines fit."""
    with contextlib.suppress(ImportError, ValueError, OSError):
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = want if hard == resource.RLIM_INFINITY else min(want, hard)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _describe(pid: int, code: int | None) -> str:
    if code is None:
        return f"worker process {pid} was lost with the fork server"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"worker process {pid} was killed by {name}"
    return f"worker process {pid} exited with code {code}"


class LocalInstance(Instance):
    """A worker process of the local system."""

    def __init__(self, addr: str, pid: int, lifeline: trio.lowlevel.FdStream,
                 output: trio.lowlevel.FdStream) -> None:  # fmt: skip
        self.addr = addr
        self.pid = pid
        self.maxprocs = 1
        self.hostname = socket.gethostname()
        self.observes_exit = True
        self._lifeline = lifeline
        self._output = output
        self._oom_before = _oom.oom_kills(pid)

    async def _wait_code(self) -> int | None:
        raise NotImplementedError

    async def wait_exit(self) -> str:
        code = await self._wait_code()
        await self._lifeline.aclose()
        if code == -signal.SIGKILL:
            cause = await trio.to_thread.run_sync(_oom.oom_cause, self.pid, self._oom_before)
            if cause:
                return f"worker process {self.pid} was {cause}"
        return _describe(self.pid, code)

    def watch_memory(self) -> None:
        """Note the OOM-kill counters of the worker's memory cgroups (again, if it moved)."""
        self._oom_before = _oom.oom_kills(self.pid)

    async def tail(self, line: Callable[[str], None]) -> None:
        buf = b""
        async with self._output:
            while True:
                chunk = await self._output.receive_some(65536)
                if not chunk:
                    break
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for raw in lines:
                    line(raw.decode(errors="replace"))
        if buf:
            line(buf.decode(errors="replace"))


class _SpawnedWorker(LocalInstance):
    def __init__(self, addr: str, process: trio.Process, lifeline: trio.lowlevel.FdStream,
                 output: trio.lowlevel.FdStream) -> None:  # fmt: skip
        super().__init__(addr, process.pid, lifeline, output)
        self.process = process

    async def _wait_code(self) -> int | None:
        return await self.process.wait()

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()


class _ForkedWorker(LocalInstance):
    def __init__(self, addr: str, pid: int, server: _ForkServer, lifeline: trio.lowlevel.FdStream,
                 output: trio.lowlevel.FdStream) -> None:  # fmt: skip
        super().__init__(addr, pid, lifeline, output)
        self._server = server

    async def _wait_code(self) -> int | None:
        return await self._server.wait(self.pid)

    def kill(self) -> None:
        if not self._server.exited(self.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)


class _ForkServer:
    """The driver's end of the fork server (see ``bigactor.supervisor._forkserver``)."""

    def __init__(self, process: trio.Process, sock: trio.socket.SocketType) -> None:
        self.process = process
        self._sock = sock
        self._ids = itertools.count(1)
        self._forked: dict[int, tuple[trio.Event, list[int]]] = {}
        self._exits: dict[int, trio.Event] = {}
        self._codes: dict[int, int | None] = {}
        self.alive = True

    @classmethod
    async def start(cls, python: str, nursery: trio.Nursery) -> _ForkServer:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            process = await trio.lowlevel.open_process(
                [python, "-m", "bigactor.supervisor._forkserver", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, start_new_session=True,
                # Never the driver's stdio: it may be closed (then fd 1 or 2 may be some other
                # file of the driver's) or broken. Workers get output pipes of their own.
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        finally:
            theirs.close()
        server = cls(process, trio.socket.from_stdlib_socket(mine))
        nursery.start_soon(server._read, name="fork server")
        return server

    async def _read(self) -> None:
        try:
            while True:
                message = await self._sock.recv(65536)
                if not message:
                    break
                reply = json.loads(message)
                if "pid" in reply:
                    event, slot = self._forked.pop(reply["id"])
                    slot.append(reply["pid"])
                    event.set()
                else:
                    self._codes[reply["exit"]] = reply["code"]
                    self._exits.setdefault(reply["exit"], trio.Event()).set()
        except trio.ClosedResourceError:
            pass  # closed by aclose
        except OSError as exc:
            log.info("fork server connection failed (workers start fresh from now on): %r", exc)
        finally:
            self.alive = False
            for event, _ in self._forked.values():
                event.set()
            for pid, event in self._exits.items():
                self._codes.setdefault(pid, None)
                event.set()

    async def fork(self, env: dict[str, str], cwd: str, fds: list[int]) -> int | None:
        """Fork a worker with ``fds`` (listen, lifeline, output); its pid, or None if it failed."""
        if not self.alive:
            return None
        request_id = next(self._ids)
        event, slot = trio.Event(), list[int]()
        self._forked[request_id] = (event, slot)
        message = json.dumps({"id": request_id, "env": env, "cwd": cwd}).encode()
        try:
            await self._sock.sendmsg(
                [message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
            )
        except OSError:
            self._forked.pop(request_id, None)
            return None
        await event.wait()
        if not slot:
            return None
        pid = slot[0]
        self._exits.setdefault(pid, trio.Event())
        return pid

    def exited(self, pid: int) -> bool:
        return pid in self._codes

    async def wait(self, pid: int) -> int | None:
        await self._exits.setdefault(pid, trio.Event()).wait()
        return self._codes.get(pid)

    async def aclose(self) -> None:
        self._sock.close()
        with trio.move_on_after(5):
            await self.process.wait()
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
        forkserver: fork workers from a preloaded template (Linux); False starts each worker
            as a fresh interpreter.
    """

    name = "local"
    keepalive: KeepaliveConfig = KeepaliveConfig(period=60.0, timeout=120.0, rpc_timeout=10.0)
    watchdog: WatchdogConfig = WatchdogConfig()
    python: str = sys.executable
    log_level: int = logging.WARNING
    boot_timeout: float = 60.0
    forkserver: bool = sys.platform == "linux"
    key: bytes = b""
    _dir: str = ""
    _count: int = 0
    _nursery: trio.Nursery | None = None
    _server: _ForkServer | None = None
    _server_lock: trio.Lock = attrs.field(factory=trio.Lock)
    _instances: list[LocalInstance] = attrs.field(factory=list)

    async def setup(self, nursery: trio.Nursery, key: bytes) -> None:
        self.key = key
        self._nursery = nursery
        _raise_fd_limit()
        self._dir = tempfile.mkdtemp(prefix="bigactor-")  # mode 0700: only this user enters

    async def start(self, n: int, env: dict[str, str]) -> list[Instance]:
        return [await self._start_one(env) for _ in range(n)]

    async def _fork_server(self) -> _ForkServer | None:
        async with self._server_lock:
            if self._server is None and self._nursery is not None:
                self._server = await _ForkServer.start(self.python, self._nursery)
        return self._server

    async def _start_one(self, env: dict[str, str]) -> LocalInstance:
        self._count += 1
        path = os.path.join(self._dir, f"m{self._count}")
        addr = f"unix:{path}"
        cwd = os.getcwd()
        child_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lifeline_r, lifeline_w = os.pipe()
        output_r, output_w = os.pipe()
        inst: LocalInstance | None = None
        try:
            listener.bind(path)
            listener.listen(256)
            fds = [listener.fileno(), lifeline_r, output_w]
            server = None
            if self.forkserver and not any(k.startswith(_FRESH_PREFIXES) for k in env):
                server = await self._fork_server()
            pid = await server.fork(child_env, cwd, fds) if server is not None else None
            if server is not None and pid is not None:
                inst = _ForkedWorker(
                    addr, pid, server, trio.lowlevel.FdStream(lifeline_w), trio.lowlevel.FdStream(output_r)
                )
            else:
                process = await trio.lowlevel.open_process(
                    [self.python, "-m", "bigactor.supervisor", "--listen-fd", str(fds[0]),
                     "--lifeline-fd", str(lifeline_r)],
                    stdin=subprocess.DEVNULL, stdout=output_w, stderr=output_w, pass_fds=fds[:2],
                    env=child_env, cwd=cwd, start_new_session=True,
                )  # fmt: skip
                inst = _SpawnedWorker(
                    addr, process, trio.lowlevel.FdStream(lifeline_w), trio.lowlevel.FdStream(output_r)
                )
        finally:
            listener.close()
            os.close(lifeline_r)
            os.close(output_w)
            if inst is None:
                os.close(lifeline_w)
                os.close(output_r)
        config = {
            "key": self.key.hex(),
            "addr": addr,
            # Relative entries (the script's own directory may be "") resolve against the cwd.
            "sys_path": [os.path.join(cwd, p) for p in sys.path],
            "argv": list(sys.argv),
            "watchdog": attrs.asdict(self.watchdog),
            "log_level": self.log_level,
        }
        self._instances.append(inst)
        # A worker that died at once cannot read it; its exit, when seen, says how.
        with contextlib.suppress(trio.BrokenResourceError):
            await inst._lifeline.send_all(json.dumps(config).encode() + b"\n")
        return inst

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            for inst in self._instances:
                inst.kill()
            for inst in self._instances:
                with trio.move_on_after(5):
                    await inst._wait_code()
                await inst._lifeline.aclose()
            self._instances.clear()
            if self._server is not None:
                await self._server.aclose()
            if self._dir:
                shutil.rmtree(self._dir, ignore_errors=True)
