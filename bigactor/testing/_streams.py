"""In-memory byte streams for the test system: a connected pair, each end a ``trio.abc.Stream``.

``trio.testing.memory_stream_pair`` is made for testing streams themselves (hooks, pumps,
lockstep variants), and every message through it took the connection's sender task, a lock, a
pump and two checkpoints. These carry bytes and nothing else, and offer the websocket's fast
path (``try_send``; see ``_rpc._websocket._fast_paths``): a small message is handed to the
peer's buffer at once, as a socket's is. With a thousand simulated machines in one process
that is most of what starting them and asking their status costs.

Buffers are unbounded, as ``memory_stream_pair``'s are. Closing an end makes the other end's
receive return ``b""`` (end of stream) once it has read what was sent, and its sends raise
``trio.BrokenResourceError``; the closed end itself raises ``trio.ClosedResourceError``.
"""

from __future__ import annotations

import trio


class _Buffer:
    """Bytes on their way one way, and the task waiting to receive them."""

    __slots__ = ("data", "eof", "waiter")

    def __init__(self) -> None:
        self.data = bytearray()
        self.eof = False
        self.waiter: trio.lowlevel.ParkingLot = trio.lowlevel.ParkingLot()


class MemoryStream(trio.abc.Stream):
    """One end of :func:`stream_pair`."""

    def __init__(self, incoming: _Buffer, outgoing: _Buffer) -> None:
        self._in = incoming
        self._out = outgoing
        self._closed = False

    def try_send(self, data: bytes | bytearray | memoryview) -> int:
        """Hand ``data`` to the peer now, without yielding: how many bytes were taken, all of
        them, or none if either end is closed (then :meth:`send_all` raises, as the websocket's
        fast path expects of a stream)."""
        if self._closed or self._out.eof:
            return 0
        self._out.data += data
        self._out.waiter.unpark_all()
        return len(data)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        if self._closed:
            raise trio.ClosedResourceError("this end of the stream is closed")
        if self._out.eof:
            raise trio.BrokenResourceError("the other end of the stream is closed")
        self.try_send(data)

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._closed:
            raise trio.ClosedResourceError("this end of the stream is closed")
        buffer = self._in
        if not buffer.data and not buffer.eof:
            await buffer.waiter.park()
            if self._closed:
                raise trio.ClosedResourceError("this end of the stream is closed")
        else:
            await trio.lowlevel.checkpoint()
        n = len(buffer.data) if max_bytes is None else min(max_bytes, len(buffer.data))
        chunk = bytes(buffer.data[:n])
        del buffer.data[:n]
        return chunk

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()

    def close(self) -> None:
        """Close this end at once: the peer reads what was sent, then end of stream."""
        if self._closed:
            return
        self._closed = True
        self._out.eof = True
        self._out.waiter.unpark_all()
        self._in.eof = True  # the peer's sends break from now on
        self._in.data.clear()
        self._in.waiter.unpark_all()  # a receive of this end's own, in another task, ends


def stream_pair() -> tuple[MemoryStream, MemoryStream]:
    """Two connected ends: what one sends, the other receives."""
    a_to_b, b_to_a = _Buffer(), _Buffer()
    return MemoryStream(b_to_a, a_to_b), MemoryStream(a_to_b, b_to_a)
