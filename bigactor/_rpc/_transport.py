"""Opening and serving authenticated websocket connections.

Addresses name how to reach a machine: ``unix:/path/to/socket`` (the local system: a socket in
a directory only the driver's user can enter), ``tcp:host:port``, or a scheme a system registers
with :func:`register_scheme` (the in-process test system uses ``test:``). Every connection
authenticates with the cluster key, bound to the address the client dialed (see _auth), before a
single payload is decoded.

Until a connection has authenticated it is anybody's, so what it may cost the machine is
bounded (see :class:`Admission`): a handshake has ``HANDSHAKE_TIMEOUT`` seconds, at most
``MAX_HANDSHAKES`` connections may be in theirs at once, and rejections are logged at a bounded
rate.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable

import attrs
import trio

from .._errors import ProtocolError, TransportError
from . import _auth
from ._connection import MAX_MESSAGE, Connection
from ._server import ActorTable, CallDispatcher, RunSync
from ._websocket import WebSocket, WebSocketClosed, client_upgrade, server_upgrade

log = logging.getLogger("bigactor.rpc")

HANDSHAKE_TIMEOUT = 10.0
MAX_HANDSHAKES = 64
WARNING_PERIOD = 60.0

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


async def connect(
    nursery: trio.Nursery, addr: str, key: bytes, serve: tuple[ActorTable, RunSync] | None = None
) -> tuple[Connection, dict[str, str]]:
    """Open, authenticate and start a calling connection to ``addr``.

    The connection's tasks run in ``nursery``. Returns the connection and the machine's
    versions (check them with ``_auth.check_versions``). With ``serve``, the machine may call
    back over the same connection: its calls run against that table (the driver serves its
    machines so; see ``_rpc.Link``).
    """
    stream = await open_stream(addr)
    try:
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            ws = await client_upgrade(stream, "bigactor")
            peer = await _auth.client_handshake(ws, key, addr)
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
    conn = Connection(ws, addr, None if serve is None else CallDispatcher(serve[0], nursery, serve[1]))
    nursery.start_soon(_run_then_close, conn, stream, name=f"connection to {addr}")
    return conn, peer


async def _run_then_close(conn: Connection, stream: trio.abc.Stream) -> None:
    try:
        await conn.run()
    finally:
        await trio.aclose_forcefully(stream)


@attrs.define(kw_only=True)
class Admission:
    """What the connections one machine accepts share until they have authenticated.

    At most ``limit`` connections may be in their handshake at once. One more closes the
    *oldest* of them at once: closing the newcomer instead would let anyone who can connect
    lock every new client out by holding ``limit`` idle connections, renewed every
    ``HANDSHAKE_TIMEOUT`` seconds, whereas to push out a client that completes its handshake in
    a few round trips, a peer must open ``limit`` connections within those round trips. Nothing
    waits in a queue: descriptors stay bounded by ``limit`` plus the authenticated connections.

    Rejections are warnings at most once per ``period`` seconds: the first at once, and the
    first after each quiet period with the count of those logged in between at debug level.
    """

    addr: str
    limit: int = MAX_HANDSHAKES
    period: float = WARNING_PERIOD
    #: connections in their handshake, oldest first (a dict as an ordered set)
    _handshaking: dict[trio.CancelScope, None] = attrs.field(factory=dict, init=False)
    _quiet_until: float = attrs.field(default=-math.inf, init=False)
    _since: float = attrs.field(default=0.0, init=False)
    _quieted: int = attrs.field(default=0, init=False)

    async def handshake(self, stream: trio.abc.Stream, key: bytes) -> WebSocket | None:
        """Upgrade and authenticate ``stream``; None, logged, if it failed or was pushed out.

        Never raises for a bad peer; the caller closes ``stream`` either way.
        """
        scope = trio.CancelScope()
        self._handshaking[scope] = None
        if len(self._handshaking) > self.limit:
            oldest = next(iter(self._handshaking))
            del self._handshaking[oldest]
            oldest.cancel()
            self.rejected(f"more than {self.limit} connections in their handshake; closed the oldest")
        try:
            with scope, trio.fail_after(HANDSHAKE_TIMEOUT):
                ws = await server_upgrade(stream)
                await _auth.server_handshake(ws, key, self.addr)
                ws.max_message = MAX_MESSAGE
                return ws
        except ProtocolError as exc:
            self.rejected(str(exc))
        except trio.TooSlowError:
            self.rejected(f"no handshake within {HANDSHAKE_TIMEOUT} s")
        except (WebSocketClosed, trio.BrokenResourceError, OSError) as exc:
            # The peer went away: nothing to warn about (a client that refused our proof, say).
            log.debug("%s: a connection ended during its handshake: %r", self.addr, exc)
        finally:
            self._handshaking.pop(scope, None)
        return None  # failed, or pushed out by a newer connection

    def rejected(self, reason: str) -> None:
        """Log that a connection was rejected for ``reason``, at a bounded rate."""
        now = trio.current_time()
        if now < self._quiet_until:
            self._quieted += 1
            log.debug("%s: rejected a connection: %s", self.addr, reason)
            return
        if self._quieted:
            log.warning(
                "%s: rejected a connection: %s (and %d more in the last %.0f s, logged at debug level)",
                self.addr, reason, self._quieted, now - self._since,
            )  # fmt: skip
        else:
            log.warning("%s: rejected a connection: %s", self.addr, reason)
        self._quieted = 0
        self._since = now
        self._quiet_until = now + self.period


async def serve_stream(
    stream: trio.abc.Stream,
    addr: str,
    key: bytes,
    table: ActorTable,
    run_sync: RunSync,
    admission: Admission | None = None,
) -> None:
    """Serve one incoming connection until it closes; never raises for a bad peer.

    A peer that fails authentication or breaks the protocol is logged and dropped; nothing it
    sent is decoded. Other connections are unaffected. The connections of one listener share
    one ``admission``, made for ``addr`` (by default this connection has one of its own): it
    bounds how many may be in their handshake at once and how often rejections are warned of.
    """
    if admission is None:
        admission = Admission(addr=addr)
    try:
        ws = await admission.handshake(stream, key)
        if ws is None:
            return
        async with trio.open_nursery() as calls:
            conn = Connection(ws, addr, CallDispatcher(table, calls, run_sync))
            await conn.run()
            calls.cancel_scope.cancel()
    finally:
        await trio.aclose_forcefully(stream)
