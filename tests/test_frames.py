"""Wire frames: encoding, chunking, and rejection of malformed input."""

import pytest

from bigactor import ProtocolError
from bigactor._rpc import _frames
from bigactor._rpc._frames import HEADER, MORE, Kind, decode, encode


def _message(frames: list[list[bytes | bytearray | memoryview]]) -> bytes:
    return b"".join(bytes(p) for frame in frames for p in frame)


def test_round_trip_of_several_frames_in_one_message() -> None:
    """Frames packed back to back come out in order with their payloads."""
    msg = _message(encode(Kind.CALL, 1, b"abc") + encode(Kind.CANCEL, 2) + encode(Kind.REPLY, 3, b"x"))
    frames = list(decode(msg))
    assert [(kind, call_id, bytes(payload)) for kind, _, call_id, payload in frames] == [
        (Kind.CALL, 1, b"abc"),
        (Kind.CANCEL, 2, b""),
        (Kind.REPLY, 3, b"x"),
    ]


def test_large_payload_is_chunked(monkeypatch: pytest.MonkeyPatch) -> None:
    """A payload above CHUNK splits into frames flagged MORE except the last."""
    monkeypatch.setattr(_frames, "CHUNK", 1024)
    payload = bytes(range(256)) * (1024 // 256 * 2 + 1)
    frames = [next(decode(_message([f]))) for f in encode(Kind.REPLY, 9, [payload[:5], payload[5:]])]
    assert [bool(flags & MORE) for _, flags, _, _ in frames] == [True, True, False]
    assert b"".join(bytes(p) for *_, p in frames) == payload


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (b"", "empty"),
        (b"garbage", "truncated frame header"),
        (HEADER.pack(99, 0, 1, 0), "unknown frame kind"),
        (HEADER.pack(Kind.CALL, 0, 1, 100) + b"0123456789", "truncated frame"),
    ],
)
def test_malformed_messages_raise_protocol_error(message: bytes, reason: str) -> None:
    """Garbage, unknown kinds and truncated frames are protocol errors, never partial data."""
    with pytest.raises(ProtocolError, match=reason):
        list(decode(message))


def test_text_message_is_rejected() -> None:
    """A websocket text message is not a frame."""
    with pytest.raises(ProtocolError, match="text"):
        list(decode("hello"))  # type: ignore[arg-type]


async def test_websocket_limit_and_large_messages_over_memory_streams() -> None:
    """Messages above LARGE arrive whole; a message over the limit is refused with 1009."""
    import trio
    import trio.testing

    from bigactor._rpc._websocket import LARGE, WebSocketClosed, client_upgrade, server_upgrade

    a, b = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        got: list[bytes] = []

        async def serve() -> None:
            ws = await server_upgrade(b)
            ws.max_message = 3 * LARGE
            got.append(bytes(await ws.get_message()))
            with pytest.raises(ProtocolError, match="message of more than"):
                await ws.get_message()

        nursery.start_soon(serve)
        client = await client_upgrade(a, "test")
        payload = bytes(range(256)) * (2 * LARGE // 256)
        await client.send_message([b"head", payload])
        await client.send_message(bytes(4 * LARGE))
        with pytest.raises(WebSocketClosed) as info:
            await client.get_message()
        assert info.value.code == 1009
    assert got == [b"head" + payload]


async def test_direct_writes_keep_messages_whole_and_in_order_when_the_socket_fills() -> None:
    """try_send on a full socket leaves a backlog that is sent first: messages stay whole, in order."""
    import socket

    import trio

    from bigactor._rpc._websocket import WebSocket

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    sender = WebSocket(trio.SocketStream(trio.socket.from_stdlib_socket(a)), client=True)
    receiver = WebSocket(trio.SocketStream(trio.socket.from_stdlib_socket(b)), client=False)
    receiver.max_message = 1 << 20
    sent: list[bytes] = []
    i = 0
    while not sender.backlog:  # fill the kernel buffer until a write is only partly taken
        message = i.to_bytes(4, "big") * 15_000  # 60 KB each
        if sender.try_send([message]):
            sent.append(message)
        else:
            break
        i += 1
    assert sender.backlog, "the socket never filled"
    more = [bytes([7]) * 100, bytes([8]) * 50_000]
    async with trio.open_nursery() as nursery:

        async def send_more() -> None:
            for m in more:
                await sender.send_message([m])  # the backlog goes out first

        nursery.start_soon(send_more)
        got = [bytes(await receiver.get_message()) for _ in range(len(sent) + len(more))]
    assert got == sent + more
    await sender.aclose()
    await receiver.aclose()
