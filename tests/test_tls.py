"""Mutual TLS under bigactor's wire (``_rpc._tls``): real sockets on loopback, real handshakes.

Servers run in the test's nursery and hand each handshake's outcome to the test through a
channel: a :class:`TLSStream` only once the handshake passed, so when a peer is refused the
"application" (the test) never holds a stream and never sees a byte. One test runs the server
in a child process and calls an actor in it, as the driver calls a worker.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import hashlib
import os
import socket
import ssl
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio
import trio.testing
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bigactor import TransportError, _codec, _pki, _rpc
from bigactor._rpc import Kind, _tls
from bigactor._rpc._tls import (
    HANDSHAKE_TIMEOUT,
    TLSError,
    TLSStream,
    TLSTransport,
    accept_tls,
    connect_tls,
    parse_address,
)
from bigactor._rpc._websocket import WebSocket, client_upgrade, server_upgrade

REPO = Path(__file__).resolve().parent.parent
LOCAL = "127.0.0.1"


class Pki:
    """A cluster CA, a worker identity for 127.0.0.1 and a driver identity."""

    def __init__(self) -> None:
        self.ca = _pki.ClusterCA.create("test cluster")
        self.worker = self.ca.identity("worker", ips=[LOCAL], client=True, server=True)
        self.driver = self.ca.identity("driver", client=True, server=False)

    def server_context(self, identity: _pki.Identity | None = None) -> ssl.SSLContext:
        return _pki.server_context(identity or self.worker, self.ca.cert_pem)

    def client_context(self, identity: _pki.Identity | None = None) -> ssl.SSLContext:
        return _pki.client_context(identity or self.driver, self.ca.cert_pem)


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


class Server:
    """A TLS listener on loopback; each handshake's outcome goes to ``outcomes``."""

    def __init__(self, context: ssl.SSLContext, certificate: bytes | None = None) -> None:
        self.context = context
        self.certificate = certificate
        self.port = 0
        self._send, self.outcomes = trio.open_memory_channel[TLSStream | BaseException](16)

    async def handle(self, stream: trio.SocketStream) -> None:
        try:
            tls = await accept_tls(stream, self.context, certificate=self.certificate)
        except (TLSError, trio.TooSlowError) as exc:
            await self._send.send(exc)
            return
        await self._send.send(tls)

    async def accepted(self) -> TLSStream:
        outcome = await self.outcomes.receive()
        assert isinstance(outcome, TLSStream), f"the handshake failed: {outcome!r}"
        return outcome

    async def refused(self) -> BaseException:
        outcome = await self.outcomes.receive()
        assert not isinstance(outcome, TLSStream), "a refused peer's stream reached the application"
        return outcome


async def serve(nursery: trio.Nursery, context: ssl.SSLContext, certificate: bytes | None = None) -> Server:
    server = Server(context, certificate)
    listeners = await nursery.start(functools.partial(trio.serve_tcp, server.handle, 0, host=LOCAL))
    server.port = listeners[0].socket.getsockname()[1]
    return server


async def pair(nursery: trio.Nursery, pki: Pki) -> tuple[TLSStream, TLSStream]:
    """A connected (client, server) pair of TLS streams."""
    certificate = ssl.PEM_cert_to_DER_cert(pki.worker.cert_pem.decode())
    server = await serve(nursery, pki.server_context(), certificate)
    client = await connect_tls(LOCAL, server.port, pki.client_context())
    return client, await server.accepted()


async def first_read(port: int, context: ssl.SSLContext) -> bytes:
    """Connect with ``context``, send, and read once."""
    client = await connect_tls(LOCAL, port, context)
    try:
        # TLS 1.3: the client's handshake ends before the server checked its certificate;
        # a refusing server's alert arrives at the client's first read.
        await client.send_all(b"application data")
        return await client.receive_some()
    finally:
        await client.aclose()


async def assert_refused(server: Server, context: ssl.SSLContext) -> BaseException:
    """A client with ``context`` fails (at the handshake or its first read); the server refused."""
    with pytest.raises((TLSError, trio.BrokenResourceError)):
        await first_read(server.port, context)
    return await server.refused()


def signed_by(ca: _pki.ClusterCA, key_pem: bytes, *, not_before: datetime.datetime, days: float) -> bytes:
    """A certificate from ``ca`` with the validity asked for (the CA's API only issues from now)."""
    key = serialization.load_pem_private_key(key_pem, None)
    issuer = x509.load_pem_x509_certificate(ca.cert_pem)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "expired driver")]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca._key.public_key()), critical=False
        )
        .sign(ca._key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


# -- the stream ----------------------------------------------------------------------------------


async def test_websocket_message_round_trip_over_tls(nursery: trio.Nursery, pki: Pki) -> None:
    """A websocket over TLS streams carries messages both ways, the small ones by try_send."""
    client, server = await pair(nursery, pki)
    async with trio.open_nursery() as both:
        both.start_soon(server_upgrade, server)
        ws_client = await client_upgrade(client, "bigactor")
    ws_server = WebSocket(server, client=False)
    assert ws_client.try_send([b"ping ", b"over tls"])
    assert await ws_server.get_message() == b"ping over tls"
    await ws_server.send_message(b"pong")
    assert await ws_client.get_message() == b"pong"
    await ws_client.aclose()
    await ws_server.aclose()


async def test_64_mib_message_over_tls(nursery: trio.Nursery, pki: Pki) -> None:
    """A 64 MiB websocket message crosses TLS whole (received in place, record by record)."""
    client, server = await pair(nursery, pki)
    sender, receiver = WebSocket(client, client=True), WebSocket(server, client=False)
    receiver.max_message = 128 << 20
    payload = bytes(range(256)) * (256 << 10)
    got: list[bytes | memoryview] = []
    async with trio.open_nursery() as both:
        both.start_soon(sender.send_message, payload)
        got.append(await receiver.get_message())
    assert len(got[0]) == len(payload)
    assert got[0] == payload
    await sender.aclose()
    await receiver.aclose()


async def test_try_send_never_writes_plaintext(nursery: trio.Nursery, pki: Pki) -> None:
    """Every byte between the ends (seen by a relay) is ciphertext, the fast path's included."""
    server = await serve(nursery, pki.server_context())
    seen = bytearray()

    async def pump(source: trio.SocketStream, sink: trio.SocketStream) -> None:
        while data := await source.receive_some(65536):
            seen.extend(data)
            await sink.send_all(data)

    async def relay(inbound: trio.SocketStream) -> None:
        outbound = await trio.open_tcp_stream(LOCAL, server.port)
        async with outbound, inbound, trio.open_nursery() as pumps:
            pumps.start_soon(pump, inbound, outbound)
            pumps.start_soon(pump, outbound, inbound)

    listeners = await nursery.start(functools.partial(trio.serve_tcp, relay, 0, host=LOCAL))
    client = await connect_tls(LOCAL, listeners[0].socket.getsockname()[1], pki.client_context())
    tls_server = await server.accepted()
    marker = b"PLAINTEXT-MARKER-"
    sender, receiver = WebSocket(client, client=True), WebSocket(tls_server, client=False)
    receiver.max_message = 1 << 20
    for i in range(50):
        assert sender.try_send([marker + str(i).encode()]), "the fast path was not taken"
    await sender.send_message(marker * 1000)
    for i in range(50):
        assert await receiver.get_message() == marker + str(i).encode()
    assert await receiver.get_message() == marker * 1000
    assert len(seen) > 51 * len(marker)
    assert marker[:8] not in seen
    await sender.aclose()
    await receiver.aclose()


async def test_a_write_that_would_block_is_never_partial_and_completes_once(
    nursery: trio.Nursery, pki: Pki
) -> None:
    """try_send on a full socket returns 0, not a count; send_all of the same bytes ends it.

    OpenSSL already took part of the write: the bytes must arrive exactly once, in order.
    """
    client, server = await pair(nursery, pki)
    payload = os.urandom(1 << 20) * 64  # more than the kernel buffers of both ends hold
    assert client.try_send(payload) == 0
    with pytest.raises(trio.BrokenResourceError, match="retried"):
        await client.send_all(payload[:100])  # another write first would corrupt the stream
    received = bytearray(len(payload) + 1)
    view = memoryview(received)
    got = 0

    async def receive() -> None:
        nonlocal got
        while got < len(payload):
            got += await server.recv_into(view[got:])

    async with trio.open_nursery() as both:
        both.start_soon(receive)
        await client.send_all(payload)
    assert got == len(payload)
    assert received[:got] == payload
    assert client.try_send(b"after") == 5
    assert await server.receive_some() == b"after"
    await client.aclose()
    await server.aclose()


async def test_websocket_messages_stay_whole_when_a_tls_socket_fills(nursery: trio.Nursery, pki: Pki) -> None:
    """A message the TLS stream could not finish is sent first, whole: nothing lost or repeated."""
    client, server = await pair(nursery, pki)
    sender, receiver = WebSocket(client, client=True), WebSocket(server, client=False)
    receiver.max_message = 1 << 20
    sent: list[bytes] = []
    i = 0
    while not sender.backlog:  # until OpenSSL holds part of a write
        message = i.to_bytes(4, "big") * 15_000
        assert sender.try_send([message])
        sent.append(message)
        i += 1
    more = [bytes([7]) * 100, bytes([8]) * 50_000]
    got: list[bytes] = []
    async with trio.open_nursery() as both:

        async def send_more() -> None:
            for m in more:
                await sender.send_message([m])  # the backlog goes out first

        both.start_soon(send_more)
        got = [bytes(await receiver.get_message()) for _ in range(len(sent) + len(more))]
    assert got == sent + more
    await sender.aclose()
    await receiver.aclose()


async def test_close_sends_close_notify_and_is_idempotent(nursery: trio.Nursery, pki: Pki) -> None:
    """aclose tells the peer (a clean end of stream), closes once, and wakes a blocked reader."""
    client, server = await pair(nursery, pki)
    await client.send_all(b"last words")
    await client.aclose()
    await client.aclose()
    assert await server.receive_some() == b"last words"
    assert await server.receive_some() == b""
    with pytest.raises(trio.ClosedResourceError):
        await client.send_all(b"more")
    assert client.try_send(b"more") == 0

    await server.aclose()

    client, server = await pair(nursery, pki)

    async def blocked() -> None:
        with pytest.raises(trio.ClosedResourceError):
            await server.receive_some()

    async with trio.open_nursery() as both:
        both.start_soon(blocked)
        await trio.testing.wait_all_tasks_blocked()
        await server.aclose()
    await client.aclose()


async def test_channel_binding_is_the_servers_certificate_hash_on_both_ends(
    nursery: trio.Nursery, pki: Pki
) -> None:
    """tls-server-end-point: SHA-256 of the server's certificate, the same 32 bytes on both ends."""
    client, server = await pair(nursery, pki)
    der = ssl.PEM_cert_to_DER_cert(pki.worker.cert_pem.decode())
    assert client.channel_binding() == server.channel_binding() == hashlib.sha256(der).digest()
    assert client.peer_certificate == der
    assert server.peer_certificate == ssl.PEM_cert_to_DER_cert(pki.driver.cert_pem.decode())
    await client.aclose()
    await server.aclose()


# -- refusals -------------------------------------------------------------------------------------


async def test_a_client_without_a_certificate_is_refused(nursery: trio.Nursery, pki: Pki) -> None:
    """No client certificate: the server's handshake fails and hands nothing up."""
    server = await serve(nursery, pki.server_context())
    refused = await assert_refused(server, _pki.client_context(None, pki.ca.cert_pem))
    assert "certificate" in str(refused)


async def test_a_client_certified_by_another_ca_is_refused(nursery: trio.Nursery, pki: Pki) -> None:
    """A certificate from a CA other than the cluster's is refused."""
    foreign = trustme.CA().issue_cert("driver.example")
    identity = _pki.Identity(
        cert_pem=foreign.cert_chain_pems[0].bytes(), key_pem=foreign.private_key_pem.bytes()
    )
    server = await serve(nursery, pki.server_context())
    refused = await assert_refused(server, pki.client_context(identity))
    assert "unable to get local issuer certificate" in str(refused)


async def test_a_client_with_an_expired_certificate_is_refused(nursery: trio.Nursery, pki: Pki) -> None:
    """A certificate from the cluster's CA that expired yesterday is refused."""
    key_pem = _pki.private_key_pem(_pki.new_key())
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=2)
    identity = _pki.Identity(cert_pem=signed_by(pki.ca, key_pem, not_before=past, days=1), key_pem=key_pem)
    server = await serve(nursery, pki.server_context())
    refused = await assert_refused(server, pki.client_context(identity))
    assert "expired" in str(refused)


async def test_a_server_only_certificate_cannot_act_as_a_client(nursery: trio.Nursery, pki: Pki) -> None:
    """The role a certificate names is enforced: serverAuth alone does not authenticate a client."""
    identity = pki.ca.identity("worker", ips=[LOCAL], client=False, server=True)
    server = await serve(nursery, pki.server_context())
    refused = await assert_refused(server, pki.client_context(identity))
    assert "certificate" in str(refused)


async def test_plaintext_or_garbage_to_the_tls_port_is_refused(nursery: trio.Nursery, pki: Pki) -> None:
    """An HTTP request or random bytes fail the handshake; nothing reaches the application."""
    server = await serve(nursery, pki.server_context())
    for data in (b"GET / HTTP/1.1\r\nHost: bigactor\r\nUpgrade: websocket\r\n\r\n", os.urandom(600)):
        raw = await trio.open_tcp_stream(LOCAL, server.port)
        await raw.send_all(data)
        assert isinstance(await server.refused(), TLSError)
        with contextlib.suppress(trio.BrokenResourceError):
            while await raw.receive_some():  # an alert, perhaps; then the end
                pass
        await raw.aclose()


async def test_a_server_certificate_for_another_ip_is_refused_by_the_client(
    nursery: trio.Nursery, pki: Pki
) -> None:
    """The client checks that the server's certificate names the IP address it dialed."""
    elsewhere = pki.ca.identity(
        "worker", ips=["127.0.0.2"], dns=["worker.internal"], client=True, server=True
    )
    server = await serve(nursery, pki.server_context(elsewhere))
    with pytest.raises(TLSError, match="IP address mismatch"):
        await connect_tls(LOCAL, server.port, pki.client_context())
    assert not isinstance(await server.outcomes.receive(), TLSStream)


async def test_a_server_certified_by_another_ca_is_refused_by_the_client(
    nursery: trio.Nursery, pki: Pki
) -> None:
    """A server outside the cluster is refused even if its certificate names the right IP."""
    foreign = trustme.CA().issue_cert(LOCAL)
    identity = _pki.Identity(
        cert_pem=foreign.cert_chain_pems[0].bytes(), key_pem=foreign.private_key_pem.bytes()
    )
    server = await serve(nursery, pki.server_context(identity))
    with pytest.raises(TLSError, match="unable to get local issuer certificate"):
        await connect_tls(LOCAL, server.port, pki.client_context())


async def test_a_silent_peer_times_out_the_handshake(
    nursery: trio.Nursery, pki: Pki, autojump_clock: object
) -> None:
    """A peer that connects and sends nothing is dropped after HANDSHAKE_TIMEOUT seconds."""
    server = await serve(nursery, pki.server_context())
    raw = await trio.open_tcp_stream(LOCAL, server.port)
    start = trio.current_time()
    assert isinstance(await server.refused(), trio.TooSlowError)
    assert trio.current_time() - start == pytest.approx(HANDSHAKE_TIMEOUT)
    await raw.aclose()


# -- the transport ------------------------------------------------------------------------------


@pytest.fixture
async def echo_machine(nursery: trio.Nursery, pki: Pki) -> tuple[str, bytes]:
    """An ``echo`` actor served over TLS as a worker serves it; yields (address, key)."""
    key = os.urandom(32)
    [listener] = await trio.open_tcp_listeners(0, host=LOCAL)
    addr = f"tls:{LOCAL}:{listener.socket.getsockname()[1]}"
    table = _rpc.ActorTable(addr, nursery, _rpc.run_in_thread)
    table.add("echo", Echo())
    admission = _rpc.Admission(addr=addr, transport=TLSTransport(pki.worker, pki.ca.cert_pem))

    async def handle(stream: trio.SocketStream) -> None:
        await _rpc.serve_stream(stream, admission, key, table, _rpc.run_in_thread)

    await nursery.start(trio.serve_listeners, handle, [listener])
    return addr, key


class Echo:
    calls = 0

    async def echo(self, value: object) -> object:
        Echo.calls += 1
        return value


async def call(conn: _rpc.Connection, target: str, *args: object) -> object:
    kind, flags, data = await conn.call(_codec.encode_call(target, args, {}))
    assert kind == Kind.REPLY
    return _codec.decode(data, flags)


async def test_connect_calls_an_actor_over_mutual_tls(
    nursery: trio.Nursery, pki: Pki, echo_machine: tuple[str, bytes]
) -> None:
    """_rpc.connect through a TLSTransport: websocket and HMAC handshake on top, then calls."""
    addr, key = echo_machine
    transport = TLSTransport(pki.driver, pki.ca.cert_pem)
    conn, _ = await _rpc.connect(nursery, addr, key, transport=transport)
    assert await call(conn, "echo.echo", "over tls") == "over tls"
    await conn.aclose()


async def test_a_refused_client_never_reaches_the_actor(
    nursery: trio.Nursery, pki: Pki, echo_machine: tuple[str, bytes], caplog: pytest.LogCaptureFixture
) -> None:
    """A client certified by another CA fails to connect; the worker logs a rejection."""
    addr, key = echo_machine
    foreign = trustme.CA().issue_cert("driver.example")
    identity = _pki.Identity(
        cert_pem=foreign.cert_chain_pems[0].bytes(), key_pem=foreign.private_key_pem.bytes()
    )
    before = Echo.calls
    with pytest.raises(TransportError):
        await _rpc.connect(nursery, addr, key, transport=TLSTransport(identity, pki.ca.cert_pem))
    await trio.testing.wait_all_tasks_blocked()
    assert Echo.calls == before
    assert any("rejected a connection" in r.getMessage() for r in caplog.records)


async def test_renew_presents_the_new_certificate_to_later_handshakes(
    nursery: trio.Nursery, pki: Pki
) -> None:
    """After renew, new connections see the new certificate; an open one carries on."""
    transport = TLSTransport(pki.worker, pki.ca.cert_pem)
    [listener] = await trio.open_tcp_listeners(0, host=LOCAL)
    accepted: list[trio.abc.Stream] = []

    async def handle(stream: trio.SocketStream) -> None:
        accepted.append(await transport.accept(stream))

    await nursery.start(trio.serve_listeners, handle, [listener])
    addr = f"tls:{LOCAL}:{listener.socket.getsockname()[1]}"
    client = TLSTransport(pki.driver, pki.ca.cert_pem)
    first = await client.open(addr)
    assert isinstance(first, TLSStream)
    renewed = pki.ca.issue(
        _pki.public_key_pem(
            serialization.load_pem_private_key(pki.worker.key_pem, None)  # type: ignore[arg-type]
        ),
        ips=[LOCAL],
        client=True,
        server=True,
        days=60,
    )
    transport.renew(_pki.Identity(cert_pem=renewed, key_pem=pki.worker.key_pem))
    second = await client.open(addr)
    assert isinstance(second, TLSStream)
    assert first.peer_certificate == ssl.PEM_cert_to_DER_cert(pki.worker.cert_pem.decode())
    assert second.peer_certificate == ssl.PEM_cert_to_DER_cert(renewed.decode())
    await first.send_all(b"still open")
    await trio.testing.wait_all_tasks_blocked()
    assert await accepted[0].receive_some() == b"still open"
    for s in (first, second, *accepted):
        await s.aclose()


async def test_open_refuses_addresses_it_cannot_parse(pki: Pki) -> None:
    """A malformed tls: address is a TransportError naming it; other schemes go to Transport."""
    transport = TLSTransport(pki.driver, pki.ca.cert_pem)
    with pytest.raises(TransportError, match="tls:nowhere"):
        await transport.open("tls:nowhere")
    assert parse_address("tls:[::1]:7") == ("::1", 7)
    with pytest.raises(TransportError, match="unknown address scheme"):
        await transport.open("ftp:host:1")


CHILD = textwrap.dedent(
    """
    import json, sys, trio
    from bigactor import _pki, _rpc
    from bigactor._rpc._tls import TLSTransport

    class Echo:
        async def echo(self, value):
            return value

    async def main():
        setup = json.loads(sys.stdin.readline())
        identity = _pki.Identity(cert_pem=setup["cert"].encode(), key_pem=setup["key"].encode())
        [listener] = await trio.open_tcp_listeners(0, host="127.0.0.1")
        addr = "tls:127.0.0.1:%d" % listener.socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            table = _rpc.ActorTable(addr, nursery, _rpc.run_in_thread)
            table.add("echo", Echo())
            transport = TLSTransport(identity, setup["ca"].encode())
            admission = _rpc.Admission(addr=addr, transport=transport)
            key = bytes.fromhex(setup["key_hex"])

            async def handle(stream):
                await _rpc.serve_stream(stream, admission, key, table, _rpc.run_in_thread)

            nursery.start_soon(trio.serve_listeners, handle, [listener])
            print(addr, flush=True)
            await trio.to_thread.run_sync(sys.stdin.read)  # until the parent closes stdin
            nursery.cancel_scope.cancel()

    trio.run(main)
    """
)


@pytest.mark.slow
async def test_a_64_mib_argument_round_trips_to_another_process_over_tls(pki: Pki) -> None:
    """A worker process serving over TLS echoes a 64 MiB argument, intact."""
    import json

    key = os.urandom(32)
    setup = {
        "cert": pki.worker.cert_pem.decode(),
        "key": pki.worker.key_pem.decode(),
        "ca": pki.ca.cert_pem.decode(),
        "key_hex": key.hex(),
    }
    child = await trio.lowlevel.open_process(
        [sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO
    )
    assert child.stdin is not None
    assert child.stdout is not None
    try:
        await child.stdin.send_all(json.dumps(setup).encode() + b"\n")
        line = b""
        with trio.fail_after(30):
            while not line.endswith(b"\n"):
                line += await child.stdout.receive_some(1) or b"?\n"
        addr = line.decode().strip()
        assert addr.startswith("tls:"), addr
        payload = bytes(range(256)) * (256 << 10)
        async with trio.open_nursery() as nursery:
            conn, _ = await _rpc.connect(
                nursery, addr, key, transport=TLSTransport(pki.driver, pki.ca.cert_pem)
            )
            with trio.fail_after(60):
                back = await call(conn, "echo.echo", payload)
            assert back == payload
            await conn.aclose()
    finally:
        await child.stdin.aclose()
        with trio.move_on_after(30):
            await child.wait()
        if child.returncode is None:
            child.kill()
            await child.wait()


def test_connecting_raw_sockets_keeps_nodelay() -> None:
    """Detaching trio's socket keeps its options: TCP_NODELAY stays set (small calls not delayed)."""
    with socket.create_server((LOCAL, 0)) as listener:
        port = listener.getsockname()[1]

        async def main() -> int:
            stream = await trio.open_tcp_stream(LOCAL, port)
            fd = stream.socket.detach()
            with socket.socket(fileno=fd) as sock:
                return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)

        assert trio.run(main) != 0


def _rto_max_supported() -> bool:
    with socket.socket() as probe:
        try:
            probe.setsockopt(socket.IPPROTO_TCP, _tls._RTO_MAX_OPTION, 1000)
        except OSError:
            return False
    return True


@pytest.mark.skipif(not _rto_max_supported(), reason="this kernel has no TCP_RTO_MAX_MS (Linux < 6.15)")
async def test_tls_sockets_resend_at_least_every_second() -> None:
    """The socket under a TLS stream has its retransmission backoff capped (TCP_RTO_MAX_MS), so
    a flapping link cannot back a connection off past the keepalive timeout."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    client = trio.socket.socket()
    await client.connect(listener.getsockname())
    server, _ = listener.accept()
    try:
        for raw in (client, trio.socket.from_stdlib_socket(server)):
            sock = _tls._detach(trio.SocketStream(raw))
            assert sock.getsockopt(socket.IPPROTO_TCP, _tls._RTO_MAX_OPTION) == _tls.RTO_MAX_MS
            sock.close()
    finally:
        listener.close()
