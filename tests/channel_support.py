"""A system of real remote-style workers on this host: each is a process that becomes a worker
through the remote handoff (``systems._remote._worker.run``), serving over mutual TLS on
loopback, with its stdout and stderr going to a file of its own, so that its output can reach
the driver only over the connection (``Instance.output_over_channel``). The driver cannot see
its process end (as for an instance on another host): only the connection and keepalives tell.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import trio

from bigactor._contract import WatchdogConfig, WorkerConfig
from bigactor._pki import LEAF_DAYS, ClusterCA
from bigactor._rpc._tls import TLSTransport
from bigactor._system import Instance, KeepaliveConfig, System
from bigactor.systems._remote._renew import Renewal

WORKER = """
import json, sys
from bigactor.systems._remote._worker import Handoff, run
run(Handoff.from_agent(json.loads(sys.stdin.readline())))
"""


def driver_sys_path() -> tuple[str, ...]:
    """The driver's ``sys.path``, absolute (the tests' own modules among it)."""
    return tuple(os.path.abspath(p) for p in sys.path if p)


def create(path: Path) -> int:
    """A new file's descriptor, for a worker's stdout and stderr."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)


class RemoteLikeInstance(Instance):
    output_over_channel = True

    def __init__(self, addr: str, process: trio.Process, log: Path) -> None:
        self.addr = addr
        self.hostname = "127.0.0.1"
        self.process = process
        self.log = log

    def ended(self) -> bool:
        return self.process.returncode is not None

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()


@attrs.define(kw_only=True)
class RemoteLikeSystem(System):
    """Workers as processes handed over like a booted instance's agent does; ``extra`` goes
    into each worker's configuration (``imds`` for its metadata service). Certificates last
    ``cert_days`` days; with ``renew`` the driver renews them (``_remote._renew``), as the EC2
    system does."""

    name = "remote-like"
    directory: Path
    extra: dict[str, str] = attrs.field(factory=dict)
    keepalive: KeepaliveConfig = KeepaliveConfig(period=60.0, timeout=120.0, rpc_timeout=10.0)
    boot_timeout: float = 60.0
    cert_days: float = LEAF_DAYS
    renew: bool = True
    key: bytes = attrs.field(default=b"", init=False)
    transport: Any = attrs.field(default=None, init=False)
    instances: list[RemoteLikeInstance] = attrs.field(factory=list, init=False)
    _ca: ClusterCA | None = attrs.field(default=None, init=False)
    renewal: Renewal | None = attrs.field(default=None, init=False)
    _count: int = attrs.field(default=0, init=False)

    async def setup(self, nursery: trio.Nursery, key: bytes) -> None:
        self.key = key
        self._ca = ClusterCA.create("remote-like test cluster")
        identity = self._ca.identity(client=True, server=False, days=self.cert_days)
        self.transport = TLSTransport(identity, self._ca.cert_pem)
        if self.renew:
            self.renewal = Renewal(self._ca, self.transport, key, days=self.cert_days)
            await nursery.start(self.renewal.run)

    @property
    def ca(self) -> ClusterCA:
        """The cluster's CA (made by ``setup``)."""
        assert self._ca is not None
        return self._ca

    async def start(self, n: int, env: dict[str, str]) -> list[Instance]:
        ca = self.ca
        out: list[Instance] = []
        for _ in range(n):
            self._count += 1
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                listener.bind(("127.0.0.1", 0))
                listener.listen()
                addr = f"tls:127.0.0.1:{listener.getsockname()[1]}"
                identity = ca.identity(
                    "worker", ips=["127.0.0.1"], client=True, server=True, days=self.cert_days
                )
                config = WorkerConfig(
                    key=self.key,
                    addr=addr,
                    sys_path=driver_sys_path(),
                    watchdog=WatchdogConfig(tick=1.0),
                    extra=self.extra,
                )
                log = self.directory / f"worker-{self._count}.log"
                fields = {
                    "listen_fd": listener.fileno(),
                    "key_pem": identity.key_pem.decode(),
                    "cert_pem": identity.cert_pem.decode(),
                    "ca_pem": ca.cert_pem.decode(),
                    "config": config.to_json().decode(),
                    "bundle": str(self.directory),
                    "boot_log": str(log),
                }
                sink = create(log)
                try:
                    process = await trio.lowlevel.open_process(
                        [sys.executable, "-c", WORKER],
                        stdin=subprocess.PIPE,
                        stdout=sink,
                        stderr=sink,
                        pass_fds=[listener.fileno()],
                    )
                finally:
                    os.close(sink)
            finally:
                listener.close()
            assert process.stdin is not None
            await process.stdin.send_all(json.dumps(fields).encode() + b"\n")
            await process.stdin.aclose()
            instance = RemoteLikeInstance(addr, process, log)
            self.instances.append(instance)
            if self.renewal is not None:
                self.renewal.add(instance, identity.cert_pem)
            out.append(instance)
        return out

    async def aclose(self) -> None:
        # The cluster has shut its machines down: give each worker a moment to end by itself
        # (as a clean shutdown does), then kill what is left.
        for instance in self.instances:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(5):
                    await instance.process.wait()
                instance.kill()
                await instance.process.wait()
