"""A lean RFC 6455 websocket over any trio byte stream, binary messages only.

bigactor owns both ends of every connection, so it needs little of websocket's generality and
all of its speed: one parse loop over a reusable buffer, one ``send_all`` per message, and large
messages received straight into their own buffer with no reassembly. trio-websocket costs ~270
Python calls per message and copies large messages several times (measured on the project's
2-core VM; benchmarks/README.md has the figures).

Two fast paths skip trio's stream calls when the stream offers them (see :func:`_fast_paths`):
``try_send(data) -> int``, which writes a small message at once without yielding, and
``recv_into(view)``, which receives a large message in place. A ``trio.SocketStream`` gets thin
adapters over its socket; ``_tls.TLSStream`` has its own, which encrypt (writing to the socket
directly would put plaintext on a TLS connection); any other stream takes the plain path.

Deviation from RFC 6455, on purpose: a client masks its frames with the all-zero masking key.
Masking exists so that browser script cannot make a websocket emit bytes of its choosing
toward an HTTP intermediary; bigactor's connections carry no browser traffic, cross no
intermediary, and are authenticated before any payload is read. A random key would cost a full
pass over every payload in Python (~400 ms for 64 MiB here). The frames are otherwise standard,
and frames masked with any key are accepted and unmasked.

A peer that breaks the protocol gets a close frame saying why (RFC 6455 §7.4: 1002 for a
malformed frame, 1007 for a close reason that is not UTF-8, 1009 for a message over the limit)
and :class:`ProtocolError` is raised: reserved bits or opcodes (3-7, 11-15), a frame masked
the wrong way for its direction, a 64-bit length with its top bit set, a control frame over 125
bytes or fragmented, a close frame with a 1-byte payload or a status code no endpoint may send.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Sequence
from typing import NoReturn

import trio

from .._errors import ProtocolError
from . import _buffers

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HEADERS = 16 * 1024
HANDSHAKE_MESSAGE_LIMIT = 64 * 1024
RECEIVE = 256 * 1024
LARGE = 1 << 20  # messages at least this big are received into a buffer of their own
SMALL_SEND = 64 * 1024  # messages up to this size are joined and sent with one call
SOCKET_BUFFER = 4 << 20  # kernel send/receive buffer asked for on sockets

OP_CONT, OP_BINARY, OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x2, 0x1, 0x8, 0x9, 0xA
_DATA_OPCODES = frozenset({OP_CONT, OP_BINARY, OP_TEXT})
_CONTROL_OPCODES = frozenset({OP_CLOSE, OP_PING, OP_PONG})
MAX_LENGTH = (1 << 63) - 1  # RFC 6455 §5.2: the top bit of a 64-bit length must be 0

# Close codes a peer may send (RFC 6455 §7.4.1, and 1012-1014 registered with IANA since),
# then 3000-4999 for libraries and applications. 1005, 1006 and 1015 only ever describe a
# close locally; the rest of 0-2999 is unassigned.
_CLOSE_CODES = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})

Piece = bytes | bytearray | memoryview
TrySend = Callable[[bytes], int]
RecvInto = Callable[[memoryview], Awaitable[int]]


class HandshakeFailed(ProtocolError):
    """The peer did not speak the websocket upgrade."""


class Unallocatable(Exception):
    """A message was dropped: this process has no memory for its ``size`` bytes."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size

    def __str__(self) -> str:
        return f"no memory for a message of {self.size} bytes"


class WebSocketClosed(Exception):
    """The websocket was closed: by a close frame (``code``, ``reason``) or end of stream."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.code}{': ' + self.reason if self.reason else ''}"


def _accept(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def _unmask(data: memoryview, key: bytes) -> bytes:
    n = len(data)
    mask = int.from_bytes((key * (n // 4 + 1))[:n], "little")
    return (int.from_bytes(data, "little") ^ mask).to_bytes(n, "little")


async def _read_headers(stream: trio.abc.Stream) -> tuple[list[bytes], bytes]:
    # Linear in the bytes received however they are split: a peer sending a byte at a time
    # must not make each arrival rescan (or copy) all the headers so far.
    buf = bytearray()
    end = -1
    while end < 0:
        if len(buf) > MAX_HEADERS:
            raise HandshakeFailed("websocket upgrade headers too large")
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise HandshakeFailed("connection closed during the websocket upgrade")
        start = max(0, len(buf) - 3)
        buf += chunk
        end = buf.find(b"\r\n\r\n", start)
    return bytes(buf[:end]).split(b"\r\n"), bytes(buf[end + 4 :])


def _headers(lines: Sequence[bytes]) -> dict[bytes, bytes]:
    out = {}
    for line in lines:
        name, sep, value = line.partition(b":")
        if not sep:
            raise HandshakeFailed("malformed header in the websocket upgrade")
        out[name.strip().lower()] = value.strip()
    return out


async def client_upgrade(stream: trio.abc.Stream, host: str, path: str = "/") -> WebSocket:
    """Upgrade ``stream`` to a websocket as the client."""
    key = base64.b64encode(os.urandom(16))
    await stream.send_all(
        b"GET " + path.encode() + b" HTTP/1.1\r\nHost: " + host.encode() + b"\r\n"
        b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    lines, rest = await _read_headers(stream)
    status = lines[0].split(b" ", 2)
    if len(status) < 2 or status[1] != b"101":
        raise HandshakeFailed(f"server refused the websocket upgrade: {lines[0][:80]!r}")
    if _headers(lines[1:]).get(b"sec-websocket-accept") != _accept(key):
        raise HandshakeFailed("server answered the websocket upgrade with a wrong accept key")
    return WebSocket(stream, client=True, data=rest)


async def server_upgrade(stream: trio.abc.Stream) -> WebSocket:
    """Accept a websocket upgrade on ``stream`` as the server; refuse anything else."""
    lines, rest = await _read_headers(stream)
    request = lines[0].split(b" ")
    headers = _headers(lines[1:])
    key = headers.get(b"sec-websocket-key", b"")
    if (
        len(request) != 3
        or request[0] != b"GET"
        or headers.get(b"upgrade", b"").lower() != b"websocket"
        or b"upgrade" not in headers.get(b"connection", b"").lower()
        or headers.get(b"sec-websocket-version") != b"13"
        or not key
    ):
        await stream.send_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        raise HandshakeFailed("peer did not ask for a websocket upgrade")
    await stream.send_all(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + _accept(key) + b"\r\n\r\n"
    )
    return WebSocket(stream, client=False, data=rest)


def _fast_paths(stream: trio.abc.Stream) -> tuple[int, TrySend | None, RecvInto | None]:
    """How the websocket may write and receive around trio: (descriptor, try_send, recv_into).

    A stream may offer ``try_send(data) -> int`` and ``recv_into(view)`` (``_tls.TLSStream``
    does). Its ``try_send`` returns how many bytes it took, and the rest must be the next bytes
    sent, even when it took none (a TLS stream may hold part of a write it could not finish).
    A ``trio.SocketStream`` has neither: the websocket writes its descriptor itself with
    ``os.write``, exactly as fast as before streams could offer their own, and there a refusal
    means nothing was written, so the message may stay in the connection's outbox (where it is
    known never to have left); large messages use the socket's ``recv_into``.
    """
    try_send = getattr(stream, "try_send", None)
    recv_into = getattr(stream, "recv_into", None)
    if try_send is not None or recv_into is not None:
        return -1, try_send, recv_into
    sock = getattr(stream, "socket", None)  # a trio.SocketStream
    if sock is None:
        return -1, None, None
    # Bigger kernel buffers: a 64 MiB message moves in a few dozen wakeups, not hundreds (the
    # kernel caps the request at net.core.wmem_max/rmem_max).
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SOCKET_BUFFER)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
    return sock.fileno(), None, sock.recv_into


class WebSocket:
    """One open websocket: send and receive whole binary messages.

    One task may send and one task may receive at a time (the connection's sender and reader);
    control frames the reader must answer share the send lock.
    """

    def __init__(self, stream: trio.abc.Stream, *, client: bool, data: bytes = b"") -> None:
        self._stream = stream
        self._fd, self._try_send, self._recv_into = _fast_paths(stream)
        self._backlog = b""  # the unsent end of a message try_send began
        self._client = client
        self._buf = bytearray(data)
        self._pos = 0
        self._send_lock = trio.StrictFIFOLock()
        self._close_sent = False
        #: largest message accepted; small until the peer has authenticated
        self.max_message = HANDSHAKE_MESSAGE_LIMIT

    # -- sending ----------------------------------------------------------------------------------

    def _header(self, opcode: int, n: int) -> bytes:
        mask = 0x80 if self._client else 0
        if n < 126:
            header = bytes((0x80 | opcode, mask | n))
        elif n < 65536:
            header = struct.pack("!BBH", 0x80 | opcode, mask | 126, n)
        else:
            header = struct.pack("!BBQ", 0x80 | opcode, mask | 127, n)
        # A client's frames carry the zero masking key (see the module docstring).
        return header + b"\0\0\0\0" if self._client else header

    @property
    def backlog(self) -> bool:
        """Whether part of a message ``try_send`` began still waits for :meth:`flush`."""
        return bool(self._backlog)

    def try_send(self, pieces: Sequence[Piece]) -> bool:
        """Write a small message now, without blocking or yielding to the scheduler.

        Returns False (nothing written) when that is not possible: no fast path underneath, a
        send in progress, or a full socket buffer. A partly written message leaves its end in
        the backlog, which the next :meth:`send_message` or :meth:`flush` sends first; so does
        one a stream took none of but must be sent next (see :func:`_fast_paths`). This saves a
        task switch and a scheduler pass per message, most of a small call's cost.
        """
        fd, try_send = self._fd, self._try_send
        if (fd < 0 and try_send is None) or self._backlog or self._send_lock.locked():
            return False
        n = sum(len(p) for p in pieces)
        if n > SMALL_SEND:
            return False
        header = self._header(OP_BINARY, n)
        if try_send is None:  # a socket: gathered by the kernel, no copy of the message here
            try:
                sent = os.writev(fd, [header, *pieces])
            except OSError:
                return False  # would block, or broken: the async path waits or reports it
            if sent < n + len(header):
                self._backlog = b"".join([header, *pieces])[sent:]
            return True
        data = b"".join([header, *pieces])
        sent = try_send(data)
        if sent < len(data):
            self._backlog = data[sent:]
        return True

    async def flush(self) -> None:
        """Send what remains of a message ``try_send`` began."""
        async with self._send_lock:
            await self._send_backlog()

    async def _send_backlog(self) -> None:
        if self._backlog:
            data, self._backlog = self._backlog, b""
            await self._stream.send_all(data)

    async def send_message(self, message: Piece | Sequence[Piece]) -> None:
        """Send one binary message made of ``message`` (bytes or a list of pieces)."""
        pieces: Sequence[Piece] = (
            (message,) if isinstance(message, (bytes, bytearray, memoryview)) else message
        )
        n = sum(len(p) for p in pieces)
        header = self._header(OP_BINARY, n)
        async with self._send_lock:
            await self._send_backlog()
            if n <= SMALL_SEND:
                await self._stream.send_all(b"".join([header, *pieces]))
                return
            small = [header]
            for piece in pieces:
                if len(piece) < SMALL_SEND:
                    small.append(piece)  # type: ignore[arg-type]
                    continue
                if small:
                    await self._stream.send_all(b"".join(small))
                    small = []
                await self._stream.send_all(piece)
            if small:
                await self._stream.send_all(b"".join(small))

    async def _send_control(self, opcode: int, payload: bytes) -> None:
        async with self._send_lock:
            await self._stream.send_all(self._header(opcode, len(payload)) + payload)

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Send a close frame (once) and close the stream."""
        try:
            if not self._close_sent:
                self._close_sent = True
                # A control frame holds 125 bytes: the code and at most 123 of whole characters.
                text = reason.encode()[:123].decode(errors="ignore").encode()
                with trio.move_on_after(1):
                    await self._send_control(OP_CLOSE, struct.pack("!H", code) + text)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError, OSError):
            pass
        finally:
            await trio.aclose_forcefully(self._stream)

    # -- receiving --------------------------------------------------------------------------------

    async def _fill(self, n: int) -> None:
        """Make at least ``n`` unread bytes available in the buffer."""
        buf = self._buf
        while len(buf) - self._pos < n:
            if self._pos:
                del buf[: self._pos]
                self._pos = 0
            chunk = await self._stream.receive_some(RECEIVE)
            if not chunk:
                raise WebSocketClosed(1006, "connection closed without a close frame")
            buf += chunk

    def _take(self, n: int) -> bytes:
        start = self._pos
        self._pos = start + n
        # One copy (a bytearray slice would be one more); the view is gone before the buffer
        # is next trimmed.
        with memoryview(self._buf) as view:
            return bytes(view[start : start + n])

    async def _fail(self, code: int, message: str) -> NoReturn:
        """Close the websocket with ``code`` (telling the peer ``message``); raise ProtocolError."""
        await self.aclose(code, message)
        raise ProtocolError(message)

    async def _read_large(self, n: int, droppable: bool = False) -> memoryview:
        """Read an ``n``-byte payload straight into a ``bytes`` object of its own (one the
        process's pool may have received into before, see ``_buffers``).

        When there is no memory for it: a ``droppable`` message is read past and dropped
        (:class:`Unallocatable`), any other fails the connection (1009).
        """
        try:
            whole, view = _buffers.POOL.take(n)
        except (MemoryError, OverflowError):
            # Only a limit raised for an authenticated peer's announcement lets n get here.
            if droppable:
                await self._skip(n)
                raise Unallocatable(n) from None
            await self._fail(1009, f"no memory for a message of {n} bytes")
        have = min(len(self._buf) - self._pos, n)
        view[:have] = self._buf[self._pos : self._pos + have]
        self._pos += have
        while have < n:
            if self._recv_into is not None:
                got = await self._recv_into(view[have:])
            else:
                chunk = await self._stream.receive_some(min(n - have, RECEIVE * 4))
                got = len(chunk)
                view[have : have + got] = chunk
            if not got:
                raise WebSocketClosed(1006, "connection closed in the middle of a message")
            have += got
        return memoryview(whole)

    async def _skip(self, n: int) -> None:
        """Read past ``n`` bytes of payload without keeping them."""
        have = min(len(self._buf) - self._pos, n)
        self._pos += have
        while have < n:
            chunk = await self._stream.receive_some(min(n - have, RECEIVE * 4))
            if not chunk:
                raise WebSocketClosed(1006, "connection closed in the middle of a message")
            have += len(chunk)

    async def get_message(self, limit: int | None = None, droppable: bool = False) -> bytes | memoryview:
        """Receive the next binary message; answer pings; raise WebSocketClosed at the end.

        ``limit`` overrides ``max_message`` for this message (an out-of-band buffer whose size
        its authenticated sender announced). A peer that breaks the protocol is sent a close
        frame saying why, and ProtocolError is raised. A ``droppable`` message this process has
        no memory for is read past and :class:`Unallocatable` raised: the connection goes on.
        """
        limit = self.max_message if limit is None else limit
        parts: list[bytes | memoryview] = []  # of a fragmented message (its empty ones left out)
        fragmented = False
        total = 0
        while True:
            await self._fill(2)
            b0, b1 = self._buf[self._pos], self._buf[self._pos + 1]
            self._pos += 2
            fin, opcode, masked, n = b0 & 0x80, b0 & 0x0F, b1 & 0x80, b1 & 0x7F
            if b0 & 0x70:
                await self._fail(1002, "websocket frame with reserved bits set")
            if bool(masked) == self._client:
                # RFC 6455 §5.1: a client masks every frame it sends, a server none.
                sender = "server" if masked else "client"
                await self._fail(
                    1002, f"{'masked' if masked else 'unmasked'} websocket frame from the {sender}"
                )
            if n == 126:
                await self._fill(2)
                (n,) = struct.unpack_from("!H", self._buf, self._pos)
                self._pos += 2
            elif n == 127:
                await self._fill(8)
                (n,) = struct.unpack_from("!Q", self._buf, self._pos)
                self._pos += 8
                if n > MAX_LENGTH:
                    await self._fail(1002, "websocket frame length with its most significant bit set")
            key = b""
            if masked:
                await self._fill(4)
                key = self._take(4)
            if opcode >= OP_CLOSE:
                if opcode not in _CONTROL_OPCODES:
                    await self._fail(1002, f"reserved websocket control opcode {opcode}")
                if n > 125 or not fin:
                    await self._fail(1002, "malformed websocket control frame")
                await self._fill(n)
                payload = self._take(n)
                if key.strip(b"\0"):
                    payload = _unmask(memoryview(payload), key)
                await self._control(opcode, payload)
                continue
            if opcode not in _DATA_OPCODES:
                await self._fail(1002, f"reserved websocket data opcode {opcode}")
            if total + n > limit:
                await self._fail(1009, f"message of more than {limit} bytes")
            if opcode == OP_TEXT:
                await self._fail(1003, "text message where binary frames were expected")
            if (opcode == OP_CONT) != fragmented:
                await self._fail(1002, "unexpected websocket continuation frame")
            if n >= LARGE:
                data: bytes | memoryview = await self._read_large(
                    n, droppable and bool(fin) and not fragmented
                )
            else:
                await self._fill(n)
                data = self._take(n)
            if key.strip(b"\0"):
                data = _unmask(memoryview(data), key)
            if fin and not fragmented:
                return data
            fragmented = True
            if n:
                parts.append(data)
                total += n
            if fin:
                return b"".join(parts)

    async def _control(self, opcode: int, payload: bytes) -> None:
        if opcode == OP_PING:
            await self._send_control(OP_PONG, payload)
        elif opcode == OP_CLOSE:
            code, reason = await self._parse_close(payload)
            if not self._close_sent:
                self._close_sent = True
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    await self._send_control(OP_CLOSE, payload[:2])  # echo the code (§5.5.1)
            raise WebSocketClosed(code, reason)

    async def _parse_close(self, payload: bytes) -> tuple[int, str]:
        """The code and reason of a close frame; a malformed one fails the connection."""
        if not payload:
            return 1005, ""  # no status code (§7.1.5)
        if len(payload) == 1:
            await self._fail(1002, "close frame with a 1-byte payload")
        (code,) = struct.unpack_from("!H", payload)
        if code not in _CLOSE_CODES and not 3000 <= code <= 4999:
            await self._fail(1002, f"close frame with the invalid status code {code}")
        try:
            reason = payload[2:].decode()
        except UnicodeDecodeError:
            await self._fail(1007, "close frame whose reason is not UTF-8")
        return code, reason
