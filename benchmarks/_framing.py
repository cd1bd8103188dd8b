"""Length-prefixed frames over a trio stream: the framing of the raw trio TCP floor.

A frame is a 4-byte big-endian length followed by that many bytes. The reader never reads past
the frame it is assembling when the frame is large, so a 64 MiB frame is received in chunks of
at most ``chunk`` bytes and joined once.
"""

from __future__ import annotations

import struct

import trio

HEADER = struct.Struct("!I")
CHUNK = 1 << 20  # receive_some size: 1 MiB, the best size measured for bulk on this box
SMALL = 1 << 16  # frames up to this size are sent with their header in one send_all


class FrameReader:
    """Reads whole frames from a trio stream; EOFError when the peer closes."""

    def __init__(self, stream: trio.abc.ReceiveStream, chunk: int = CHUNK) -> None:
        self._stream = stream
        self._buf = bytearray()
        self._chunk = chunk

    async def _more(self, max_bytes: int) -> bytes:
        data = await self._stream.receive_some(max_bytes)
        if not data:
            raise EOFError("peer closed the stream")
        return bytes(data)

    async def read(self) -> bytes:
        """Return the next frame's payload."""
        while len(self._buf) < HEADER.size:
            self._buf += await self._more(self._chunk)
        (size,) = HEADER.unpack_from(self._buf)
        end = HEADER.size + size
        if len(self._buf) >= end:
            frame = bytes(self._buf[HEADER.size : end])
            del self._buf[:end]
            return frame
        parts = [bytes(self._buf[HEADER.size :])]
        got = len(parts[0])
        self._buf.clear()
        while got < size:
            part = await self._more(min(self._chunk, size - got))
            parts.append(part)
            got += len(part)
        return b"".join(parts)


async def send_frame(stream: trio.abc.SendStream, payload: bytes) -> None:
    """Send one frame; a large payload goes out after its header without being copied."""
    if len(payload) <= SMALL:
        await stream.send_all(HEADER.pack(len(payload)) + payload)
    else:
        await stream.send_all(HEADER.pack(len(payload)))
        await stream.send_all(payload)
