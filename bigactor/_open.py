"""``open_cluster``: where a program's cluster begins and ends."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import trio

from ._actor import current_cluster
from ._cluster import Cluster
from ._debug import serve_debug
from ._system import System
from .systems import lookup


@asynccontextmanager
async def open_cluster(
    system: System | str | None = None,
    *,
    debug_address: str | tuple[str, int] | None = None,
    debug_token: str | None = None,
    **options: Any,
) -> AsyncIterator[Cluster]:
    """Open a cluster on ``system`` and close it, with every machine it started, on exit.

    ``system`` is a System instance or a system name; without one, ``BIGACTOR_SYSTEM`` names
    it, else ``local``. ``options`` go to the named system's constructor. With
    ``debug_address`` (``"127.0.0.1:8080"``, or port 0 for any), the cluster also serves its
    debug pages there (see ``serve_debug``); ``cluster.debug_url`` says where, with the token
    they need: ``debug_token``, else ``BIGACTOR_DEBUG_TOKEN``, else a random one.

    The cluster owns one nursery: every machine's lifecycle runs in it, and the body runs
    inside it. On exit (normal, error, cancellation or KeyboardInterrupt) every owned machine is
    shut down, its output flushed, and no worker process is left behind. As with any trio
    nursery, an exception leaving the body arrives wrapped in an ``ExceptionGroup`` (catch it
    with ``except*``, or handle errors inside the body).
    """
    if system is None or isinstance(system, str):
        system = lookup(system or os.environ.get("BIGACTOR_SYSTEM") or "local", **options)
    elif options:
        raise TypeError("options go with a system name, not with a System instance")
    key = secrets.token_bytes(32)
    async with trio.open_nursery() as nursery:
        await system.setup(nursery, key)
        cluster = Cluster(nursery, key, system)
        if debug_address is not None:
            host, port = (
                debug_address.rpartition(":")[::2] if isinstance(debug_address, str) else debug_address
            )
            serve = partial(
                serve_debug, cluster, host.strip("[]") or "127.0.0.1", int(port), token=debug_token
            )
            cluster.debug_url = await nursery.start(serve)
        token = current_cluster.set(cluster)
        try:
            yield cluster
        finally:
            current_cluster.reset(token)
            with trio.CancelScope(shield=True):
                await cluster.aclose()
                await system.aclose()
            nursery.cancel_scope.cancel()
