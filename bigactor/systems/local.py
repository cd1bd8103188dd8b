"""The local system: machines are worker processes on this host.

Each worker runs the driver's own interpreter with the driver's ``sys.path``, working directory
and ``sys.argv``, plus the ``Environ`` asked for. Workers are forked from a *fork server*, a
template process that imported bigactor, trio and cloudpickle once, so a worker is ready in
milliseconds rather than the ~0.3 s a fresh interpreter needs (see ``supervisor._forkserver``);
where forking is not possible, or an ``Environ`` variable concerns the interpreter's own start
(``PYTHON*``, ``LD_*``, ``MALLOC_*``), a fresh ``python -m bigactor.supervisor`` is started.

Security: a worker listens on a Unix socket in a directory only the driver's user can enter
(mode 0700), and every connection must also pass the cluster-key handshake before anything it
sends is decoded. The key reaches the worker through a private pipe, never argv or environment.

No orphans, whatever a worker is doing: the *guardian* (see ``_guardian``), a small process of
its own that holds the driver's end of a socket, SIGKILLs every worker and removes the socket
directory when the driver dies, even by SIGKILL, even while a worker's loop is blocked or the
worker is stopped. A worker's own lifeline (end-of-file on a pipe only the driver writes) is
the second line. The fork server dying alone kills nothing: its workers keep serving, watched
through their pidfds, and the next machine gets a fresh fork server.

What the driver sees of a worker's process, at once and without keepalives: its exit (pidfd;
the exit code from its parent, the fork server or the driver), and a stop (SIGSTOP, SIGTSTP:
``/proc/<pid>/stat`` says ``T``), which makes the machine lost — a stopped worker answers
nobody. Keepalives stay long (see ``LocalSystem``), so that a long GIL-holding call or a
debugger never trips them.
"""

from __future__ import annotations

import array
import contextlib
import itertools
import json
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable

import attrs
import psutil
import trio

from .._contract import WatchdogConfig, WorkerConfig, worker_log_level
from .._output import LineSplitter
from .._system import Instance, KeepaliveConfig, System
from . import _guardian, _oom

log = logging.getLogger("bigactor.local")

_FRESH_PREFIXES = ("PYTHON", "LD_", "MALLOC_")
#: how often a live worker's process state is read, to see it stopped
STATE_POLL = 0.5
#: a worker seen stopped this long (consecutive polls) is lost
STOPPED_LOST = 1.0
#: how long an ended forked worker's exit code may take to come from the fork server
EXIT_CODE_WAIT = 1.0
#: the wait before a guardian that died is replaced
GUARDIAN_RESTART = 0.1


def _raise_fd_limit(want: int = 65536) -> None:
    """Each local machine holds four descriptors in the driver (its connection, lifeline,
    output pipe and pidfd): raise the soft limit toward the hard one so hundreds fit."""
    with contextlib.suppress(ImportError, ValueError, OSError):
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = want if hard == resource.RLIM_INFINITY else min(want, hard)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _reserve_stdio() -> None:
    """Open /dev/null on any of descriptors 0, 1, 2 the driver started without (``2>&-``).

    Otherwise the next socket or pipe the driver makes may land on one of them, and a child
    started with its stdio redirected would lose that descriptor (a worker's lifeline, the
    guardian's socket). ``sys.stderr`` stays None: only the descriptor is taken.
    """
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def _describe(pid: int, code: int | None) -> str:
    if code is None:
        return f"worker process {pid} exited (its exit status was lost with its fork server)"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"worker process {pid} was killed by {name}"
    return f"worker process {pid} exited with code {code}"


def _pidfd_open(pid: int) -> int | None:
    """A pidfd for ``pid`` (Linux 5.3+), or None where there are none or it is gone."""
    if not hasattr(os, "pidfd_open"):
        return None
    try:
        return os.pidfd_open(pid)
    except OSError:
        return None


def _process_state(pid: int) -> str:
    """The state letter of ``pid`` in ``/proc/<pid>/stat`` (``T`` stopped), or "" if unknown."""
    fields = _guardian.stat_fields(pid)
    return fields[0].decode() if fields else ""


def _host_memory() -> int:
    """The host's memory: what each local machine may use."""
    return int(psutil.virtual_memory().total)


class LocalInstance(Instance):
    """A worker process of the local system."""

    def __init__(self, addr: str, pid: int, lifeline: trio.lowlevel.FdStream,
                 output: trio.lowlevel.FdStream) -> None:  # fmt: skip
        self.addr = addr
        self.pid = pid
        self.maxprocs = 1
        self.memory = _host_memory()
        self.hostname = socket.gethostname()
        self.observes_exit = True
        self.pidfd = _pidfd_open(pid)
        self._lifeline = lifeline
        self._output = output
        self._oom_before = _oom.oom_kills(pid)
        self._ended = trio.Event()
        self._how = ""
        self._stopped_since: float | None = None
        #: set once the process has really exited (not only stopped) and its exit was described
        self.reaped = trio.Event()

    async def _wait_code(self) -> int | None:
        """Wait for the process to exit; return its code (negative: a signal) or None."""
        raise NotImplementedError

    async def watch(self) -> None:
        """Watch the process until it exits and describe its end (its being stopped is seen by
        :meth:`check_stopped`, which the system calls for all its workers at once)."""
        code = await self._wait_code()
        how = _describe(self.pid, code)
        if code == -signal.SIGKILL:
            cause = await trio.to_thread.run_sync(_oom.oom_cause, self.pid, self._oom_before)
            if cause:
                how = f"worker process {self.pid} was {cause}"
        self._end(how)
        self.reaped.set()
        await self._lifeline.aclose()
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None

    def check_stopped(self, now: float) -> None:
        """End the machine once its process has been stopped (SIGSTOP, SIGTSTP) for
        STOPPED_LOST seconds: it answers nobody. Called every STATE_POLL seconds."""
        if self._ended.is_set():
            return
        if _process_state(self.pid) != "T":
            self._stopped_since = None
        elif self._stopped_since is None:
            self._stopped_since = now
        elif now - self._stopped_since >= STOPPED_LOST:
            self._end(f"worker process {self.pid} was stopped by a signal (SIGSTOP or SIGTSTP) "
                      "and answers nobody")  # fmt: skip

    def _end(self, how: str) -> None:
        if not self._ended.is_set():
            self._how = how
            self._ended.set()

    async def wait_exit(self) -> str:
        await self._ended.wait()
        return self._how

    def ended(self) -> bool:
        if self._ended.is_set() or self.reaped.is_set():
            return True
        if self.pidfd is None:
            return False
        # A pidfd polls readable once its process has exited.
        return bool(select.select([self.pidfd], [], [], 0)[0])

    def watch_memory(self) -> None:
        """Note the OOM-kill counters of the worker's memory cgroups (again, if it moved)."""
        self._oom_before = _oom.oom_kills(self.pid)

    def kill(self) -> None:
        if self.reaped.is_set():
            return
        with contextlib.suppress(ProcessLookupError):
            if self.pidfd is not None:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            else:
                self._kill_by_pid()

    def _kill_by_pid(self) -> None:
        os.kill(self.pid, signal.SIGKILL)

    async def tail(self, line: Callable[[str], None]) -> None:
        lines = LineSplitter()
        async with self._output:
            while chunk := await self._output.receive_some(65536):
                for text in lines.feed(chunk):
                    line(text)
        for text in lines.finish():
            line(text)


class _SpawnedWorker(LocalInstance):
    def __init__(self, addr: str, process: trio.Process, lifeline: trio.lowlevel.FdStream,
                 output: trio.lowlevel.FdStream) -> None:  # fmt: skip
        super().__init__(addr, process.pid, lifeline, output)
        self.process = process

    async def _wait_code(self) -> int | None:
        return await self.process.wait()

    def _kill_by_pid(self) -> None:
        self.process.kill()


class _ForkedWorker(LocalInstance):
    def __init__(self, addr: str, pid: int, server: _ForkServer, lifeline: trio.lowlevel.FdStream,
                 output: trio.lowlevel.FdStream) -> None:  # fmt: skip
        super().__init__(addr, pid, lifeline, output)
        self._server = server

    async def _wait_code(self) -> int | None:
        if self.pidfd is None:
            return await self._server.wait(self.pid)
        # The pidfd says the process ended whoever its parent is now (the fork server may have
        # died before it); the code comes from the fork server, if it is there to tell.
        await trio.lowlevel.wait_readable(self.pidfd)
        with trio.move_on_after(EXIT_CODE_WAIT):
            return await self._server.wait(self.pid)
        return None

    def _kill_by_pid(self) -> None:
        if not self._server.exited(self.pid):
            os.kill(self.pid, signal.SIGKILL)


class _ForkServer:
    """The driver's end of the fork server (see ``bigactor.supervisor._forkserver``)."""

    def __init__(self, process: trio.Process, sock: trio.socket.SocketType) -> None:
        self.process = process
        self._sock = sock
        self._ids = itertools.count(1)
        self._forked: dict[int, tuple[trio.Event, list[int]]] = {}
        self._exits: dict[int, trio.Event] = {}
        self._codes: dict[int, int] = {}
        self._send_lock = trio.Lock()
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
            log.info("fork server connection failed: %r", exc)
        finally:
            if self.alive:
                log.info("the fork server ended; its workers go on, and new ones get a new one")
            self.alive = False
            for event, _ in self._forked.values():
                event.set()
            # Whoever waits for an exit code now learns that none will come (their workers
            # are watched through pidfds: the fork server's end is not theirs).
            for event in self._exits.values():
                event.set()
            with contextlib.suppress(OSError):
                self._sock.close()

    async def fork(self, env: dict[str, str], cwd: str, fds: list[int]) -> int | None:
        """Fork a worker with ``fds`` (listen, lifeline, output, debug); its pid, or None if it failed."""
        if not self.alive:
            return None
        request_id = next(self._ids)
        event, slot = trio.Event(), list[int]()
        self._forked[request_id] = (event, slot)
        message = json.dumps({"id": request_id, "env": env, "cwd": cwd}).encode()
        try:
            # One sender at a time: concurrent starts would otherwise both wait on a full
            # socket, and trio refuses two waiters on one descriptor (BusyResourceError).
            async with self._send_lock:
                await self._sock.sendmsg(
                    [message], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))]
                )
        except OSError:
            self._forked.pop(request_id, None)
            return None
        await event.wait()
        return slot[0] if slot else None

    def exited(self, pid: int) -> bool:
        return pid in self._codes

    async def wait(self, pid: int) -> int | None:
        """The exit code of ``pid``, once the fork server reports it; None if it cannot."""
        if pid not in self._codes and self.alive:
            await self._exits.setdefault(pid, trio.Event()).wait()
        # Reported once, asked once: nothing stays behind for a worker that is gone.
        self._exits.pop(pid, None)
        return self._codes.pop(pid, None)

    def tables(self) -> int:
        """How many entries the fork server's tables hold (bounded by the live workers)."""
        return len(self._forked) + len(self._exits) + len(self._codes)

    async def aclose(self) -> None:
        self._sock.close()
        with trio.move_on_after(5):
            await self.process.wait()
        if self.process.returncode is None:
            self.process.kill()


class _Guardian:
    """The driver's end of the guardian process (see ``_guardian``)."""

    def __init__(self, directory: str) -> None:
        self._dir = directory
        self._sock: socket.socket | None = None
        self.process: trio.Process | None = None
        self._closing = False

    async def run(
        self,
        instances: dict[int, LocalInstance],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Keep a guardian running: start one, and a new one if it dies, naming to it every
        live worker in ``instances`` again."""
        started = False
        while not self._closing:
            if started:
                await trio.sleep(GUARDIAN_RESTART)  # never a storm of restarts
            await self._start()
            for inst in list(instances.values()):
                self.watch(inst)
            if not started:
                started = True
                task_status.started()
            assert self.process is not None
            await self.process.wait()
            if not self._closing:
                log.warning("the guardian process ended (%s); starting a new one", self.process.returncode)

    async def _start(self) -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.process = await trio.lowlevel.open_process(
                # The driver's own interpreter (not the workers', which the user may have set);
                # -I -S: standard library only, no site: it starts in a few milliseconds.
                [sys.executable, "-I", "-S", _guardian.__file__, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), start_new_session=True,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        mine.setblocking(False)
        old, self._sock = self._sock, mine
        if old is not None:
            old.close()
        self._send(f"D {self._dir}")

    def _send(self, message: str, fds: list[int] | None = None) -> None:
        # Datagrams of a few bytes to a socket the guardian drains at once: sent at once, not
        # awaited, so cancellation never loses one. Never blocking either: a guardian that
        # does not drain (stopped) must not hang the driver; that worker is then unguarded.
        if self._sock is None:
            return
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        try:
            self._sock.sendmsg([message.encode()], ancillary)
        except BlockingIOError:
            log.warning("the guardian process does not keep up; %r is not guarded", message)
        except OSError as exc:  # the guardian died: run() starts the next one, which is told
            log.debug("guardian: %s not sent: %r", message, exc)

    def watch(self, inst: LocalInstance) -> None:
        """Have the guardian kill ``inst`` if the driver dies."""
        if inst.pidfd is not None:
            self._send(f"W {inst.pid}", [inst.pidfd])
        else:
            self._send(f"P {inst.pid} {_guardian.start_time(inst.pid) or 0}")

    async def aclose(self) -> None:
        """Close the driver's end: the guardian kills what is left, removes the directory, ends."""
        self._closing = True
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self.process is not None:
            with trio.move_on_after(5):
                await self.process.wait()


@attrs.define(kw_only=True)
class LocalSystem(System):
    """Worker processes on this host (the default system).

    Args:
        keepalive: keepalive period/timeout/rpc timeout. bigmachine's local defaults (a
            keepalive every 30 s, lost after 2 min of failures): on this system the process's
            exit and its being stopped are seen at once without them, so keepalives only
            have to catch a worker that runs but never answers, and must not trip on a long
            GIL-holding call or a worker paused in a debugger.
        watchdog: when an unattended worker exits.
        python: the interpreter for workers (default: the driver's own).
        log_level: the ``logging`` level configured in workers (default: the driver's root
            logger's level when each starts).
        forkserver: fork workers from a preloaded template (Linux); False starts each worker
            as a fresh interpreter.

    Each option may also be set in the environment as ``BIGACTOR_LOCAL_<OPTION>``
    (``BIGACTOR_LOCAL_FORKSERVER=no``, ``BIGACTOR_LOCAL_KEEPALIVE=timeout=30``); a keyword wins.
    """

    name = "local"
    keepalive: KeepaliveConfig = KeepaliveConfig(period=60.0, timeout=120.0, rpc_timeout=10.0)
    watchdog: WatchdogConfig = attrs.field(factory=WatchdogConfig)
    python: str = sys.executable
    log_level: int | None = None
    boot_timeout: float = 60.0
    forkserver: bool = sys.platform == "linux"
    key: bytes = attrs.field(default=b"", init=False)
    _dir: str = ""
    _count: int = 0
    _nursery: trio.Nursery | None = None
    _server: _ForkServer | None = None
    _server_lock: trio.Lock = attrs.field(factory=trio.Lock)
    _guardian: _Guardian | None = None
    #: the live workers by pid; a worker leaves the table when its exit has been seen
    _instances: dict[int, LocalInstance] = attrs.field(factory=dict)

    def capacity(self) -> tuple[int, int | None]:
        return (1, _host_memory())

    async def setup(self, nursery: trio.Nursery, key: bytes) -> None:
        self.key = key
        self._nursery = nursery
        _raise_fd_limit()
        _reserve_stdio()
        self._dir = tempfile.mkdtemp(prefix="bigactor-")  # mode 0700: only this user enters
        self._guardian = _Guardian(self._dir)
        await nursery.start(self._guardian.run, self._instances)
        nursery.start_soon(self._watch_stops, name="local workers stopped by a signal")

    async def _watch_stops(self) -> None:
        # One task for every worker: a task each woke 2 x N times a second (~5% of a core in
        # the driver with 64 idle machines).
        while True:
            await trio.sleep(STATE_POLL)
            now = trio.current_time()
            for inst in list(self._instances.values()):
                inst.check_stopped(now)

    async def start(self, n: int, env: dict[str, str]) -> list[Instance]:
        # All at once: each waits for its fork (a round trip to the template) and sends its
        # configuration; one at a time those add up with the cluster's size.
        started: list[Instance | None] = [None] * n

        async def one(i: int) -> None:
            started[i] = await self._start_one(env)

        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(one, i)
        return [inst for inst in started if inst is not None]

    async def _fork_server(self) -> _ForkServer | None:
        async with self._server_lock:
            if (self._server is None or not self._server.alive) and self._nursery is not None:
                self._server = await _ForkServer.start(self.python, self._nursery)
        return self._server

    async def _start_one(self, env: dict[str, str]) -> LocalInstance:
        assert self._nursery is not None, "LocalSystem.setup was not called"
        self._count += 1
        path = os.path.join(self._dir, f"m{self._count}")
        addr = f"unix:{path}"
        cwd = os.getcwd()
        child_env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lifeline_r, lifeline_w = os.pipe()
        output_r, output_w = os.pipe()
        # The worker's standard input: pdb's terminal for breakpoint() (see _breakpoint).
        debug, debug_theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        inst: LocalInstance | None = None
        try:
            listener.bind(path)
            listener.listen(256)
            fds = [listener.fileno(), lifeline_r, output_w, debug_theirs.fileno()]
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
                    stdin=debug_theirs, stdout=output_w, stderr=output_w, pass_fds=fds[:2],
                    env=child_env, cwd=cwd, start_new_session=True,
                )  # fmt: skip
                inst = _SpawnedWorker(
                    addr, process, trio.lowlevel.FdStream(lifeline_w), trio.lowlevel.FdStream(output_r)
                )
        finally:
            listener.close()
            debug_theirs.close()
            os.close(lifeline_r)
            os.close(output_w)
            if inst is None:
                os.close(lifeline_w)
                os.close(output_r)
                debug.close()
        inst.debug_stream = trio.SocketStream(trio.socket.from_stdlib_socket(debug))
        # The guardian knows the worker before the worker gets its configuration: a driver that
        # dies in between leaves a worker that reads end-of-file first and exits by itself.
        self._instances[inst.pid] = inst
        if self._guardian is not None:
            self._guardian.watch(inst)
        self._nursery.start_soon(self._watch, inst, name=f"local worker {inst.pid}")
        config = WorkerConfig(
            key=self.key,
            addr=addr,
            # Relative entries (the script's own directory may be "") resolve against the cwd.
            sys_path=[os.path.join(cwd, p) for p in sys.path],
            argv=sys.argv,
            watchdog=self.watchdog,
            log_level=worker_log_level(self.log_level),
        )
        # A worker that died at once cannot read it; its exit, when seen, says how.
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await inst._lifeline.send_all(config.to_json() + b"\n")
        return inst

    async def _watch(self, inst: LocalInstance) -> None:
        try:
            await inst.watch()
        finally:
            self._instances.pop(inst.pid, None)

    def tables(self) -> int:
        """Entries the system holds for workers (bounded by the live ones; for tests)."""
        return len(self._instances) + (self._server.tables() if self._server is not None else 0)

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            instances = list(self._instances.values())
            for inst in instances:
                inst.kill()
            for inst in instances:
                with trio.move_on_after(5):
                    await inst.reaped.wait()
            if self._server is not None:
                await self._server.aclose()
            if self._dir:
                shutil.rmtree(self._dir, ignore_errors=True)
            if self._guardian is not None:
                await self._guardian.aclose()
