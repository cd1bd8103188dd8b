"""The connection handshake: mutual proof of the cluster key, and version lock-step."""

from __future__ import annotations

import pytest
import trio

from bigactor._rpc import _auth


class Pipe:
    """One end of an in-memory message channel (what a websocket gives the handshake)."""

    def __init__(self, send: trio.MemorySendChannel[bytes], recv: trio.MemoryReceiveChannel[bytes]):
        self.send, self.recv = send, recv
        self.sent: list[bytes] = []

    async def send_message(self, message: bytes) -> None:
        self.sent.append(message)
        await self.send.send(message)

    async def get_message(self) -> bytes:
        return await self.recv.receive()


def pipes() -> tuple[Pipe, Pipe]:
    a_send, b_recv = trio.open_memory_channel[bytes](10)
    b_send, a_recv = trio.open_memory_channel[bytes](10)
    return Pipe(a_send, a_recv), Pipe(b_send, b_recv)


async def test_same_key_authenticates_both_ways() -> None:
    """With the same key both sides pass, and the client learns the server's versions."""
    client, server = pipes()
    key = b"k" * 32
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_auth.server_handshake, server, key)
        peer = await _auth.client_handshake(client, key)
    assert peer == _auth.versions()
    assert all(key not in m for m in client.sent + server.sent)  # the key never travels


async def test_wrong_key_fails_on_both_sides() -> None:
    """A client with another key is refused by the server, and refuses the server itself."""
    client, server = pipes()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:

            async def serve() -> None:
                with pytest.raises(_auth.AuthError):
                    await _auth.server_handshake(server, b"a" * 32)

            nursery.start_soon(serve)
            with pytest.raises(_auth.AuthError, match="server failed authentication"):
                await _auth.client_handshake(client, b"b" * 32)
            nursery.cancel_scope.cancel()


async def test_peer_without_the_handshake_is_refused() -> None:
    """Anything but the bigactor HELLO is refused before a byte of it is interpreted."""
    client, server = pipes()
    await client.send_message(b"\x80\x05garbage pickle")
    with pytest.raises(_auth.AuthError, match="did not open with the bigactor handshake"):
        await _auth.server_handshake(server, b"k" * 32)


def test_version_mismatch_names_both_sides() -> None:
    """Different versions fail with both sides' versions named."""
    peer = dict(_auth.versions(), dill="0.0.1", python="2.7.18")
    with pytest.raises(_auth.VersionMismatch) as info:
        _auth.check_versions("unix:/m", peer)
    text = str(info.value)
    assert "dill: driver" in text
    assert "worker 0.0.1" in text
    assert "worker 2.7.18" in text
    _auth.check_versions("unix:/m", _auth.versions())  # equal versions pass
