"""Wire frames: the unit of the bigactor protocol inside websocket messages.

A websocket message holds one or more frames back to back, so that many queued calls or
replies travel in one message. Each frame is a fixed header followed by its payload::

    kind: u8 | flags: u8 | call id: u64 | payload length: u32 | payload

A payload larger than ``CHUNK`` is split into several frames of the same kind and id, all but
the last with ``MORE`` set; the receiver joins them. Payloads are codec bytes (see _codec) and are
only decoded once the connection has authenticated.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator, Sequence

from .. import _codec
from .._errors import ProtocolError

HEADER = struct.Struct("<BBQI")
CHUNK = 128 << 20


class Kind(enum.IntEnum):
    CALL = 1  # payload: dumps_call(target, args, kwargs)
    REPLY = 2  # payload: codec value
    ERROR = 3  # payload: encoded error (see _rpc._errorcodec)
    CANCEL = 4  # no payload: the caller gave up on this call
    STREAM_DATA = 5  # payload: one item of a streamed reply
    STREAM_END = 6  # no payload: the stream is complete
    CREDIT = 7  # payload: u32, items the caller is ready to receive


MORE = 1  # flag: payload continues in the next frame of this id
STREAM = 2  # flag on CALL: the caller iterates the reply as a stream
OOB = _codec.OOB  # flag: out-of-band buffers follow the frame's message (see _codec)

Piece = bytes | bytearray | memoryview

_KINDS = frozenset(int(k) for k in Kind)


#: One decoded frame: (kind, flags, call id, payload). A plain tuple: the reader makes one per
#: frame, and a tuple costs a fraction of an object (kind is a plain int, equal to its Kind).
Frame = tuple[int, int, int, memoryview]


def encode(
    kind: Kind, call_id: int, payload: Piece | Sequence[Piece] = b"", flags: int = 0
) -> list[list[Piece]]:
    """Return the frames of one logical frame, each a list of wire pieces (header first).

    ``payload`` is bytes or a list of pieces sent back to back (a pickle and its out-of-band
    buffers); pieces are never copied unless the payload must be chunked.
    """
    pieces: Sequence[Piece] = (payload,) if isinstance(payload, (bytes, bytearray, memoryview)) else payload
    n = sum(len(p) for p in pieces)
    if n <= CHUNK:
        return [[HEADER.pack(kind, flags, call_id, n), *pieces]]
    view = memoryview(b"".join(pieces))
    out: list[list[Piece]] = []
    for start in range(0, n, CHUNK):
        piece = view[start : start + CHUNK]
        more = MORE if start + CHUNK < n else 0
        out.append([HEADER.pack(kind, flags | more, call_id, len(piece)), piece])
    return out


def decode(message: bytes | bytearray | memoryview) -> Iterator[Frame]:
    """Split a websocket message into frames; raise ProtocolError on anything malformed."""
    if not isinstance(message, (bytes, bytearray, memoryview)):
        raise ProtocolError("text message where binary frames were expected")
    view = memoryview(message)
    pos, end = 0, len(message)
    unpack, size = HEADER.unpack_from, HEADER.size
    if end == 0:
        raise ProtocolError("empty message")
    while pos < end:
        if end - pos < HEADER.size:
            raise ProtocolError(f"truncated frame header ({end - pos} bytes)")
        kind, flags, call_id, n = unpack(view, pos)
        pos += size
        if kind not in _KINDS:
            raise ProtocolError(f"unknown frame kind {kind}")
        if n > end - pos:
            raise ProtocolError(f"truncated frame: payload of {n} bytes, {end - pos} left")
        yield (kind, flags, call_id, view[pos : pos + n])
        pos += n
