"""What bigactor reads from a peer, fed arbitrary bytes: the fuzz targets of ``tests/fuzz.py``.

Each target takes one input (bytes), feeds it to one reader of the wire, and lets through only
an error that is not the library's own (``LIBRARY_ERRORS``): that is a finding. Structured
inputs start with an options byte and hold several parts, each a little-endian u16 length and
that many bytes (:func:`split`), so that a mutated input stays close to a real exchange.

Targets:

* ``frames``: ``_frames.decode`` of one websocket message, and the out-of-band header of a
  frame that announces buffers (``_codec.oob_lengths``), as the connection's reader does.
* ``websocket``: ``WebSocket.get_message`` over a stream of arbitrary frames, as a server or a
  client, with the handshake's message limit, the authenticated one, or an announced buffer's,
  the bytes arriving all at once or split in chunks down to single bytes (``SPLITS``).
* ``upgrade``: ``server_upgrade`` / ``client_upgrade`` of arbitrary HTTP, then messages. In a
  response, ``@ACCEPT@`` stands for the accept key the client expects.
* ``handshake``: ``server_handshake`` / ``client_handshake`` against arbitrary peer messages.
  With the options' sign bit the harness puts a valid proof in the peer's place, as a peer
  holding the key would, so the fuzzer reaches what is read after authentication (versions).
* ``codec``: ``_codec.decode`` of an arbitrary payload, with or without out-of-band buffers.
  Seeded with plain data and call tuples only, and run (by ``tests/fuzz.py``) with unpickling
  limited to the few globals plain data needs (see :func:`restrict_unpickling`): unpickling
  runs whatever a pickle names, which is why bigactor decodes nothing before the peer has
  authenticated. So this target shows that no payload makes decoding fail with anything but
  CodecError (nor crash, hang or exhaust memory in the library's code); it does not show that
  unpickling arbitrary bytes is safe. It is not.
"""

from __future__ import annotations

import collections
import hashlib
import inspect
import itertools
import json
import pickle
import re
import struct
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import attrs
import trio

from bigactor import CodecError, ProtocolError, _codec
from bigactor._rpc import _auth, _frames, _websocket
from bigactor._rpc._connection import MAX_MESSAGE
from bigactor._rpc._frames import Kind
from bigactor._rpc._websocket import (
    HANDSHAKE_MESSAGE_LIMIT,
    MAX_LENGTH,
    WebSocket,
    WebSocketClosed,
    client_upgrade,
    server_upgrade,
)

LIBRARY_ERRORS = (ProtocolError, CodecError, WebSocketClosed)
KEY = hashlib.sha256(b"bigactor fuzz key").digest()
ADDR = "unix:/fuzz/m1"
ACCEPT = b"@ACCEPT@"
#: How the peer's bytes arrive: each a cycle of chunk sizes. Splits of one to three bytes come
#: among larger chunks: split that fine throughout, a 20 KiB input would take 20,000 reads.
SPLITS = ((1 << 30,), (4096,), (64,), (7,), (1, 4096), (2, 3, 4096), (1, 1, 1, 64), (3, 1000))
#: how the outcomes of this process's inputs were spread (for the report of a run)
OUTCOMES: collections.Counter[str] = collections.Counter()


def _record(exc: BaseException | None) -> None:
    if exc is None:
        OUTCOMES["no error"] += 1
    elif isinstance(exc, CodecError) and exc.__cause__ is not None:
        OUTCOMES[f"CodecError from {type(exc.__cause__).__name__}"] += 1
    else:
        OUTCOMES[type(exc).__name__] += 1


def split(data: bytes) -> list[bytes]:
    """The parts of a structured input: each a u16 length and that many bytes (a short last
    part takes what is left)."""
    parts, pos = [], 0
    while pos < len(data):
        n = int.from_bytes(data[pos : pos + 2], "little")
        parts.append(data[pos + 2 : pos + 2 + n])
        pos += 2 + n
    return parts


def join(*parts: bytes) -> bytes:
    """The inverse of :func:`split`."""
    return b"".join(len(p).to_bytes(2, "little") + p for p in parts)


def ws_frame(
    opcode: int, payload: bytes = b"", *, fin: bool = True, mask: bytes | None = b"\0\0\0\0"
) -> bytes:
    """One websocket frame; masked with ``mask`` (a client's) unless it is None (a server's)."""
    n = len(payload)
    head = bytes((0x80 * fin | opcode,))
    bit = 0 if mask is None else 0x80
    if n < 126:
        head += bytes((bit | n,))
    elif n < 65536:
        head += struct.pack("!BH", bit | 126, n)
    else:
        head += struct.pack("!BQ", bit | 127, n)
    if mask is None:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class Peer(trio.abc.Stream):
    """The far end of a stream: sends ``data`` in chunks of the sizes ``split`` cycles through,
    then end of file; keeps what it is sent. With ``accept``, ``@ACCEPT@`` in ``data`` becomes
    the accept key of the websocket upgrade request it was sent."""

    def __init__(self, data: bytes, split: tuple[int, ...], *, accept: bool = False) -> None:
        self.data = data
        self.split = itertools.cycle(split)
        self.accept = accept
        self.pos = 0
        self.sent: list[bytes] = []

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self.accept:
            self.accept = False
            key = re.search(rb"Sec-WebSocket-Key: (\S+)", b"".join(self.sent))
            if key is not None:
                self.data = self.data.replace(ACCEPT, _websocket._accept(key.group(1)))
        chunk = next(self.split)
        n = min(chunk, max_bytes or chunk)
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        return out

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.sent.append(bytes(data))

    async def wait_send_all_might_not_block(self) -> None:
        pass

    async def send_eof(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


async def _read_all(ws: WebSocket, size: int, limit: int | None = None) -> None:
    # Every message takes at least two bytes of the input: more messages than that is a loop.
    for _ in range(size // 2 + 1):
        await ws.get_message(limit)
    raise AssertionError(f"more messages than {size} bytes of input can hold")


# -- frames ---------------------------------------------------------------------------------------


def run_frames(data: bytes) -> None:
    try:
        for _, flags, _, payload in _frames.decode(data):
            if flags & _codec.OOB and not flags & _frames.MORE:
                _codec.oob_lengths(payload)
    except LIBRARY_ERRORS as exc:
        _record(exc)
    else:
        _record(None)


def _message(*frames: list[list[_frames.Piece]]) -> bytes:
    return b"".join(bytes(p) for group in frames for frame in group for p in frame)


def seeds_frames() -> list[bytes]:
    call = _codec.encode_call("echo.echo", (1, "a"), {"k": b"v"})
    oob = _codec.OOB | _frames.STREAM
    chunked = _chunked(Kind.REPLY, 9, bytes(range(40)))
    return [
        _message(_frames.encode(Kind.CALL, 1, call.pieces)),
        _message(
            _frames.encode(Kind.CALL, 1, call.pieces, _frames.STREAM),
            _frames.encode(Kind.CANCEL, 2),
            _frames.encode(Kind.CREDIT, 3, (16).to_bytes(4, "little")),
        ),
        _message(
            _frames.encode(Kind.REPLY, 4, pickle.dumps([1, 2.5, None], 5)), _frames.encode(Kind.STREAM_END, 5)
        ),
        _message(_frames.encode(Kind.STREAM_DATA, 6, b"x", oob)),
        _message(_frames.encode(Kind.ERROR, 7, struct.pack("<IQQ", 2, 3, 70000) + b"pickle", _codec.OOB)),
        _message(chunked),
    ]


def _chunked(kind: Kind, call_id: int, payload: bytes) -> list[list[_frames.Piece]]:
    saved, _frames.CHUNK = _frames.CHUNK, 16
    try:
        return _frames.encode(kind, call_id, payload)
    finally:
        _frames.CHUNK = saved


# -- websocket ------------------------------------------------------------------------------------

_LIMITS: tuple[tuple[int, int | None], ...] = (
    (HANDSHAKE_MESSAGE_LIMIT, None),  # before the handshake
    (MAX_MESSAGE, None),  # after it
    (MAX_MESSAGE, MAX_LENGTH),  # an out-of-band buffer, its length as announced (authenticated)
)


async def run_websocket(data: bytes) -> None:
    """options: bit 0 client, bits 1-2 limits, bits 3-5 split; then the stream."""
    if not data:
        return
    options, stream = data[0], data[1:]
    max_message, limit = _LIMITS[(options >> 1 & 3) % len(_LIMITS)]
    ws = WebSocket(Peer(stream, SPLITS[options >> 3 & 7]), client=bool(options & 1))
    ws.max_message = max_message
    try:
        await _read_all(ws, len(stream), limit)
    except LIBRARY_ERRORS as exc:
        _record(exc)


def seeds_websocket() -> list[bytes]:
    client = b"\0\0\0\0"
    seeds = []
    for role, mask in ((0, client), (1, None)):
        for limits in range(3):
            for split in (0, 4, 6):
                options = bytes((role | limits << 1 | split << 3,))
                seeds.append(
                    options
                    + ws_frame(0x2, b"hello", mask=mask)
                    + ws_frame(0x9, b"ping", mask=mask)
                    + ws_frame(0x2, b"a" * 200, mask=mask)
                    + ws_frame(0x2, b"frag", fin=False, mask=mask)
                    + ws_frame(0xA, b"", mask=mask)
                    + ws_frame(0x0, b"ment", mask=mask)
                    + ws_frame(0x8, struct.pack("!H", 1000) + b"bye", mask=mask)
                )
            seeds.append(options + ws_frame(0x2, b"b" * 70_000, mask=b"\x01\x02\x03\x04"))
            seeds.append(options + ws_frame(0x2, b"c" * 300, mask=mask)[:100])
    return seeds


# -- upgrade --------------------------------------------------------------------------------------

REQUEST = (
    b"GET / HTTP/1.1\r\nHost: bigactor\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)
RESPONSE = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: " + ACCEPT + b"\r\n\r\n"
)


async def run_upgrade(data: bytes) -> None:
    """options: bit 0 client, bits 1-3 split; then the peer's bytes."""
    if not data:
        return
    options, stream = data[0], data[1:]
    client = bool(options & 1)
    peer = Peer(stream, SPLITS[options >> 1 & 7], accept=client)
    try:
        ws = await (client_upgrade(peer, "bigactor") if client else server_upgrade(peer))
        await _read_all(ws, len(stream))
    except LIBRARY_ERRORS as exc:
        _record(exc)


def seeds_upgrade() -> list[bytes]:
    return [
        b"\0" + REQUEST + ws_frame(0x2, _auth.MAGIC + bytes(32) + b"{}"),
        b"\x0c" + REQUEST.replace(b"Upgrade: websocket", b"Upgrade: WebSocket") + ws_frame(0x8),
        b"\0" + b"POST / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x01" + RESPONSE + ws_frame(0x2, bytes(64) + b"{}", mask=None),
        b"\x0d" + RESPONSE + ws_frame(0x9, b"p", mask=None) + ws_frame(0x2, b"OK", mask=None),
        b"\x01" + b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
        b"\x0e" + REQUEST[:-2] + b"X-Pad: " + b"a" * _websocket.MAX_HEADERS,  # never ends
    ]


# -- handshake ------------------------------------------------------------------------------------


class Channel:
    """The handshake's peer: answers with the input's parts, in order; with ``sign``, puts a
    valid proof in the place of the peer's (for a server: its WELCOME's MAC)."""

    def __init__(self, parts: list[bytes], *, server: bool, sign: bool) -> None:
        self.parts = parts
        self.server = server  # the side under test
        self.sign = sign
        self.sent: list[bytes] = []
        self.received: list[bytes] = []

    async def send_message(self, message: bytes) -> None:
        self.sent.append(message)

    async def get_message(self) -> bytes:
        if not self.parts:
            raise WebSocketClosed(1006, "connection closed without a close frame")
        message = self.parts.pop(0)
        if self.sign:
            message = self._signed(len(self.received), message)
        self.received.append(message)
        return message

    def _signed(self, index: int, message: bytes) -> bytes:
        magic, nonce, mac = len(_auth.MAGIC), _auth.NONCE, _auth.MAC
        if self.server and index == 1:  # the client's PROOF
            hello, welcome = self.received[0], self.sent[0]
            return _auth.transcript_mac(
                KEY,
                b"client",
                ADDR,
                hello[magic : magic + nonce],
                welcome[:nonce],
                hello[magic + nonce :],
                welcome[nonce + mac :],
            )
        if not self.server and index == 0 and len(message) >= nonce + mac:  # the server's WELCOME
            hello = self.sent[0]
            nonce_c, versions_c = hello[magic : magic + nonce], hello[magic + nonce :]
            nonce_s, versions_s = message[:nonce], message[nonce + mac :]
            proof = _auth.transcript_mac(KEY, b"server", ADDR, nonce_c, nonce_s, versions_c, versions_s)
            return nonce_s + proof + versions_s
        return message


def drive(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that awaits nothing but a :class:`Channel` (which never blocks)."""
    try:
        coroutine.send(None)
    except StopIteration as stop:
        return stop.value
    coroutine.close()
    raise AssertionError("the handshake waited for something other than its channel")


def run_handshake(data: bytes) -> None:
    """options: bit 0 the client side under test (else the server), bit 1 sign; then parts."""
    if not data:
        return
    options, parts = data[0], split(data[1:])
    server = not options & 1
    channel = Channel(parts, server=server, sign=bool(options & 2))
    try:
        if server:
            drive(_auth.server_handshake(channel, KEY, ADDR))
        else:
            _auth.check_versions(ADDR, drive(_auth.client_handshake(channel, KEY, ADDR)))
    except LIBRARY_ERRORS as exc:
        _record(exc)
    else:
        _record(None)


def seeds_handshake() -> list[bytes]:
    versions = json.dumps(_auth.versions(), sort_keys=True).encode()
    other = json.dumps(dict(_auth.versions(), cloudpickle="0.0.1"), sort_keys=True).encode()
    hello = _auth.MAGIC + bytes(range(32)) + versions
    welcome = bytes(range(32, 64)) + bytes(32) + versions
    return [
        b"\x00" + join(hello, bytes(32)),
        b"\x02" + join(hello, bytes(32)),
        b"\x02" + join(b"bigactor/1\n" + bytes(32) + b"{}", bytes(32)),
        b"\x01" + join(welcome, b"OK"),
        b"\x03" + join(welcome, b"OK"),
        b"\x03" + join(bytes(64) + other, b"OK"),
        b"\x03" + join(bytes(64) + b'["not", "a", "dict"]', b"OK"),
        b"\x03" + join(welcome, b"NO"),
    ]


# -- codec ----------------------------------------------------------------------------------------

#: the globals a pickle of plain data (and its out-of-band buffers) names
PLAIN_GLOBALS = frozenset(
    {
        ("builtins", "complex"),
        ("builtins", "bytearray"),
        ("builtins", "memoryview"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("bigactor._codec", "_bytes_from"),
    }
)
_restricted = False


class RefusedGlobal(Exception):
    """A pickle named a global that plain data never needs (refused while fuzzing)."""


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "pickle.find_class" and _restricted and tuple(args) not in PLAIN_GLOBALS:
        raise RefusedGlobal(f"{args[0]}.{args[1]}")


def restrict_unpickling() -> None:
    """Refuse, in this process, to unpickle any global but those of plain data: fuzzed pickles
    must not call arbitrary functions. An audit hook lasts as long as the process."""
    global _restricted
    if not _restricted:
        sys.addaudithook(_audit)
        _restricted = True


def run_codec(data: bytes) -> None:
    """options: the frame's flags; then parts: the payload, then its out-of-band buffers."""
    if not data:
        return
    flags, parts = data[0], split(data[1:])
    payload = memoryview(parts[0] if parts else b"")
    try:
        _codec.decode((payload, parts[1:]) if flags & _codec.OOB else payload, flags)
    except CodecError as exc:
        _record(exc)
    else:
        _record(None)


def seeds_codec() -> list[bytes]:
    values: list[Any] = [
        None,
        True,
        -(1 << 70),
        2.5,
        1j,
        "s✓",
        b"b",
        bytearray(b"ba"),
        (1, "a"),
        [1, [2, {"k": (3,)}]],
        {1, 2},
        frozenset({3}),
        {"nested": {"deep": [1, 2, 3] * 5}},
    ]
    seeds = []
    for value in values:
        payload = _codec.encode(value)
        seeds.append(bytes((payload.flags,)) + join(b"".join(bytes(p) for p in payload.pieces)))
    calls = [("echo.echo", (1, "a"), {}), ("svc.method", (b"x" * 40, [1.5]), {"k": {1: None}})]
    for target, args, kwargs in calls:
        payload = _codec.encode_call(target, args, kwargs)
        seeds.append(bytes((payload.flags,)) + join(b"".join(bytes(p) for p in payload.pieces)))
    # Out-of-band buffers, made small: the decoder does not care how big they were.
    saved, _codec.OOB_MIN = _codec.OOB_MIN, 8
    try:
        for value in (b"0123456789", [bytearray(b"abcdefghij"), memoryview(b"klmnopqrst"), 1]):
            payload = _codec.encode(value)
            head = b"".join(bytes(p) for p in payload.pieces)
            seeds.append(bytes((payload.flags,)) + join(head, *(bytes(b) for b in payload.buffers)))
    finally:
        _codec.OOB_MIN = saved
    return seeds


# -- the table ------------------------------------------------------------------------------------


@attrs.frozen
class Target:
    """A fuzz target: its reader, seed inputs, dictionary tokens, and a short run's length."""

    name: str
    run: Callable[[bytes], Awaitable[None]] | Callable[[bytes], None]
    seeds: Callable[[], list[bytes]]
    tokens: tuple[bytes, ...] = ()
    short: int = 5000  # inputs of the run in the test suite
    max_len: int = 4096  # largest input in bytes

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.run)

    async def run_one(self, data: bytes) -> None:
        """Feed one input to the target (in a Trio task)."""
        result = self.run(data)
        if result is not None:
            await result


TARGETS = {
    t.name: t
    for t in [
        Target("frames", run_frames, seeds_frames, short=20_000),
        Target("websocket", run_websocket, seeds_websocket, short=4_000),
        Target(
            "upgrade",
            run_upgrade,
            seeds_upgrade,
            tokens=(b"\r\n\r\n", b"HTTP/1.1 101", b"Sec-WebSocket-Key: ", b"Sec-WebSocket-Accept: ", ACCEPT),
            short=4_000,
            max_len=_websocket.MAX_HEADERS + 4096,  # room for headers over the limit
        ),
        Target("handshake", run_handshake, seeds_handshake, tokens=(_auth.MAGIC, b"OK"), short=20_000),
        Target("codec", run_codec, seeds_codec, short=20_000),
    ]
}
