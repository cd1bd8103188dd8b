"""Opening and serving authenticated websocket connections, through a system's transport.

A :class:`Transport` carries the bytes: it opens a stream to an address (the client side) and
accepts an incoming one (the server side). The plain transport knows ``unix:/path/to/socket``
(the local system: a socket in a directory only the driver's user can enter) and
``tcp:host:port``; a system with other addresses or a secure channel owns a subclass (the test
system's in-memory ``test:`` streams, mutual TLS). Over whatever stream the transport gives,
every connection upgrades to a websocket and authenticates with the cluster key, bound to the
address the client dialed (see _auth), before a single payload is decoded.

Until a connection has authenticated it is anybody's, so what it may cost the machine is
bounded (see :class:`Admission`): its transport's ``accept`` and its handshake together have
``HANDSHAKE_TIMEOUT`` seconds, at most ``MAX_HANDSHAKES`` connections may be in theirs at once,
and rejections are logged at a bounded rate.
"""

from __future__ import annotations

import logging
import math
from typing import ClassVar

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


def host_port(addr: str) -> tuple[str, int]:
    """The host and port of an address ``scheme:host:port`` (an IPv6 host may be bracketed).

    Raises ValueError if ``addr`` has no port.
    """
    host, sep, port = addr.partition(":")[2].rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"address {addr!r} is not scheme:host:port")
    return host.strip("[]"), int(port)


class Transport:
    """How a system's connections are carried: streams to and from machine addresses.

    A :class:`~bigactor.System` owns one (``system.transport``): the driver dials its machines
    through it, and each worker accepts connections, and dials other workers, through the one
    given to ``bigactor.supervisor.serve_worker``. This class is the plain transport: ``unix:``
    and ``tcp:`` addresses, streams as they come. A subclass changes either side:

    ``async open(addr) -> trio.abc.Stream``
        The client side: a stream to the machine at ``addr``, ready to carry the websocket
        upgrade (a TLS client has done its handshake). It runs inside the connection's
        ``HANDSHAKE_TIMEOUT``. Raise ``OSError`` (or :class:`~bigactor.TransportError`) when
        the machine cannot be reached, ``ProtocolError`` when the peer is refused (say, its
        certificate), ``trio.BrokenResourceError`` when it went away; each becomes a
        ``TransportError`` naming ``addr``. Defer to ``super().open(addr)`` for schemes the
        subclass does not handle. Cancellation leaves nothing open.

    ``async accept(stream) -> trio.abc.Stream``
        The server side: given each raw stream a worker's listener accepted, the stream the
        websocket is served over (the same one here; a TLS server's handshake wraps it). It runs
        inside the listener's :class:`Admission`: within ``HANDSHAKE_TIMEOUT`` and counted among
        the ``MAX_HANDSHAKES`` connections in their handshake, so a slow or silent peer is
        bounded like one that never upgrades, and cancelled when pushed out. Raise
        ``ProtocolError`` to refuse a peer (logged as a rejection, at a bounded rate),
        ``trio.BrokenResourceError`` or ``OSError`` for one that went away (logged at debug
        level). Closing the returned stream must close ``stream``; the caller closes both.

    Nothing a peer sends is decoded before the cluster-key handshake that follows, whatever the
    transport: a transport adds protection, never removes it. A transport is shared by every
    connection of its system, concurrently: keep per-connection state out of it.
    """

    #: the address schemes :meth:`open` handles (named in the error for any other)
    schemes: ClassVar[tuple[str, ...]] = ("unix", "tcp")

    async def open(self, addr: str) -> trio.abc.Stream:
        """Open a stream to ``addr`` (see the class docstring)."""
        scheme, _, rest = addr.partition(":")
        if scheme == "unix":
            return await trio.open_unix_socket(rest)
        if scheme == "tcp":
            try:
                host, port = host_port(addr)
            except ValueError as exc:
                raise TransportError(addr, str(exc)) from None
            return await trio.open_tcp_stream(host, port)
        raise TransportError(
            addr,
            f"unknown address scheme {scheme!r} for {type(self).__name__} "
            f"(it knows: {', '.join(self.schemes)})",
        )

    async def accept(self, stream: trio.abc.Stream) -> trio.abc.Stream:
        """The stream to serve an accepted ``stream`` over (see the class docstring)."""
        return stream

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {', '.join(self.schemes)}>"


async def connect(
    nursery: trio.Nursery,
    addr: str,
    key: bytes,
    serve: tuple[ActorTable, RunSync] | None = None,
    *,
    transport: Transport,
) -> tuple[Connection, dict[str, str]]:
    """Open (through ``transport``), authenticate and start a calling connection to ``addr``.

    The connection's tasks run in ``nursery``. Returns the connection and the machine's
    versions (check them with ``_auth.check_versions``). With ``serve``, the machine may call
    back over the same connection: its calls run against that table (the driver serves its
    machines so; see ``_rpc.Link``). Opening the stream and the handshake together have
    ``HANDSHAKE_TIMEOUT`` seconds; TransportError if they fail. Cancellation closes whatever
    was opened.
    """
    stream: trio.abc.Stream | None = None
    try:
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            try:
                stream = await transport.open(addr)
            except OSError as exc:
                raise TransportError(addr, f"cannot connect: {exc}") from exc
            ws = await client_upgrade(stream, "bigactor")
            peer = await _auth.client_handshake(ws, key, addr)
            ws.max_message = MAX_MESSAGE
    except BaseException as exc:
        # Whatever ends the handshake (a bad peer, a timeout, our own cancellation), the
        # stream is ours to close.
        if stream is not None:
            await trio.aclose_forcefully(stream)
        if isinstance(exc, trio.TooSlowError):
            what = "no handshake" if stream is not None else "could not connect"
            raise TransportError(addr, f"{what} within {HANDSHAKE_TIMEOUT} s") from exc
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
    The handshake starts with the ``transport``'s ``accept`` (a TLS server handshake, say), so
    that is bounded the same way.

    Rejections are warnings at most once per ``period`` seconds: the first at once, and the
    first after each quiet period with the count of those logged in between at debug level.
    """

    addr: str
    transport: Transport
    limit: int = MAX_HANDSHAKES
    period: float = WARNING_PERIOD
    #: connections in their handshake, oldest first (a dict as an ordered set)
    _handshaking: dict[trio.CancelScope, None] = attrs.field(factory=dict, init=False)
    _quiet_until: float = attrs.field(default=-math.inf, init=False)
    _since: float = attrs.field(default=0.0, init=False)
    _quieted: int = attrs.field(default=0, init=False)

    async def handshake(
        self, stream: trio.abc.Stream, key: bytes
    ) -> tuple[WebSocket, trio.abc.Stream] | None:
        """Accept, upgrade and authenticate ``stream``: the websocket and the stream the
        transport accepted it as; None, logged, if it failed or was pushed out.

        Never raises for a bad peer; the caller closes ``stream`` (and the accepted stream)
        either way.
        """
        scope = trio.CancelScope()
        self._handshaking[scope] = None
        if len(self._handshaking) > self.limit:
            oldest = next(iter(self._handshaking))
            del self._handshaking[oldest]
            oldest.cancel()
            self.rejected(f"more than {self.limit} connections in their handshake; closed the oldest")
        accepted: trio.abc.Stream | None = None
        try:
            with scope, trio.fail_after(HANDSHAKE_TIMEOUT):
                accepted = await self.transport.accept(stream)
                ws = await server_upgrade(accepted)
                await _auth.server_handshake(ws, key, self.addr)
                ws.max_message = MAX_MESSAGE
                return ws, accepted
        except ProtocolError as exc:
            self.rejected(str(exc))
        except trio.TooSlowError:
            self.rejected(f"no handshake within {HANDSHAKE_TIMEOUT} s")
        except (WebSocketClosed, trio.BrokenResourceError, OSError) as exc:
            # The peer went away: nothing to warn about (a client that refused our proof, say).
            log.debug("%s: a connection ended during its handshake: %r", self.addr, exc)
        finally:
            self._handshaking.pop(scope, None)
        if accepted is not None and accepted is not stream:
            await trio.aclose_forcefully(accepted)
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
    stream: trio.abc.Stream, admission: Admission, key: bytes, table: ActorTable, run_sync: RunSync
) -> None:
    """Serve one incoming connection until it closes; never raises for a bad peer.

    The connection is accepted through ``admission.transport`` and authenticated with ``key``
    inside ``admission``, which the connections of one listener share (it bounds how many may be
    in their handshake at once and how often rejections are warned of). A peer that fails
    authentication or breaks the protocol is logged and dropped; nothing it sent is decoded.
    Other connections are unaffected. Calls run against ``table``, sync methods through
    ``run_sync``.
    """
    try:
        shook = await admission.handshake(stream, key)
        if shook is None:
            return
        ws, accepted = shook
        try:
            async with trio.open_nursery() as calls:
                conn = Connection(ws, admission.addr, CallDispatcher(table, calls, run_sync))
                await conn.run()
                calls.cancel_scope.cancel()
        finally:
            if accepted is not stream:
                await trio.aclose_forcefully(accepted)
    finally:
        await trio.aclose_forcefully(stream)
