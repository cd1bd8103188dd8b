"""The websocket layer against frames that break RFC 6455: each fails the connection with the
close code §7.4 gives, and valid close frames are answered by an echo of their code."""

from __future__ import annotations

import struct

import pytest
import trio
import trio.testing

from bigactor import ProtocolError
from bigactor._rpc._websocket import WebSocket, WebSocketClosed

MASK = b"\x01\x02\x03\x04"


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, masked: bool = True) -> bytes:
    """One frame as a client sends it (masked with a non-zero key), or unmasked."""
    n = len(payload)
    head = bytes((0x80 * fin | opcode,))
    bit = 0x80 if masked else 0
    if n < 126:
        head += bytes((bit | n,))
    else:
        head += struct.pack("!BH", bit | 126, n)
    if not masked:
        return head + payload
    return head + MASK + bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))


async def receive(raw: bytes, *, client: bool = False) -> tuple[BaseException | bytes, bytes]:
    """Feed ``raw`` to a websocket (a server unless ``client``); return what ``get_message``
    gave or raised, and every byte the websocket sent back before it closed its stream."""
    ours, theirs = trio.testing.memory_stream_pair()
    ws = WebSocket(theirs, client=client)
    await ours.send_all(raw)
    await ours.send_eof()
    result: BaseException | bytes
    try:
        result = bytes(await ws.get_message())
    except (ProtocolError, WebSocketClosed) as exc:
        result = exc
    await ws.aclose()
    answer = b""
    while chunk := await ours.receive_some():
        answer += chunk
    return result, answer


def close_code(answer: bytes | bytearray) -> int | None:
    """The status code of the close frame a server sent (unmasked), None if it sent none."""
    if len(answer) < 2 or answer[0] != 0x88:
        return None
    n = answer[1] & 0x7F
    return struct.unpack("!H", answer[2:4])[0] if n >= 2 else 1005


@pytest.mark.parametrize("opcode", [3, 4, 5, 6, 7, 11, 12, 13, 14, 15])
async def test_reserved_opcodes_fail_with_1002(opcode: int) -> None:
    """Reserved data (3-7) and control (11-15) opcodes are protocol errors, answered by 1002."""
    result, answer = await receive(frame(opcode, b"x") + frame(0x2, b"after"))
    assert isinstance(result, ProtocolError)
    assert "reserved websocket" in str(result)
    assert close_code(answer) == 1002


async def test_one_byte_close_payload_fails_with_1002_not_an_echo() -> None:
    """A close payload of one byte cannot hold a status code: 1002, never that byte echoed."""
    result, answer = await receive(frame(0x8, b"\x03"))
    assert isinstance(result, ProtocolError)
    assert "1-byte" in str(result)
    assert close_code(answer) == 1002
    assert answer[1] & 0x7F >= 2  # a well-formed close frame


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2000, 2999, 5000, 65535])
async def test_close_codes_no_peer_may_send_fail_with_1002(code: int) -> None:
    """Unassigned codes, and those that only describe a close locally, are protocol errors."""
    result, answer = await receive(frame(0x8, struct.pack("!H", code)))
    assert isinstance(result, ProtocolError)
    assert f"invalid status code {code}" in str(result)
    assert close_code(answer) == 1002


@pytest.mark.parametrize(
    "code", [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1014, 3000, 4999]
)
async def test_valid_close_is_echoed_with_its_code(code: int) -> None:
    """A valid close ends the websocket with its code and reason, answered with the same code."""
    result, answer = await receive(frame(0x8, struct.pack("!H", code) + "bye ✓".encode()))
    assert isinstance(result, WebSocketClosed)
    assert (result.code, result.reason) == (code, "bye ✓")
    assert answer == b"\x88\x02" + struct.pack("!H", code)


async def test_empty_close_is_answered_by_an_empty_close() -> None:
    """A close without a status code reads as 1005 and is answered without one."""
    result, answer = await receive(frame(0x8))
    assert isinstance(result, WebSocketClosed)
    assert result.code == 1005
    assert answer == b"\x88\x00"


async def test_close_reason_that_is_not_utf8_fails_with_1007() -> None:
    """A close reason must be UTF-8 (§8.1)."""
    result, answer = await receive(frame(0x8, struct.pack("!H", 1000) + b"\xff\xfe"))
    assert isinstance(result, ProtocolError)
    assert close_code(answer) == 1007


@pytest.mark.parametrize(
    ("raw", "client", "reason"),
    [
        (frame(0x2, b"x", masked=False), False, "unmasked websocket frame from the client"),
        (frame(0x2, b"x"), True, "masked websocket frame from the server"),
        (b"\x82\xff" + struct.pack("!Q", 1 << 63) + MASK, False, "most significant bit"),
        (frame(0x9, b"x" * 126), False, "malformed websocket control frame"),
        (frame(0x9, b"x", fin=False), False, "malformed websocket control frame"),
        (b"\xc2\x80" + MASK, False, "reserved bits"),
        (frame(0x0, b"x"), False, "unexpected websocket continuation"),
        (frame(0x2, b"x", fin=False) + frame(0x2, b"y"), False, "unexpected websocket continuation"),
    ],
    ids=[
        "unmasked to server",
        "masked to client",
        "64-bit length top bit",
        "long ping",
        "fragmented ping",
        "reserved bits",
        "stray continuation",
        "unfinished message",
    ],
)
async def test_malformed_frames_fail_with_1002(raw: bytes, client: bool, reason: str) -> None:
    """Frames masked the wrong way, over-long lengths, bad control frames, reserved bits and
    stray continuations are protocol errors, answered by 1002."""
    result, answer = await receive(raw, client=client)
    assert isinstance(result, ProtocolError)
    assert reason in str(result)
    if not client:
        assert close_code(answer) == 1002


async def test_text_message_fails_with_1003() -> None:
    """bigactor speaks binary only: a text message is unacceptable data (1003)."""
    result, answer = await receive(frame(0x1, b"hi"))
    assert isinstance(result, ProtocolError)
    assert close_code(answer) == 1003


async def test_fragments_and_interleaved_pings_make_one_message() -> None:
    """Fragments join into one message (empty ones too); a ping between them is answered."""
    raw = frame(0x2, b"ab", fin=False) + frame(0x0, fin=False) * 1000 + frame(0x9, b"p")
    result, answer = await receive(raw + frame(0x0, b"cd"))
    assert result == b"abcd"
    assert answer.startswith(b"\x8a\x01p")  # the pong


async def test_message_too_big_for_memory_fails_with_1009() -> None:
    """A frame within an announced limit but beyond what memory holds fails the connection
    (1009) instead of leaking MemoryError to the reader."""
    raw = b"\x82\xff" + struct.pack("!Q", 1 << 62) + MASK
    ours, theirs = trio.testing.memory_stream_pair()
    ws = WebSocket(theirs, client=False)
    await ours.send_all(raw)
    with pytest.raises(ProtocolError, match="no memory for a message of"):
        await ws.get_message(limit=(1 << 63) - 1)
    answer = await ours.receive_some()
    assert close_code(answer) == 1009


async def test_a_message_the_socket_takes_in_part_is_finished_in_order() -> None:
    """The fast path writes a small message straight to the socket; when the socket takes
    only part of it, the rest goes first on the next send, and the peer reads every message
    whole and in order."""
    import socket

    a, b = trio.socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    sender = WebSocket(trio.SocketStream(a), client=False)
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # _fast_paths asked for 4 MiB
    receiver = WebSocket(trio.SocketStream(b), client=True)
    messages = [bytes([i]) * 12_000 for i in range(40)]  # more than one of its chunks each
    partial = False
    async with trio.open_nursery() as nursery:

        async def send_all_of_them() -> None:
            nonlocal partial
            for m in messages:
                if sender.backlog:
                    partial = True
                    await sender.flush()
                if not sender.try_send([m]):
                    await sender.send_message(m)
            if sender.backlog:
                await sender.flush()

        nursery.start_soon(send_all_of_them)
        await trio.sleep(0.2)  # the sender fills the socket before anything is read
        with trio.fail_after(10):
            got = [bytes(await receiver.get_message()) for _ in messages]
    a.close()
    b.close()
    assert got == messages
    assert partial  # the socket did take a message in part
