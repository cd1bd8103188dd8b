"""The connection handshake: mutual proof of the cluster key bound to the address dialed, and
version lock-step."""

from __future__ import annotations

import secrets

import pytest
import trio

from bigactor._rpc import _auth

ADDR = "unix:/run/bigactor/m1"
KEY = b"k" * 32


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


async def refused(server: Pipe, match: str) -> None:
    """Run the server's handshake on ``server``, which must refuse the client with ``match``."""
    with pytest.raises(_auth.AuthError, match=match):
        await _auth.server_handshake(server, KEY, ADDR)


async def test_same_key_authenticates_both_ways() -> None:
    """With the same key both sides pass, and the client learns the server's versions."""
    client, server = pipes()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_auth.server_handshake, server, KEY, ADDR)
        peer = await _auth.client_handshake(client, KEY, ADDR)
    assert peer == _auth.versions()
    assert all(KEY not in m for m in client.sent + server.sent)  # the key never travels


async def test_wrong_key_fails_on_both_sides() -> None:
    """A client with another key is refused by the server, and refuses the server itself."""
    client, server = pipes()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:

            async def serve() -> None:
                with pytest.raises(_auth.AuthError):
                    await _auth.server_handshake(server, b"a" * 32, ADDR)

            nursery.start_soon(serve)
            with pytest.raises(_auth.AuthError, match="server failed authentication"):
                await _auth.client_handshake(client, b"b" * 32, ADDR)
            nursery.cancel_scope.cancel()


async def test_peer_without_the_handshake_is_refused() -> None:
    """Anything but the bigactor HELLO is refused before a byte of it is interpreted."""
    client, server = pipes()
    await client.send_message(b"\x80\x05garbage pickle")
    with pytest.raises(_auth.AuthError, match="did not open with the bigactor handshake"):
        await _auth.server_handshake(server, KEY, ADDR)


async def test_peer_with_an_older_handshake_is_named() -> None:
    """A HELLO of another handshake version is refused, naming both versions."""
    client, server = pipes()
    await client.send_message(b"bigactor/1\n" + secrets.token_bytes(_auth.NONCE) + b"{}")
    with pytest.raises(_auth.AuthError, match="bigactor/1, this machine bigactor/2"):
        await _auth.server_handshake(server, KEY, ADDR)


async def relay(driver: Pipe, worker: Pipe, flip: int | None = None) -> None:
    """Forward the four handshake messages between the two ends in order (the caller cancels
    it when an end gives up); with ``flip``, change one character of that message's versions
    JSON on its way."""
    ends = [(driver, worker), (worker, driver)]
    for i in range(4):
        source, sink = ends[i % 2]
        message = bytearray(await source.get_message())
        if i == flip:
            message[-2] ^= 1  # a character inside the JSON object that ends HELLO and WELCOME
        await sink.send_message(bytes(message))


async def test_relayed_handshake_fails_at_the_client() -> None:
    """A driver dialing an attacker whose bytes reach a real worker refuses the worker's proof."""
    client, attacker_side = pipes()
    attacker_to_worker, worker = pipes()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_auth.server_handshake, worker, KEY, ADDR)
            nursery.start_soon(relay, attacker_side, attacker_to_worker)
            with pytest.raises(_auth.AuthError, match="not the machine at unix:/tmp/attacker"):
                await _auth.client_handshake(client, KEY, "unix:/tmp/attacker")
            nursery.cancel_scope.cancel()
    assert len(client.sent) == 1  # the driver sent its HELLO and no proof


async def test_proof_for_another_address_fails_at_the_worker() -> None:
    """A relay that gets a proof made for the address the driver dialed cannot pass it on."""
    attacker, worker = pipes()
    nonce_c, versions_c = secrets.token_bytes(_auth.NONCE), b"{}"
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(refused, worker, "dialed another address than unix:/run")
            await attacker.send_message(_auth.MAGIC + nonce_c + versions_c)
            welcome = await attacker.get_message()
            nonce_s, versions_s = welcome[: _auth.NONCE], welcome[_auth.NONCE + _auth.MAC :]
            # All the driver would sign, from a HELLO and a WELCOME it saw through the relay.
            proof = _auth.transcript_mac(
                KEY, b"client", "unix:/tmp/attacker", nonce_c, nonce_s, versions_c, versions_s
            )
            await attacker.send_message(proof)


@pytest.mark.parametrize("flip", [0, 1], ids=["driver versions", "worker versions"])
async def test_proofs_cover_the_versions_both_ways(flip: int) -> None:
    """Changing either side's versions in transit fails the handshake at the client."""
    client, attacker_side = pipes()
    attacker_to_worker, worker = pipes()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_auth.server_handshake, worker, KEY, ADDR)
            nursery.start_soon(relay, attacker_side, attacker_to_worker, flip)
            with pytest.raises(_auth.AuthError, match="server failed authentication"):
                await _auth.client_handshake(client, KEY, ADDR)
            nursery.cancel_scope.cancel()
    assert len(client.sent) == 1  # no proof left the driver


async def test_recorded_or_reflected_proofs_are_refused() -> None:
    """A client proof recorded on one connection fails on the next (fresh nonces), and the
    server's own proof sent back as a client's fails (role label)."""
    client, server = pipes()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_auth.server_handshake, server, KEY, ADDR)
        await _auth.client_handshake(client, KEY, ADDR)
    hello, recorded_proof = client.sent

    for proof in ("replayed", "reflected"):
        attacker, server = pipes()
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(refused, server, "client failed authentication")
                await attacker.send_message(hello)
                welcome = await attacker.get_message()
                mac_s = welcome[_auth.NONCE : _auth.NONCE + _auth.MAC]
                await attacker.send_message(recorded_proof if proof == "replayed" else mac_s)


def test_version_mismatch_names_both_sides() -> None:
    """Different versions fail with both sides' versions named."""
    peer = dict(_auth.versions(), cloudpickle="0.0.1", python="2.7.18")
    with pytest.raises(_auth.VersionMismatch) as info:
        _auth.check_versions("unix:/m", peer)
    text = str(info.value)
    assert "cloudpickle: driver" in text
    assert "worker 0.0.1" in text
    assert "worker 2.7.18" in text
    _auth.check_versions("unix:/m", _auth.versions())  # equal versions pass
