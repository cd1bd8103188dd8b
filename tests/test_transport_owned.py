"""Transports: owned by a system, used by its driver and its workers, bounded by admission."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile

import attrs
import pytest
import trio
import trio.testing
from local_support import Counter, Echo, Relay

import bigactor
from bigactor import ProtocolError, Services, TransportError, _codec, _rpc
from bigactor._contract import WorkerConfig
from bigactor._rpc._transport import HANDSHAKE_TIMEOUT, MAX_HANDSHAKES
from bigactor.supervisor import Worker, serve_worker
from bigactor.testing import TestSystem, TestTransport

PREAMBLE = b"transport!"


class Recording(TestTransport):
    """The test transport, counting what goes through it."""

    def __init__(self) -> None:
        super().__init__()
        self.opened: list[str] = []
        self.accepted = 0

    async def open(self, addr: str) -> trio.abc.Stream:
        self.opened.append(addr)
        return await super().open(addr)

    async def accept(self, stream: trio.abc.Stream) -> trio.abc.Stream:
        self.accepted += 1
        return await super().accept(stream)


class Preamble(Recording):
    """A transport with a handshake of its own (as TLS has): the client sends PREAMBLE and
    waits for ``ok``; the server refuses anything else."""

    async def open(self, addr: str) -> trio.abc.Stream:
        stream = await super().open(addr)
        await stream.send_all(PREAMBLE)
        assert await receive_exactly(stream, 2) == b"ok"
        return stream

    async def accept(self, stream: trio.abc.Stream) -> trio.abc.Stream:
        stream = await super().accept(stream)
        if await receive_exactly(stream, len(PREAMBLE)) != PREAMBLE:
            raise ProtocolError("bad transport preamble")
        await stream.send_all(b"ok")
        return stream


async def receive_exactly(stream: trio.abc.Stream, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = await stream.receive_some(n - len(data))
        if not chunk:
            raise trio.BrokenResourceError("the peer went away")
        data += chunk
    return data


@attrs.define(kw_only=True)
class RecordingSystem(TestSystem):
    transport: Recording = attrs.field(factory=Recording, init=False)


@attrs.define(kw_only=True)
class PreambleSystem(TestSystem):
    transport: Preamble = attrs.field(factory=Preamble, init=False)


async def raw_stream(system: TestSystem, addr: str) -> trio.abc.Stream:
    """A stream to ``addr`` that skips the system's transport handshake (a stranger's)."""
    return await TestTransport.open(system.transport, addr)


async def test_two_test_systems_do_not_reach_each_others_machines() -> None:
    """Each test system owns its transport: one cluster cannot dial the other's machines, and
    the plain transport knows no ``test:`` addresses at all."""
    async with bigactor.open_cluster(TestSystem()) as one, bigactor.open_cluster(TestSystem()) as two:
        [m] = await two.start(1, Services(echo=Echo()))
        assert await m.call("echo.echo", 1) == 1
        with pytest.raises(bigactor.MachineLost, match="no test machine"):
            await one.dial(m.addr)
        with pytest.raises(TransportError, match=r"unknown address scheme 'test' for Transport \(it knows"):
            await _rpc.Transport().open(m.addr)


async def test_driver_and_workers_dial_through_the_systems_transport() -> None:
    """The driver reaches its machines through its system's transport, and so does a worker
    calling another machine through a handle it was given; each worker accepts through it."""
    system = RecordingSystem()
    async with bigactor.open_cluster(system) as cluster:
        counter = await cluster.spawn(Counter, 10)
        relay = await cluster.spawn(Relay)
        c, r = bigactor.machine_of(counter).addr, bigactor.machine_of(relay).addr
        assert system.transport.opened == [c, r]
        assert (await relay.add_via(counter, 5))[0] == 15
        assert system.transport.opened == [c, r, c]  # the relay's machine dialed the counter's
        assert system.transport.accepted == 3


async def test_a_transport_handshake_wraps_every_connection(caplog: pytest.LogCaptureFixture) -> None:
    """A transport with its own handshake carries the driver's and the workers' calls, and a
    peer that fails it is refused (a logged rejection) before the websocket handshake."""
    system = PreambleSystem()
    async with bigactor.open_cluster(system) as cluster:
        counter = await cluster.spawn(Counter, 1)
        relay = await cluster.spawn(Relay)
        assert (await relay.add_via(counter, 2))[0] == 3
        stranger = await raw_stream(system, bigactor.machine_of(counter).addr)
        await stranger.send_all(b"GET / HTTP")  # as long as the preamble, and not it
        assert await stranger.receive_some() == b""
        await stranger.aclose()
        assert any("rejected a connection: bad transport preamble" in r.getMessage() for r in caplog.records)
        assert await counter.add(1) == 4


async def test_a_silent_peer_in_the_transport_handshake_is_closed_after_the_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The transport's accept runs inside the admission's handshake timeout."""
    system = PreambleSystem()
    async with bigactor.open_cluster(system) as cluster:
        [m] = await cluster.start(1, Services(echo=Echo()))
        start = trio.current_time()
        silent = await raw_stream(system, m.addr)
        assert await silent.receive_some() == b""
        assert trio.current_time() - start == HANDSHAKE_TIMEOUT
        await silent.aclose()


async def test_peers_stuck_in_the_transport_handshake_count_against_the_limit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Beyond MAX_HANDSHAKES peers in the transport's accept, each new one closes the oldest at
    once, and a client that completes both handshakes still gets through."""
    system = PreambleSystem()
    async with bigactor.open_cluster(system) as cluster:
        [m] = await cluster.start(1, Services(echo=Echo()))
        start = trio.current_time()
        idle = [await raw_stream(system, m.addr) for _ in range(MAX_HANDSHAKES + 2)]
        for stream in idle[:2]:
            assert await stream.receive_some() == b""
        assert trio.current_time() == start
        assert await m.call("echo.echo", 7) == 7
        for stream in idle:
            await stream.aclose()


class Unreachable(_rpc.Transport):
    """A transport whose connections never complete (a TLS peer that never answers, say)."""

    async def open(self, addr: str) -> trio.abc.Stream:
        await trio.sleep_forever()
        raise AssertionError("unreachable")


async def test_opening_a_connection_is_bounded_by_the_handshake_timeout(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """A transport's open that never completes fails the connection after HANDSHAKE_TIMEOUT."""
    start = trio.current_time()
    with pytest.raises(TransportError, match=f"could not connect within {HANDSHAKE_TIMEOUT} s"):
        await _rpc.connect(nursery, "tcp:192.0.2.1:9", b"k" * 32, transport=Unreachable())
    assert trio.current_time() - start == HANDSHAKE_TIMEOUT


def test_host_port_reads_tcp_style_addresses() -> None:
    """host_port splits scheme:host:port (IPv6 in brackets) and refuses an address without a port."""
    assert _rpc.host_port("tcp:10.0.0.7:9000") == ("10.0.0.7", 9000)
    assert _rpc.host_port("tls:[::1]:443") == ("::1", 443)
    with pytest.raises(ValueError, match="is not scheme:host:port"):
        _rpc.host_port("tcp:nohost")


async def test_the_plain_transport_says_why_a_tcp_address_is_bad() -> None:
    """A tcp: address without a port is a TransportError naming it."""
    with pytest.raises(TransportError, match="'tcp:nohost' is not scheme:host:port"):
        await _rpc.Transport().open("tcp:nohost")


async def test_serve_worker_serves_a_machine_on_any_listener() -> None:
    """serve_worker on a Unix socket of the test's own: a cluster dials it and calls its
    supervisor; a clean shutdown goes out through ``exit``, and cancelling it stops serving."""
    directory = tempfile.mkdtemp(prefix="bigactor-test-")
    path = os.path.join(directory, "w.sock")
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    exits: list[int] = []
    exited = trio.Event()

    def exit(code: int) -> None:
        exits.append(code)
        exited.set()

    try:
        await sock.bind(path)
        sock.listen()
        config = WorkerConfig(key=b"\x01" * 32, addr=f"unix:{path}")
        async with trio.open_nursery() as worker_nursery:
            worker = await worker_nursery.start(
                lambda task_status: serve_worker(
                    config, trio.SocketListener(sock), transport=_rpc.Transport(), exit=exit,
                    announce=lambda line: None, task_status=task_status,
                )
            )  # fmt: skip
            assert isinstance(worker, Worker)
            async with trio.open_nursery() as calls:
                conn, _ = await _rpc.connect(calls, config.addr, config.key, transport=_rpc.Transport())
                _, flags, data = await conn.call(_codec.encode_call("Supervisor.getpid", (), {}))
                assert _codec.decode(data, flags) == os.getpid()
                await conn.call(_codec.encode_call("Supervisor.shutdown", (0.0,), {}))
                await conn.aclose()
            with trio.fail_after(5):
                await exited.wait()
            assert exits == [0]
            worker_nursery.cancel_scope.cancel()
    finally:
        sock.close()
        shutil.rmtree(directory, ignore_errors=True)


def test_a_dialed_machine_is_named_by_the_host_of_its_address() -> None:
    """Any ``scheme:host:port`` address names its host (TLS too); local schemes are this host."""
    from bigactor._machine import _hostname

    assert _hostname("tls:10.1.2.3:7000") == "10.1.2.3"
    assert _hostname("tcp:[fe80::1]:80") == "fe80::1"
    assert _hostname("unix:/tmp/m1") == _hostname("test:1-1") == "localhost"
    assert _hostname("odd:thing") == "unknown"
