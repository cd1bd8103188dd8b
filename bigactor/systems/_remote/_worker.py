"""The handoff: where the boot agent becomes a bigactor worker, in the same process.

The agent (``_agent``) runs before bigactor is importable. Once enrolled, with the bundle in
its cache and the configuration received, it puts the bundle on ``sys.path``, imports this
module from it and calls :func:`run` with a :class:`Handoff`: its listening socket (the very one
the driver enrolled it on, so the address never changes and no port is ever free for someone
else to take), its key and CA-signed certificate, the CA certificate and the configuration.
From there the machine is ``bigactor.supervisor.serve_worker`` over mutual TLS (:func:`serve_remote`),
as a machine on another host: it captures its own stdout and stderr and serves them to the driver
over the connection (the driver has no pipe to read), and, where its configuration names an
instance metadata service (``config.extra["imds"]``, set by the EC2 system), it watches it for
spot interruption notices and passes each on to the driver (``Worker.notice``).
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
import logging
import os
import socket
import sys
from collections.abc import AsyncGenerator, Callable
from typing import TYPE_CHECKING, Any, cast

import attrs
import trio

from ..._contract import WorkerConfig

if TYPE_CHECKING:
    from ..._rpc import Transport
    from ...supervisor import Worker

#: ``WorkerConfig.extra`` keys: the base URL of the instance metadata service to watch for spot
#: interruption notices (the EC2 system sets it; without it nothing is watched), and how often
#: to ask it, in seconds (AWS gives two minutes' notice)
IMDS_EXTRA = "imds"
IMDS_PERIOD_EXTRA = "imds_period"
IMDS_PERIOD = 2.0


@attrs.frozen(kw_only=True)
class Handoff:
    """What the agent hands to the worker.

    Attributes:
        listen_fd: the listening TCP socket the agent was enrolled on (the worker owns it now).
        key_pem: the worker's private key (made on this host; it never left it).
        cert_pem: the worker's certificate, issued by the cluster CA at enrollment.
        ca_pem: the cluster CA's certificate: the only issuer trusted, both ways.
        config: the worker's configuration; its ``sys_path`` entries are relative to ``bundle``.
        bundle: where the code bundle is extracted.
        boot_log: the boot log file.
    """

    listen_fd: int
    key_pem: bytes = attrs.field(repr=False)
    cert_pem: bytes
    ca_pem: bytes
    config: WorkerConfig = attrs.field(repr=False)
    bundle: str
    boot_log: str

    @classmethod
    def from_agent(cls, fields: dict[str, Any]) -> Handoff:
        """The handoff from the agent's plain values (it cannot import this class early)."""
        return cls(
            listen_fd=int(fields["listen_fd"]),
            key_pem=fields["key_pem"].encode(),
            cert_pem=fields["cert_pem"].encode(),
            ca_pem=fields["ca_pem"].encode(),
            config=WorkerConfig.from_json(fields["config"]),
            bundle=str(fields["bundle"]),
            boot_log=str(fields["boot_log"]),
        )


def worker_sys_path(config: WorkerConfig, bundle: str, own: list[str]) -> list[str]:
    """The worker's ``sys.path``: the driver's roots inside the bundle, then this interpreter's
    own entries (its standard library and the venv's site-packages) that are not in the bundle."""
    roots = [p if os.path.isabs(p) else os.path.join(bundle, p) for p in config.sys_path]
    inside = os.path.join(os.path.abspath(bundle), "")
    rest = [p for p in own if p and not os.path.abspath(p).startswith(inside) and p not in roots]
    return roots + rest


def _exit(code: int) -> None:
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


async def serve(handoff: Handoff) -> None:
    """Serve the machine on the handed-over socket until it exits (never returns on its own)."""
    from ..._pki import Identity
    from ..._rpc._tls import TLSTransport

    identity = Identity(cert_pem=handoff.cert_pem, key_pem=handoff.key_pem)
    # The worker's one transport: it accepts the driver's and other workers' connections and
    # dials other workers; Supervisor.renew_certificate renews it (see ``_renew``).
    transport = TLSTransport(identity, handoff.ca_pem)
    sock = socket.socket(fileno=handoff.listen_fd)
    sock.setblocking(False)
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
    await serve_remote(handoff.config, listener, transport=transport, exit=_exit)


async def serve_remote(
    config: WorkerConfig,
    listener: trio.abc.Listener[Any],
    *,
    transport: Transport,
    exit: Callable[[int], None],
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    """``serve_worker`` as a machine on another host (see the module docstring): its output
    captured for the driver, and spot interruption notices passed on where
    ``config.extra["imds"]`` names a metadata service. ``task_status.started(worker)``."""
    from ...supervisor._serve import serve_worker

    async with trio.open_nursery() as nursery:
        start = functools.partial(
            serve_worker,
            config,
            listener,
            transport=transport,
            exit=exit,
            capture_output=True,
            process_title=True,
            breakpoints=True,
        )
        worker = await nursery.start(start)
        imds = config.extra.get(IMDS_EXTRA)
        if imds:
            period = float(config.extra.get(IMDS_PERIOD_EXTRA, IMDS_PERIOD))
            nursery.start_soon(relay_interruptions, worker, imds, period, name="spot interruptions")
        task_status.started(worker)


async def relay_interruptions(worker: Worker, base_url: str, period: float = IMDS_PERIOD) -> None:
    """Pass each spot interruption notice of the metadata service at ``base_url`` to the
    driver as the worker's ``"interruption"`` notice; runs until cancelled."""
    from ..ec2._imds import IMDS, Interruption, watch_interruptions

    # An async generator, though typed as the iterator it is to its callers.
    watch = cast("AsyncGenerator[Interruption, None]", watch_interruptions(IMDS(base_url), period))
    async with contextlib.aclosing(watch) as notices:
        async for notice in notices:
            when = notice.time.astimezone(datetime.UTC).strftime("%H:%M:%S UTC")
            worker.notice("interruption", f"spot interruption: instance action {notice.action} at {when}")


def run(handoff: Handoff) -> None:
    """Become the worker: apply the configuration to this process and serve until it exits."""
    config = handoff.config
    sys.path[:] = worker_sys_path(config, handoff.bundle, sys.path)
    sys.argv[:] = list(config.argv) or [""]
    # The driver's Environ for this machine (the local system starts its process with it).
    os.environ.update(json.loads(config.extra.get("env", "{}")))
    logging.basicConfig(level=config.log_level, format="%(levelname)s %(name)s: %(message)s")
    from ...supervisor import _heap, _serve  # noqa: F401 - imported before the heap settles

    _heap.settle()
    trio.run(serve, handoff)
