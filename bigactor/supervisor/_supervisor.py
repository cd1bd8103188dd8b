"""The Supervisor service every machine hosts, and the worker process around it.

The driver talks to a machine only through this service: ping, info, keepalive, register a
service, spawn an actor, environment and argv, process and resource info, shutdown; and two
streams it subscribes to: the machine's notices (:meth:`Worker.notice`: it will go away soon)
and, where the worker captures its own output (a machine on another host), that output. The
watchdog ends the worker when keepalives stop coming (bigmachine's behaviour, spec §2.4).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import logging
import os
import platform
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import attrs
import psutil
import trio

from .. import _codec, _rpc, _version
from .._contract import SYNC_MARKER, DiskInfo, Info, KeepaliveReply, LoadInfo, MemInfo, WatchdogConfig
from .._errors import CodecError, ServiceNotFound
from .._title import set_title, worker_title
from . import _introspect
from ._breakpoint import ConnectionChannel
from ._capture import OutputCapture

log = logging.getLogger("bigactor.supervisor")


@functools.cache
def code_digest() -> str:
    """SHA-256 over bigactor's own source files: equal digests mean equal code."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parent.parent
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _mem_info() -> MemInfo:
    vm = psutil.virtual_memory()
    return MemInfo(vm.total, vm.available, vm.used, vm.percent, psutil.Process().memory_info().rss)


def _disk_info() -> DiskInfo:
    path = tempfile.gettempdir()
    du = psutil.disk_usage(path)
    return DiskInfo(path, du.total, du.used, du.free, du.percent)


@attrs.frozen
class Context:
    """What a service's ``init(ctx)`` gets: its machine and a cluster for dialing others."""

    addr: str
    info: Info
    cluster: Any


class Supervisor:
    """The service named ``Supervisor`` on every machine."""

    def __init__(self, worker: Worker) -> None:
        self._worker = worker

    async def ping(self, seq: int = 0) -> int:
        return seq

    async def info(self) -> Info:
        return self._worker.info()

    async def keepalive(self, next: float) -> KeepaliveReply:
        return self._worker.keepalive(next)

    async def register(self, name: str, blob: bytes) -> dict[str, str]:
        """Host the service serialised in ``blob`` as ``name``; run its ``init(ctx)`` if any."""
        try:
            instance = _codec.loads(blob)
        except Exception as exc:
            raise CodecError(f"cannot decode service {name!r}: {type(exc).__name__}: {exc}") from exc
        return (await self._host(name, instance)).methods

    async def spawn(
        self,
        name: str | None,
        cls: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        max_concurrency: int | None = None,
        asyncio: bool = False,
    ) -> tuple[str, dict[str, str]]:
        """Construct ``cls(*args, **kwargs)`` here, on the actor's own thread (or its asyncio
        loop: see ``ActorTable.spawn``), and host it; return its name and methods."""
        actor = await self._worker.table.spawn(name, cls, args, kwargs, max_concurrency, asyncio)
        await self._init(actor)
        self._worker.retitle()
        return actor.name, actor.methods

    async def stop_actor(self, name: str, grace: float) -> int:
        """Stop hosting the actor ``name``: run its ``shutdown()`` hook, if it has one, for at
        most ``grace`` seconds, then drop it. Returns how many actors are left here."""
        actor = self._worker.table.actors.get(name)
        if actor is None or name == "Supervisor":
            raise ServiceNotFound(self._worker.addr, name, "no actor of that name here")
        hook = getattr(actor.instance, "shutdown", None)
        try:
            if callable(hook):
                with trio.move_on_after(grace) as scope:
                    if inspect.iscoroutinefunction(inspect.unwrap(hook)):
                        await actor.await_method(hook())
                    else:
                        await actor.run_sync(hook)  # on its own thread, after queued calls
                if scope.cancelled_caught:
                    log.warning("%s: %s.shutdown() took longer than %.1f s; stopped anyway",
                                self._worker.addr, name, grace)  # fmt: skip
        finally:
            self._worker.table.actors.pop(name, None)
            actor.close()
            self._worker.retitle()
        return len(self._worker.table.actors) - 1

    async def attach_driver(self) -> None:
        """Make the connection this call came on this machine's way back to its driver."""
        self._worker.driver.attach(_rpc.current_connection.get())

    async def _host(self, name: str, instance: Any) -> _rpc.Actor:
        """Host ``instance``; run its ``init(ctx)`` if it has one (a failed init hosts nothing)."""
        actor = self._worker.table.add(name, instance)
        await self._init(actor)
        self._worker.retitle()
        return actor

    async def _init(self, actor: _rpc.Actor) -> None:
        """Run the hosted actor's ``init(ctx)`` if it has one; if it fails, unhost the actor."""
        init = getattr(actor.instance, "init", None)
        if init is not None:
            try:
                result = init(self._worker.context())
                if hasattr(result, "__await__"):
                    await result
            except BaseException:
                self._worker.table.actors.pop(actor.name, None)
                actor.close()
                raise

    async def idempotent(self, target: str) -> bool:
        """Whether ``"actor.method"`` is marked ``@bigactor.idempotent`` (safe to re-send)."""
        _, fn, _ = self._worker.table.resolve(target)
        return _rpc.is_idempotent(fn)

    async def actors(self) -> dict[str, dict[str, str]]:
        return {name: a.methods for name, a in self._worker.table.actors.items()}

    async def set_names(self, names: dict[str, Any]) -> None:
        """Replace this machine's table of the cluster's named actors (see Cluster.actor)."""
        if self._worker.cluster is not None:
            self._worker.cluster._names = dict(names)

    async def stats(self) -> dict[str, Any]:
        """Counters: server side per method, caller side per machine this worker called, and
        the actors hosted here with their types."""
        cluster = self._worker.cluster
        machines = cluster.machines() if cluster is not None else []
        return {
            "server": self._worker.table.metrics.snapshot(),
            "client": {m.addr: m.metrics.snapshot() for m in machines},
            "actors": {
                name: type(a.instance).__qualname__
                for name, a in self._worker.table.actors.items()
                if name != "Supervisor"
            },
        }

    async def profile(self, seconds: float, kind: str = "sampled") -> dict[str, Any]:
        """A CPU profile of this machine over ``seconds`` (see ``_introspect.profile``)."""
        return await _introspect.profile(seconds, kind=kind)

    async def memory_report(self, top: int = 15) -> str:
        """What this worker holds: live objects by type (and tracemalloc's top allocation
        sites when the user turned tracing on), as text."""
        return _introspect.memory_report(top)

    async def stacks(self) -> str:
        """Every thread's stack and the Trio task tree, as text."""
        return _introspect.stacks()

    async def setenv(self, env: dict[str, str]) -> None:
        os.environ.update(env)

    async def setargs(self, args: list[str]) -> None:
        sys.argv[:] = list(args)

    async def getpid(self) -> int:
        return os.getpid()

    async def mem_info(self) -> MemInfo:
        mem: MemInfo = await self._worker.run_sync(_mem_info)
        return mem

    async def disk_info(self) -> DiskInfo:
        disk: DiskInfo = await self._worker.run_sync(_disk_info)
        return disk

    async def status(self) -> dict[str, Any]:
        """What ``cluster.status()`` shows of this machine, in one answer: ``info``, ``memory``,
        ``disk``, ``load`` and the :meth:`stats` (one round trip and one thread hop for the
        driver to ask a thousand machines, not five and two)."""
        mem, disk = await self._worker.run_sync(lambda: (_mem_info(), _disk_info()))
        return {
            "info": self._worker.info(),
            "memory": mem,
            "disk": disk,
            "load": LoadInfo(*os.getloadavg()),
            **await self.stats(),
        }

    async def load_info(self) -> LoadInfo:
        return LoadInfo(*os.getloadavg())

    async def renew_certificate(self, cert_pem: bytes) -> None:
        """Present ``cert_pem`` (PEM), the driver's renewal of this machine's certificate, in
        every later TLS handshake, as server and as client; ValueError, changing nothing, unless
        it is from the cluster's CA, for this machine's key and names its address (see
        ``Worker.renew_certificate``)."""
        self._worker.renew_certificate(cert_pem)

    async def shutdown(self, delay: float = 0.0, message: str = SYNC_MARKER) -> None:
        """Reply, then after ``delay`` print ``message`` (the output sync marker) and exit 0."""
        self._worker.nursery.start_soon(self._worker.shutdown, delay, message)

    async def notices(self, since: int = 0) -> AsyncIterator[tuple[float, str, str]]:
        """The machine's notices from the ``since``-th on, as ``(time, kind, message)``: those
        given already, then each as it comes. Never ends on its own."""
        worker = self._worker
        while True:
            while since < len(worker.notices):
                yield worker.notices[since]
                since += 1
            await worker.wait_notice()

    async def debugger(self) -> AsyncIterator[dict[str, Any]]:
        """The messages of this machine's debugger sessions (``breakpoint()`` in an actor), for
        the driver's terminal, on a machine whose sessions go over its connection (another
        host's; see ``_breakpoint``); ends at once on any other."""
        channel = self._worker.debugger
        if channel is None:
            return
        async for message in channel.outbox:
            yield message

    async def debugger_input(self, reply: dict[str, Any]) -> None:
        """The driver's answer to the waiting debugger session: a line typed, or an interrupt."""
        if self._worker.debugger is not None:
            self._worker.debugger.inbox.put(reply)

    async def output(self) -> AsyncIterator[bytes]:
        """The machine's captured stdout and stderr, in pieces as written (see ``_capture``);
        ends at once where the worker does not capture them. One reader at a time: a new
        stream (after a broken connection) ends the one before."""
        capture = self._worker.output
        if capture is None:
            return
        reader = capture.subscribe()
        try:
            while (data := await capture.take(reader)) is not None:
                yield data
        finally:
            capture.closed(reader)


class Worker:
    """One machine's process-wide state: its actors, watchdog and way out."""

    def __init__(
        self,
        addr: str,
        key: bytes,
        nursery: trio.Nursery,
        exit: Callable[[int], None],
        run_sync: _rpc.RunSync = _rpc.run_in_thread,
        watchdog: WatchdogConfig | None = None,
        cluster: Any = None,
        announce: Callable[[str], None] | None = None,
        driver: _rpc.Link | None = None,
        transport: _rpc.Transport | None = None,
        output: OutputCapture | None = None,
        titled: bool = False,
    ) -> None:
        if watchdog is None:
            watchdog = WatchdogConfig()
        self.addr = addr
        #: how connections to this machine are accepted (the plain transport by default)
        self.transport = transport if transport is not None else _rpc.Transport()
        self._announce = announce
        self.key = key
        self.nursery = nursery
        self.run_sync = run_sync
        self.cluster = cluster
        self._exit = exit
        self._watchdog = watchdog
        self._started = time.time()
        self._deadline = trio.current_time() + watchdog.boot_grace
        self._forgive = False
        #: the debugger sessions' way to the driver over the connection (another host's machine)
        self.debugger: ConnectionChannel | None = None
        self.healthy = True
        self.exited: int | None = None
        #: this process's stdout and stderr, where the worker captures them for the driver
        self.output = output
        #: the notices given (``notice``), as ``(time, kind, message)``, oldest first
        self.notices: list[tuple[float, str, str]] = []
        self._noticed = trio.Event()
        self.table = _rpc.ActorTable(addr, nursery, run_sync)
        #: the way back to the driver (attached by the driver's first call on a connection)
        self.driver = driver if driver is not None else _rpc.Link()
        self.table.add("Supervisor", Supervisor(self))
        self._titled = titled
        self.retitle()
        nursery.start_soon(self._watch, name=f"watchdog {addr}")

    def retitle(self) -> None:
        """Show this machine's address and actors as its process's title, if it owns one."""
        if self._titled:
            set_title(worker_title(self.addr, self.table.actors))

    def info(self) -> Info:
        return Info(
            platform.python_version(),
            _version.__version__,
            f"{_codec.PICKLER} {_codec.PICKLER_VERSION}",
            platform.platform(),
            code_digest(),
            os.getpid(),
            socket.gethostname(),
            self._started,
        )

    def context(self) -> Context:
        return Context(self.addr, self.info(), self.cluster)

    def keepalive(self, next: float) -> KeepaliveReply:
        self._deadline = trio.current_time() + next
        _rpc.receive_buffers.trim()  # an idle worker gives back the large buffers it kept
        return KeepaliveReply(next, self.healthy)

    def notice(self, kind: str, message: str) -> None:
        """Tell the driver that this machine will go away soon: ``kind`` says why (e.g.
        ``"interruption"``, a spot instance being reclaimed), ``message`` what is known.

        Never blocks; the driver, subscribed to ``Supervisor.notices``, has it within one round
        trip, or as soon as it connects again. The driver marks the machine draining, runs its
        cluster's ``on_draining`` callback, and names the notice when the machine is lost. Call
        it from the worker's Trio thread.
        """
        self.notices.append((time.time(), str(kind), str(message)))
        log.warning("%s: %s notice: %s", self.addr, kind, message)
        self._noticed.set()
        self._noticed = trio.Event()

    async def wait_notice(self) -> None:
        """Return at the next :meth:`notice`."""
        await self._noticed.wait()

    def renew_certificate(self, cert_pem: bytes) -> None:
        """Make the machine's transport present ``cert_pem`` from its next handshake on: to the
        connections it accepts and to the machines it dials. Connections open now carry on.

        Raises ValueError, changing nothing, if the machine serves no TLS, or ``cert_pem`` is
        not signed by the cluster's CA, not valid now, for another key or does not name the
        host of this machine's address (``_pki.check_renewal``).
        """
        # Imported here: cryptography is for machines on TLS, not for every worker's start.
        from .._pki import check_renewal, expires
        from .._rpc._tls import TLSTransport, parse_address

        transport = self.transport
        if not isinstance(transport, TLSTransport):
            raise ValueError(
                f"machine {self.addr} has no certificate to renew: its transport is "
                f"{type(transport).__name__}, not TLS"
            )
        host, _ = parse_address(self.addr)
        try:
            identity = check_renewal(cert_pem, transport.identity, transport.ca_pem, host)
        except ValueError as exc:
            log.error("%s: refused a certificate renewal: %s", self.addr, exc)
            raise ValueError(f"machine {self.addr} refused the certificate: {exc}") from None
        transport.renew(identity)
        log.info("%s: certificate renewed; it expires at %s", self.addr, expires(cert_pem))

    def exit(self, code: int) -> None:
        if self.exited is None:
            self.exited = code
            self._exit(code)

    def forgive_pause(self) -> None:
        """A debugger session held this process: the keepalives it missed meanwhile are not
        the driver's absence (callable from any thread; the watchdog's next tick applies it)."""
        self._forgive = True

    async def _watch(self) -> None:
        while True:
            await trio.sleep(self._watchdog.tick)
            now = trio.current_time()
            if self._forgive:
                self._forgive = False
                self._deadline = max(self._deadline, now + self._watchdog.boot_grace)
            if now > self._deadline:
                log.error(
                    "%s: watchdog expired: no keepalive for %.1f s; exiting", self.addr, now - self._deadline
                )
                self.exit(1)
                return
            with contextlib.suppress(Exception):  # unreadable memory info keeps the last verdict
                limit = self._watchdog.unhealthy_memory_percent
                self.healthy = psutil.virtual_memory().percent <= limit

    async def shutdown(self, delay: float, message: str) -> None:
        await trio.sleep(delay)
        if self.output is not None:
            # The driver reads this output over a connection: the marker goes last, and the
            # worker exits once the driver has it (bounded), so that no line is lost.
            await self.output.finish(message)
        elif self._announce is not None:
            self._announce(message)
        else:
            sys.stderr.flush()
            print(message, flush=True)
        self.exit(0)

    async def serve(
        self,
        listener: trio.abc.Listener[Any],
        *,
        task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept and serve connections on ``listener`` forever.

        Each connection is accepted through the worker's transport. The connections share one
        admission (``_rpc.Admission``): at most 64 of them in their transport's accept and
        handshake at once (a newer one closes the oldest), and rejections logged at a bounded
        rate.
        """
        admission = _rpc.Admission(addr=self.addr, transport=self.transport)

        async def handle(stream: trio.abc.Stream) -> None:
            await _rpc.serve_stream(stream, admission, self.key, self.table, self.run_sync)

        await trio.serve_listeners(handle, [listener], task_status=task_status)
