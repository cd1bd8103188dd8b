"""Opening and serving authenticated websocket connections.

Addresses name how to reach a machine: ``unix:/path/to/socket`` (the local system: a socket in
a directory only the driver's user can enter), ``tcp:host:port``, or a scheme a system registers
with :func:`register_scheme` (the in-process test system uses ``test:``). Every connection
authenticates with the cluster key (see _auth) before a single payload is decoded.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from .._errors import ProtocolError, TransportError
from . import _auth
from ._connection import MAX_MESSAGE, Connection
from ._server import ActorTable, CallDispatcher, RunSync
from ._websocket import WebSocketClosed, client_upgrade, server_upgrade

log = logging.getLogger("bigactor.rpc")

HANDSHAKE_TIMEOUT = 10.0

Opener = Callable[[str], Awaitable[trio.abc.Stream]]
_schemes: dict[str, Opener] = {}


def register_scheme(scheme: str, opener: Opener) -> None:
    """Make addresses ``scheme:...`` reachable through ``opener(addr) -> trio stream``."""
    _schemes[scheme] = opener


async def _open_unix(addr: str) -> trio.abc.Stream:
    return await trio.open_unix_socket(addr.partition(":")[2])


async def _open_tcp(addr: str) -> trio.abc.Stream:
    host, _, port = addr.partition(":")[2].rpartition(":")
    return await trio.open_tcp_stream(host.strip("[]"), int(port))


register_scheme("unix", _open_unix)
register_scheme("tcp", _open_tcp)


async def open_stream(addr: str) -> trio.abc.Stream:
    """Open a byte stream to ``addr``; TransportError if the scheme is unknown or it fails."""
    scheme = addr.partition(":")[0]
    opener = _schemes.get(scheme)
    if opener is None:
        raise TransportError(
            addr, f"unknown address scheme {scheme!r} (known: {', '.join(sorted(_schemes))})"
        )
    try:
        return await opener(addr)
    except OSError as exc:
        raise TransportError(addr, f"cannot connect: {exc}") from exc


async def connect(nursery: trio.Nursery, addr: str, key: bytes) -> tuple[Connection, dict[str, str]]:
    """Open, authenticate and start a calling connection to ``addr``.

    The connection's tasks run in ``nursery``. Returns the connection and the machine's
    versions (check them with ``_auth.check_versions``).
    """
    stream = await open_stream(addr)
    try:
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            ws = await client_upgrade(stream, "bigactor")
            peer = await _auth.client_handshake(ws, key)
            ws.max_message = MAX_MESSAGE
    except BaseException as exc:
        # Whatever ends the handshake (a bad peer, a timeout, our own cancellation), the
        # socket is ours to close.
        await trio.aclose_forcefully(stream)
        if isinstance(exc, trio.TooSlowError):
            raise TransportError(addr, f"no handshake within {HANDSHAKE_TIMEOUT} s") from exc
        if isinstance(exc, (WebSocketClosed, trio.BrokenResourceError, OSError)):
            raise TransportError(addr, f"handshake failed: {exc!r}") from exc
        if isinstance(exc, ProtocolError):
            raise TransportError(addr, str(exc)) from exc
        raise
    conn = Connection(ws, addr)
    nursery.start_soon(_run_then_close, conn, stream, name=f"connection to {addr}")
    return conn, peer


async def _run_then_close(conn: Connection, stream: trio.abc.Stream) -> None:
    try:
        await conn.run()
    finally:
        await trio.aclose_forcefully(stream)


async def serve_stream(
    stream: trio.abc.Stream, addr: str, key: bytes, table: ActorTable, run_sync: RunSync
) -> None:
    """Serve one incoming connection until it closes; never raises for a bad peer.

    A peer that fails authentication or breaks the protocol is logged and dropped; nothing it
    sent is decoded. Other connections are unaffected.
    """
    try:
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                ws = await server_upgrade(stream)
                await _auth.server_handshake(ws, key)
                ws.max_message = MAX_MESSAGE
        except ProtocolError as exc:
            log.warning("%s: rejected a connection: %s", addr, exc)
            return
        except (trio.TooSlowError, WebSocketClosed, trio.BrokenResourceError, OSError) as exc:
            log.info("%s: dropped a connection during its handshake: %r", addr, exc)
            return
        async with trio.open_nursery() as calls:
            conn = Connection(ws, addr, CallDispatcher(table, calls, run_sync))
            await conn.run()
            calls.cancel_scope.cancel()
    finally:
        await trio.aclose_forcefully(stream)
