"""Large messages are received into memory the process already has: a buffer the program has
let go of is written into again (no page faults), one it still holds never is, and idle ones go
back to the system. Real sockets, real websockets; page faults counted by the kernel."""

from __future__ import annotations

import gc
import resource
import socket
from collections.abc import AsyncIterator, Callable

import numpy as np
import pytest
import trio

import bigactor
from bigactor._rpc import _buffers
from bigactor._rpc._websocket import WebSocket

MiB = 1 << 20


@pytest.fixture
async def pair() -> AsyncIterator[tuple[WebSocket, WebSocket]]:
    """A sending and a receiving websocket over a real socket pair."""
    a, b = trio.socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    sender = WebSocket(trio.SocketStream(a), client=True)
    receiver = WebSocket(trio.SocketStream(b), client=False)
    receiver.max_message = 1 << 30
    yield sender, receiver
    a.close()
    b.close()


async def transfer(pair: tuple[WebSocket, WebSocket], data: bytes) -> bytes:
    """Send ``data`` one way; return the ``bytes`` object the receiver's message is a view of."""
    sender, receiver = pair
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender.send_message, data)
        message = await receiver.get_message()
    assert isinstance(message, memoryview)
    assert type(message.obj) is bytes
    whole: bytes = message.obj
    return whole


def faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


async def test_a_large_message_the_program_let_go_of_is_received_into_again(
    pair: tuple[WebSocket, WebSocket],
) -> None:
    """Once its first 64 MiB message is dropped, a second is received without page faults (a
    fresh buffer costs 16,384 of them), and reads as a ``bytes`` of its own content."""
    first = b"\x01" * (64 * MiB)
    second = b"\x02" * (64 * MiB)
    received = await transfer(pair, first)
    assert received == first
    del received
    gc.collect()
    before = faults()
    received = await transfer(pair, second)
    taken = faults() - before
    assert received == second
    assert hash(received) == hash(second)  # no hash of the old content cached
    assert taken < 2_000, f"{taken} page faults to receive 64 MiB"


Holder = Callable[[bytes], "bytes | memoryview | np.ndarray"]
HOLDERS: dict[str, Holder] = {
    "the bytes": lambda b: b,
    "a memoryview": memoryview,
    "a numpy array": lambda b: np.frombuffer(b, dtype=np.uint8),
    "a slice of a memoryview": lambda b: memoryview(b)[MiB:],
}


@pytest.mark.parametrize("hold", HOLDERS.values(), ids=HOLDERS.keys())
async def test_a_value_the_program_holds_is_never_received_into(
    pair: tuple[WebSocket, WebSocket], hold: Holder
) -> None:
    """Whatever holds a received value (the object, a view, an array over it), the messages
    after it go elsewhere and it keeps its content."""
    first = bytes(range(256)) * (8 * MiB // 256)
    kept = hold(await transfer(pair, first))
    gc.collect()
    for i in range(3):
        again = await transfer(pair, bytes([i]) * len(first))
        assert again == bytes([i]) * len(first)
    assert bytes(kept)[-4:] == first[-4:]
    assert bytes(kept) == first[len(first) - len(bytes(kept)) :]


async def test_a_reused_buffer_becomes_a_bytes_of_the_new_length(pair: tuple[WebSocket, WebSocket]) -> None:
    """A kept buffer serves a smaller message (down to half its size): the value has the new
    length and compares, hashes and slices as that content."""
    received = await transfer(pair, b"a" * (6 * MiB))
    held = len(received)
    del received
    gc.collect()
    smaller = b"b" * (4 * MiB - 3)
    received = await transfer(pair, smaller)
    assert len(received) == len(smaller) < held
    assert received == smaller
    assert hash(received) == hash(smaller)
    assert received[-2:] == b"bb"
    assert received + b"!" == smaller + b"!"
    assert received.decode() == smaller.decode()


@pytest.mark.slow
async def test_large_messages_through_a_cluster_keep_their_values() -> None:
    """End to end: each 16 MiB echo comes back as sent, while the program holds every earlier
    reply (so neither end may reuse them)."""
    async with bigactor.open_cluster() as cluster:
        echo = await cluster.spawn(Echo)
        replies = []
        for i in range(4):
            value = bytes([i]) * (16 * MiB)
            replies.append(await echo.echo(value))
        for i, reply in enumerate(replies):
            assert reply == bytes([i]) * (16 * MiB)


class Echo:
    def echo(self, value: bytes) -> bytes:
        return value


def test_idle_buffers_are_given_back() -> None:
    """A buffer nobody has used for the idle time goes at the next trim; one in use stays."""
    pool = _buffers.Pool(idle=0.0)
    used, _ = pool.take(2 * MiB)
    dropped, _ = pool.take(2 * MiB)
    del dropped
    assert pool.statistics() == (2, 2 * MiB)
    pool.trim()
    assert pool.statistics() == (1, 0)  # the one in use is kept, not counted as idle
    del used
    pool.trim()
    assert pool.statistics() == (0, 0)


def test_the_pool_keeps_at_most_its_entries_and_total() -> None:
    """New buffers push out the unused ones handed out longest ago; beyond the limits, memory
    is the program's alone (given back when dropped)."""
    pool = _buffers.Pool(entries=2, total=5 * MiB, idle=3600)
    a, _ = pool.take(2 * MiB)
    b, _ = pool.take(2 * MiB)
    c, _ = pool.take(2 * MiB)  # no room: two entries, all in use
    assert pool.statistics() == (2, 0)
    del a
    d, _ = pool.take(3 * MiB)  # a (2 MiB, unused) cannot serve 3 MiB: it goes to make room
    assert pool.statistics() == (2, 0)
    del b, d
    e, _ = pool.take(2 * MiB)  # b is free and fits
    assert pool.statistics() == (2, 3 * MiB)
    assert c is not e
    big, _ = pool.take(_buffers.LARGEST + 1)  # never kept
    del big
    assert pool.statistics() == (2, 3 * MiB)
