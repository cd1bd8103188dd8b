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
import trio_websocket
from trio_websocket import ConnectionClosed, HandshakeError

from .._errors import ProtocolError, TransportError
from . import _auth
from ._connection import MAX_MESSAGE, Connection
from ._server import ActorTable, CallDispatcher, RunSync

log = logging.getLogger("bigactor.rpc")

RECEIVE_BUFFER = 1 << 16
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
            ws = await trio_websocket.wrap_client_stream(
                nursery,
                stream,  # type: ignore[arg-type]  # any trio stream works
                "bigactor",
                "/",
                max_message_size=MAX_MESSAGE,
                receive_buffer_size=RECEIVE_BUFFER,
            )
            peer = await _auth.client_handshake(ws, key)
    except BaseException as exc:
        # Whatever ends the handshake (a bad peer, a timeout, our own cancellation), the
        # socket is ours to close.
        await trio.aclose_forcefully(stream)
        if isinstance(exc, trio.TooSlowError):
            raise TransportError(addr, f"no handshake within {HANDSHAKE_TIMEOUT} s") from exc
        if isinstance(exc, (HandshakeError, ConnectionClosed, trio.BrokenResourceError, OSError)):
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
        async with trio.open_nursery() as nursery:
            try:
                with trio.fail_after(HANDSHAKE_TIMEOUT):
                    request = await trio_websocket.wrap_server_stream(
                        nursery, stream, max_message_size=MAX_MESSAGE, receive_buffer_size=RECEIVE_BUFFER
                    )
                    ws = await request.accept()
                    await _auth.server_handshake(ws, key)
            except ProtocolError as exc:
                log.warning("%s: rejected a connection: %s", addr, exc)
                nursery.cancel_scope.cancel()
                return
            except (
                trio.TooSlowError,
                ConnectionClosed,
                HandshakeError,
                trio.BrokenResourceError,
                OSError,
            ) as exc:
                log.info("%s: dropped a connection during its handshake: %r", addr, exc)
                nursery.cancel_scope.cancel()
                return
            async with trio.open_nursery() as calls:
                conn = Connection(ws, addr, CallDispatcher(table, calls, run_sync))
                await conn.run()
                calls.cancel_scope.cancel()
            nursery.cancel_scope.cancel()
    except Exception as exc:
        # trio-websocket lets errors of a broken peer escape as groups; they concern that
        # peer only, so log them and keep serving the others.
        log.warning("%s: connection ended with an error: %r", addr, exc)
    finally:
        await trio.aclose_forcefully(stream)
