"""TLS over TCP for trio, with OpenSSL reading and writing the socket itself.

trio's ``SSLStream`` runs OpenSSL over memory buffers and moves every byte through Python
(about 60 MiB/s and 0.3 ms per round trip on the project's 2-core VM). :class:`TLSStream`
instead wraps the connected socket in a non-blocking :class:`ssl.SSLSocket`: OpenSSL calls
``recv``/``send`` on the descriptor, and Python only waits, with
``trio.lowlevel.wait_readable``/``wait_writable``, when OpenSSL says it must
(``SSLWantReadError``/``SSLWantWriteError``; either can follow a read or a write, so the wait
follows what OpenSSL asked for, not the operation).

What this relies on in OpenSSL and CPython's ``ssl`` (checked by tests/test_tls.py):

* Decrypted bytes may wait inside OpenSSL with nothing left on the socket (``pending()``), so
  a read is always *tried* first and the descriptor waited on only after ``SSLWantReadError``:
  waiting first could wait forever for bytes that already arrived.
* CPython sets ``SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER`` but not ``SSL_MODE_ENABLE_PARTIAL_WRITE``:
  a write returns only once *all* its bytes are encrypted and handed to the kernel, and never a
  partial count. After ``SSLWantWriteError`` OpenSSL may already have encrypted, and partly
  sent, a prefix of the buffer that it does not report; the write must be retried with the
  same bytes (at the same or another address: the moving-buffer mode) and OpenSSL skips what
  it took. So a write that would block is "in progress", and the next bytes sent must start
  with its bytes again (:meth:`TLSStream.try_send` says so in its contract).
* TLS 1.3 only. ``SSL_read`` reports a peer's close_notify as end of stream, and a TCP close
  without one (a "ragged EOF", which TLS 1.3 peers that crash send) as end of stream too
  (``suppress_ragged_eofs``); the websocket above knows whether a message was cut short.
* Each ``SSL_read`` returns at most one record (16 KiB of plaintext; CPython sets no
  read-ahead, so OpenSSL reads a record's header and body with two ``recv`` calls). A read
  loops over records while they come whole or the kernel holds more (``FIONREAD``), so many
  small messages, one record each, arrive in one call as they do on a plain socket.

In TLS 1.3 a client finishes its handshake before the server has checked the client's
certificate: a client the server refuses learns it at its first read (``BrokenResourceError``
carrying the server's alert). The server's side completes only once the client's certificate
verified, so :func:`accept_tls` hands nothing up from a peer that did not prove itself, and
nothing it sent is ever decrypted, let alone decoded.

Channel binding: CPython has no TLS exporter (keying material; python/cpython gh-82133 is
open) and ``tls-unique`` is undefined for TLS 1.3, so :meth:`TLSStream.channel_binding` gives
RFC 5929's ``tls-server-end-point``: the SHA-256 of the server's certificate, the same on both
ends of one connection (RFC 5929 §4.1 takes the certificate's own signature hash when it is
stronger than SHA-1; the cluster CA signs with ECDSA-SHA256, so that is SHA-256).
"""

from __future__ import annotations

import array
import contextlib
import hashlib
import socket
import ssl
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import trio

from .._errors import ProtocolError, TransportError
from .._pki import Identity, client_context, load_identity, server_context
from ._transport import Transport

T = TypeVar("T")

HANDSHAKE_TIMEOUT = 10.0
RECORD = 16384  # the most plaintext one TLS record carries
RECEIVE = 256 * 1024  # receive_some's default size
SOCKET_BUFFER = 4 << 20  # kernel send/receive buffer asked for (as the websocket does)

_WANT = (ssl.SSLWantReadError, ssl.SSLWantWriteError)
_FIONREAD: int | None
try:
    from fcntl import ioctl
    from termios import FIONREAD

    _FIONREAD = FIONREAD
except ImportError:  # not a POSIX system: read one record per call
    _FIONREAD = None
_TOKEN = object()
#: OpenSSL's verify code for a certificate past its NotAfter
X509_V_ERR_CERT_HAS_EXPIRED = 10
_EXPIRED_HINT = (
    "the driver renews the cluster's certificates before they expire; its log says why this "
    "one was not renewed"
)
#: Linux 6.15's TCP_RTO_MAX_MS (not named by Python's socket module yet): the longest the kernel
#: waits before resending unacknowledged data. By default it backs off to 120 s: on a link that
#: flaps (up half the time), resends that keep landing in the down phases back off past the
#: keepalive timeout, and a machine whose link works half the time is declared lost. Capped,
#: a resend goes out at least every RTO_MAX_MS, so each up phase carries one.
_RTO_MAX_OPTION: int = getattr(socket, "TCP_RTO_MAX_MS", 44)
RTO_MAX_MS = 1000

#: Linux's TCP_CORK: while set, the kernel sends only full segments
_CORK: int | None = getattr(socket, "TCP_CORK", None)
CORK_AT = 1 << 20  # writes from this size on are corked


class TLSError(ProtocolError):
    """The TLS handshake failed: the peer did not speak TLS or did not prove itself."""


class TLSStream(trio.abc.Stream):
    """A trio byte stream over TLS on a socket OpenSSL reads and writes itself.

    No public constructor: :func:`connect_tls` and :func:`accept_tls` make one once the
    handshake succeeded. One task may send and one receive at a time. Beyond
    :class:`trio.abc.Stream` it offers :meth:`recv_into` and :meth:`try_send`, the websocket's
    fast paths.
    """

    def __init__(self, sock: ssl.SSLSocket, server_certificate: bytes | None, *, _private: object) -> None:
        if _private is not _TOKEN:
            raise TypeError("TLSStream has no public constructor; use connect_tls or accept_tls")
        self._sock = sock
        self._fd = sock.fileno()
        self._server_certificate = server_certificate
        #: the peer's certificate (DER): the server's on a client, the client's on a server
        self.peer_certificate: bytes | None = sock.getpeercert(binary_form=True)
        self._sending = False
        self._receiving = False
        self._closed = False
        self._broken: str | None = None
        #: length of a write OpenSSL has begun and must finish (see the module docstring)
        self._unfinished = 0
        self._unread = array.array("i", [0])  # FIONREAD's answer

    # -- state ---------------------------------------------------------------------------------

    def _check(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the TLS stream was closed")
        if self._broken is not None:
            raise trio.BrokenResourceError(self._broken)

    def _failed(self, exc: BaseException) -> trio.BrokenResourceError | trio.ClosedResourceError:
        if self._closed:
            return trio.ClosedResourceError("the TLS stream was closed")
        self._broken = f"TLS connection failed: {exc!r}"
        if isinstance(exc, ssl.SSLError) and exc.reason == "SSLV3_ALERT_CERTIFICATE_EXPIRED":
            # TLS 1.3: a server checks the client's certificate after the client's handshake
            # completed, so the client learns of its refusal here, from the server's alert.
            self._broken += f" (the peer refused this side's certificate as expired: {_EXPIRED_HINT})"
        return trio.BrokenResourceError(self._broken)

    async def _wait(self, want: ssl.SSLError, *, sending: bool) -> None:
        """Wait for what OpenSSL asked for, from a send (``sending``) or a receive."""
        other_is_waiting = self._receiving if sending else self._sending
        if isinstance(want, ssl.SSLWantReadError):
            if sending and other_is_waiting:
                # The receiving task waits for readability already (trio allows one waiter per
                # direction) and its read will move OpenSSL on. TLS 1.3 writes never want to
                # read once the handshake is done; this is the defensive path.
                await trio.sleep(0.001)
                return
            await trio.lowlevel.wait_readable(self._fd)
        else:
            if not sending and other_is_waiting:
                # A read that must write (a KeyUpdate answer) while the sender waits to write.
                await trio.sleep(0.001)
                return
            await trio.lowlevel.wait_writable(self._fd)

    # -- sending -------------------------------------------------------------------------------

    def try_send(self, data: bytes | bytearray | memoryview) -> int:
        """Encrypt and write ``data`` now if that needs no waiting; never yields.

        Returns ``len(data)`` when all of it went to the kernel, else 0: then some of ``data``
        may already sit encrypted in OpenSSL, so the next bytes sent on this stream must be
        ``data`` again, whole (``send_all(data)`` completes the write without repeating a
        byte). It never returns a partial count (see the module docstring). A broken stream
        returns 0 and the next ``send_all`` raises.
        """
        if self._sending or self._closed or self._broken is not None or self._unfinished or not data:
            return 0
        try:
            sent: int = self._sock.send(data)
        except _WANT:
            self._unfinished = len(data)
            return 0
        except (ssl.SSLError, OSError, ValueError) as exc:
            self._failed(exc)
            return 0
        return sent

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send all of ``data``; cancelling it mid-way breaks the stream (trio's contract)."""
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this TLS stream")
        self._sending = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            self._check()
            if not data:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return
            if len(data) < self._unfinished:
                raise trio.BrokenResourceError("a TLS write was not retried with its own bytes")
            # OpenSSL writes each 16 KiB record with its own send(); with TCP_NODELAY each would
            # leave as its own segment. Corked, a large write leaves in full 64 KiB segments
            # (loopback), and the receiver reads fewer, larger ones: +10% on a 64 MiB echo.
            cork = _CORK if len(data) >= CORK_AT else None
            if cork is not None:
                with contextlib.suppress(OSError):  # a broken socket: the write reports it
                    self._sock.setsockopt(socket.IPPROTO_TCP, cork, 1)
            try:
                waited = await self._write(data)
            finally:
                if cork is not None and not self._closed:
                    with contextlib.suppress(OSError):
                        self._sock.setsockopt(socket.IPPROTO_TCP, cork, 0)  # sends the rest now
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()
        finally:
            self._sending = False

    async def _write(self, data: bytes | bytearray | memoryview) -> bool:
        """Write all of ``data``; whether that waited (was a checkpoint)."""
        waited = False
        while True:
            try:
                self._sock.send(data)  # all of it, or SSLWant*: never partly
                break
            except _WANT as want:
                self._unfinished = len(data)
                waited = True
                try:
                    await self._wait(want, sending=True)
                except trio.Cancelled:
                    # OpenSSL holds part of this write, which nobody will finish now.
                    self._broken = "a send on this TLS stream was cancelled part-way"
                    raise
            except (ssl.SSLError, OSError, ValueError) as exc:
                raise self._failed(exc) from exc
        self._unfinished = 0
        return waited

    async def wait_send_all_might_not_block(self) -> None:
        """Wait until the socket can take more bytes."""
        if self._sending:
            raise trio.BusyResourceError("another task is sending on this TLS stream")
        self._sending = True
        try:
            self._check()
            await trio.lowlevel.wait_writable(self._fd)
        finally:
            self._sending = False

    # -- receiving -----------------------------------------------------------------------------

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        """Receive up to ``max_bytes`` bytes (at least one); ``b""`` at end of stream.

        Cancelling it loses nothing: a record is either returned whole or left to OpenSSL.
        """
        size = RECEIVE if max_bytes is None else max_bytes
        if size < 1:
            raise ValueError("max_bytes must be at least 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this TLS stream")
        self._receiving = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            self._check()
            data, waited = await self._first_read(self._sock.recv, size)
            if len(data) < size and (len(data) == RECORD or self._readable()):
                data = self._more(data, size)
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()
            return data
        finally:
            self._receiving = False

    async def _first_read(self, read: Callable[[Any], T], arg: Any) -> tuple[T, bool]:
        """``read(arg)`` once OpenSSL has something for it, waiting on the socket as OpenSSL
        asks; the result and whether it waited (was a checkpoint)."""
        waited = False
        while True:
            try:
                return read(arg), waited
            except _WANT as want:
                waited = True
                await self._wait(want, sending=False)
            except (ssl.SSLError, OSError, ValueError) as exc:
                raise self._failed(exc) from exc

    def _readable(self) -> bool:
        """Whether a read now finds bytes: decrypted in OpenSSL or unread in the kernel.

        Asked before reading on past the first record, since each record is one ``SSL_read``:
        a peer's small messages are each a record, and reading them in one call rather than
        one per scheduler pass is what keeps pipelined calls fast. The ioctl costs ~0.4 µs; a
        read that finds nothing costs ~4 µs (OpenSSL's error, raised as an exception).
        """
        if self._sock.pending():
            return True
        if _FIONREAD is None:
            return False
        ioctl(self._fd, _FIONREAD, self._unread, True)
        return self._unread[0] > 0

    def _more(self, first: bytes, size: int) -> bytes:
        """Append what OpenSSL can give now without waiting."""
        parts = [first]
        total = len(first)
        last = total
        while total < size and (last == RECORD or self._readable()):
            try:
                more: bytes = self._sock.recv(size - total)
            except (ssl.SSLError, OSError, ValueError):
                break  # would block, or an error the next call raises
            if not more:
                break
            parts.append(more)
            last = len(more)
            total += last
        return b"".join(parts)

    async def recv_into(self, buffer: bytearray | memoryview) -> int:
        """Receive into ``buffer``; how many bytes, at least one unless at end of stream.

        Fills as much of ``buffer`` as arrived, without waiting past the first byte. Cancelling
        it loses nothing, as for :meth:`receive_some`.
        """
        view = memoryview(buffer)
        n = view.nbytes
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this TLS stream")
        self._receiving = True
        try:
            await trio.lowlevel.checkpoint_if_cancelled()
            self._check()
            if not n:
                await trio.lowlevel.cancel_shielded_checkpoint()
                return 0
            sock = self._sock
            got, waited = await self._first_read(sock.recv_into, view)
            last = got
            while got < n and (last == RECORD or self._readable()):
                try:
                    last = sock.recv_into(view[got:])
                except (ssl.SSLError, OSError, ValueError):
                    break  # would block, or an error the next call raises
                got += last
            if not waited:
                await trio.lowlevel.cancel_shielded_checkpoint()
            return got
        finally:
            self._receiving = False

    # -- identity and closing ------------------------------------------------------------------

    def channel_binding(self) -> bytes:
        """RFC 5929 ``tls-server-end-point``: SHA-256 of the server's certificate (DER).

        Both ends of one connection get the same 32 bytes; a man in the middle holding two TLS
        connections presents its own certificate to the client, so the values differ. Raises
        RuntimeError on a server whose own certificate was not given to :func:`accept_tls`.
        """
        if self._server_certificate is None:
            raise RuntimeError("accept_tls was not given this server's certificate")
        return hashlib.sha256(self._server_certificate).digest()

    async def aclose(self) -> None:
        """Send close_notify if the socket takes it at once, then close; idempotent.

        Never waits for the peer (TLS 1.3 does not require its close_notify back), so closing
        is bounded; it always closes the socket, even when cancelled.
        """
        if not self._closed:
            self._closed = True
            try:
                if self._broken is None and not self._unfinished:
                    with contextlib.suppress(ssl.SSLError, OSError, ValueError):
                        self._sock.unwrap()  # sends close_notify; SSLWantReadError for the reply
            finally:
                trio.lowlevel.notify_closing(self._fd)
                self._sock.close()
        await trio.lowlevel.checkpoint()


def _detach(stream: trio.abc.Stream) -> socket.socket:
    """The socket under a ``trio.SocketStream``, as a standard socket this side now owns."""
    if not isinstance(stream, trio.SocketStream):
        raise TypeError(f"TLS runs over a trio.SocketStream, not {type(stream).__name__}")
    sock = socket.socket(fileno=stream.socket.detach())
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
    with contextlib.suppress(OSError):  # Linux before 6.15 has no such option: its default stays
        sock.setsockopt(socket.IPPROTO_TCP, _RTO_MAX_OPTION, RTO_MAX_MS)
    return sock


async def _handshake(
    stream: trio.abc.Stream,
    context: ssl.SSLContext,
    *,
    server_hostname: str | None,
    server_certificate: bytes | None,
) -> TLSStream:
    raw = _detach(stream)
    server_side = server_hostname is None
    try:
        sock = context.wrap_socket(
            raw, server_side=server_side, server_hostname=server_hostname, do_handshake_on_connect=False
        )
    except BaseException:
        raw.close()
        raise
    fd = sock.fileno()
    try:
        sock.setblocking(False)
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            while True:
                try:
                    sock.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    await trio.lowlevel.wait_readable(fd)
                except ssl.SSLWantWriteError:
                    await trio.lowlevel.wait_writable(fd)
        if not server_side:
            server_certificate = sock.getpeercert(binary_form=True)
        return TLSStream(sock, server_certificate, _private=_TOKEN)
    except ssl.SSLCertVerificationError as exc:
        _close(sock)
        why = exc.verify_message or exc.reason
        if exc.verify_code == X509_V_ERR_CERT_HAS_EXPIRED:
            whose = "the client's" if server_side else "the server's"
            why = f"{why} ({whose} certificate: {_EXPIRED_HINT})"
        raise TLSError(f"TLS handshake failed: {why}") from exc
    except (ssl.SSLError, OSError) as exc:
        _close(sock)
        raise TLSError(f"TLS handshake failed: {exc}") from exc
    except BaseException:
        _close(sock)
        raise


def _close(sock: ssl.SSLSocket) -> None:
    trio.lowlevel.notify_closing(sock.fileno())
    sock.close()


async def connect_tls(
    host: str, port: int, context: ssl.SSLContext, server_hostname: str | None = None
) -> TLSStream:
    """Dial ``host:port`` and handshake as the TLS client.

    The server's certificate must chain to ``context``'s CA and name ``server_hostname``
    (default ``host``; an IP address matches the certificate's IP addresses). Raises OSError
    if the connection fails, :class:`TLSError` if the handshake does, ``trio.TooSlowError``
    after ``HANDSHAKE_TIMEOUT`` seconds. Cancelling it closes the socket.
    """
    stream = await trio.open_tcp_stream(host, port)
    try:
        return await _handshake(
            stream, context, server_hostname=server_hostname or host, server_certificate=None
        )
    except BaseException:
        await trio.aclose_forcefully(stream)  # a no-op once the socket was taken over
        raise


async def accept_tls(
    stream: trio.abc.Stream, context: ssl.SSLContext, *, certificate: bytes | None = None
) -> TLSStream:
    """Handshake as the TLS server on an accepted ``trio.SocketStream``, taking its socket.

    With a context from ``_pki.server_context`` the client must present a certificate from the
    cluster's CA. Plaintext, garbage or a client without such a certificate fails the
    handshake (:class:`TLSError`) and nothing the peer sent reaches the caller;
    ``trio.TooSlowError`` after ``HANDSHAKE_TIMEOUT`` seconds. ``certificate`` (this server's,
    DER) enables :meth:`TLSStream.channel_binding`. The socket is closed on any failure.
    """
    return await _handshake(stream, context, server_hostname=None, server_certificate=certificate)


def parse_address(addr: str) -> tuple[str, int]:
    """``tls:host:port`` (``tls:[v6]:port``) -> (host, port)."""
    scheme, _, rest = addr.partition(":")
    host, _, port = rest.rpartition(":")
    if scheme != "tls" or not host or not port.isdigit():
        raise ValueError(f"not a tls:host:port address: {addr!r}")
    return host.strip("[]"), int(port)


class TLSTransport(Transport):
    """Mutual TLS over TCP for ``tls:host:port`` addresses (others go to :class:`Transport`).

    Both ends present certificates from the cluster's CA (``ca_pem``) and accept no other.
    :meth:`open` dials and checks that the server's certificate names the host dialed;
    :meth:`accept` requires the client's. The websocket and its HMAC handshake run on top
    unchanged. One transport serves every connection of its system concurrently: it holds
    only the two contexts.
    """

    schemes: ClassVar[tuple[str, ...]] = ("tls", *Transport.schemes)

    def __init__(self, identity: Identity, ca_pem: bytes) -> None:
        self._client = client_context(identity, ca_pem)
        self._server = server_context(identity, ca_pem)
        self._certificate = ssl.PEM_cert_to_DER_cert(identity.cert_pem.decode("ascii"))
        #: what this transport presents, both ways (renewed by :meth:`renew`)
        self.identity = identity
        #: the cluster CA's certificate: the only issuer trusted
        self.ca_pem = ca_pem

    def renew(self, identity: Identity) -> None:
        """Present ``identity`` from the next handshake on, as client and server; open
        connections carry on."""
        load_identity(self._client, identity)
        load_identity(self._server, identity)
        self._certificate = ssl.PEM_cert_to_DER_cert(identity.cert_pem.decode("ascii"))
        self.identity = identity

    async def open(self, addr: str) -> trio.abc.Stream:
        """Dial ``addr`` and complete the TLS handshake as the client.

        Raises OSError if the machine cannot be reached, :class:`TLSError` if the handshake
        fails (the server's certificate is not from the CA or does not name the host dialed),
        TransportError for an address that is not ``tls:host:port``. Cancelling it closes
        the socket.
        """
        if not addr.startswith("tls:"):
            return await super().open(addr)
        try:
            host, port = parse_address(addr)
        except ValueError as exc:
            raise TransportError(addr, str(exc)) from None
        return await connect_tls(host, port, self._client)

    async def accept(self, stream: trio.abc.Stream) -> trio.abc.Stream:
        """Complete the server's TLS handshake on an accepted raw ``stream``, taking its socket.

        Raises :class:`TLSError` (a ProtocolError) for a peer that is not a client of this
        cluster, ``trio.TooSlowError`` after ``HANDSHAKE_TIMEOUT`` seconds; the socket is closed
        on failure. Closing the returned stream closes the socket (``stream`` no longer owns it).
        """
        return await accept_tls(stream, self._server, certificate=self._certificate)
