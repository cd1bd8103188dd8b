"""The driver renews its own and every worker's certificate before it expires, so a cluster
keeps making new connections (redials, worker-to-worker dials) for as long as it runs; without
renewal, the same cluster's new connections fail once its first certificates expire, naming the
expiry. A worker takes a pushed certificate only from its cluster's CA, for its own key and
address. Real worker processes through the remote handoff, mutual TLS on loopback, in real time
with leaves of a few seconds."""

from __future__ import annotations

import datetime
import logging
import socket
from pathlib import Path

import pytest
import trio
from channel_support import RemoteLikeSystem
from cryptography import x509
from cryptography.hazmat.primitives import serialization

import bigactor
from bigactor import _pki
from bigactor._rpc._tls import TLSStream, TLSTransport
from bigactor._system import Instance
from bigactor.systems._remote._renew import Renewal

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

#: a leaf's life in these tests: renewed ~3.8 s after it is issued (two thirds of its life
#: counted from a NotBefore 0.6 s back), which leaves ~2 s for the push
LEAF_SECONDS = 6.0
LEAF_DAYS = LEAF_SECONDS / 86400


class Peer:
    """An actor that answers, and calls another through a handle it is given."""

    async def hello(self) -> str:
        return "hello"

    async def greet(self, other: bigactor.ActorHandle) -> str:
        return f"{await other.hello()} from {bigactor.machine_of(other).addr}"


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


async def sleep_past(when: datetime.datetime) -> None:
    """Sleep until the wall clock is half a second past ``when``."""
    await trio.sleep(max(0.0, (when - now()).total_seconds() + 0.5))


async def redial(machine: bigactor.Machine) -> None:
    """Break the driver's connection to ``machine`` at the socket and wait until the driver
    notices, so that its next call dials a new one."""
    conn = machine._conn
    assert conn is not None
    stream = conn._ws._stream
    assert isinstance(stream, TLSStream)
    stream._sock.shutdown(socket.SHUT_RDWR)
    with trio.fail_after(5):
        while not conn.broken:  # noqa: ASYNC110 - the driver notices the cut on its own
            await trio.sleep(0.01)


async def served_certificate(transport: TLSTransport, addr: str) -> bytes:
    """The certificate (PEM) the machine at ``addr`` presents to a new connection now."""
    stream = await transport.open(addr)
    assert isinstance(stream, TLSStream)
    try:
        assert stream.peer_certificate is not None
        return x509.load_der_x509_certificate(stream.peer_certificate).public_bytes(
            serialization.Encoding.PEM
        )
    finally:
        await stream.aclose()


async def test_a_cluster_keeps_making_new_connections_past_its_first_certificates_expiry(
    tmp_path: Path,
) -> None:
    """Two leaf lives after the cluster started, new machines still join, workers still dial
    each other both ways through handles passed between them, and the driver still redials a
    worker: every certificate was renewed, twice."""
    system = RemoteLikeSystem(directory=tmp_path, cert_days=LEAF_DAYS)
    async with bigactor.open_cluster(system) as cluster:
        a = await cluster.spawn(Peer)
        b = await cluster.spawn(Peer)
        ma, mb = bigactor.machine_of(a), bigactor.machine_of(b)
        seen: dict[str, set[bytes]] = {"driver": set(), ma.addr: set(), mb.addr: set()}

        async def current() -> datetime.datetime:
            """When the latest of the certificates presented now expires (noting them)."""
            seen["driver"].add(system.transport.identity.cert_pem)
            for m in (ma, mb):
                seen[m.addr].add(await served_certificate(system.transport, m.addr))
            return max(_pki.expires(max(pems, key=_pki.expires)) for pems in seen.values())

        assert await a.greet(b) == f"hello from {mb.addr}"  # a dials b while the first leaves hold
        for _ in range(2):
            await sleep_past(await current())
            c = await cluster.spawn(Peer)  # the driver's renewed client certificate
            mc = bigactor.machine_of(c)
            assert await a.greet(c) == f"hello from {mc.addr}"  # a's renewed client certificate
            assert await c.greet(a) == f"hello from {ma.addr}"  # a's renewed server certificate
            assert await c.greet(b) == f"hello from {mb.addr}"
            await redial(ma)
            assert await a.hello() == "hello"  # the driver redialed a
            assert ma._conn is not None
            assert not ma._conn.broken
        await current()
        # Each round outlived every certificate presented when it began: the first ones and
        # their renewals, so each of the three was renewed twice at least.
        assert all(len(pems) >= 3 for pems in seen.values()), {k: len(v) for k, v in seen.items()}


async def test_without_renewal_new_connections_fail_naming_the_expired_certificate(tmp_path: Path) -> None:
    """The same cluster without renewal: once the first certificates expire, a worker dialing
    another, the driver redialing a worker and a new machine all fail with an
    expired-certificate error; connections opened before carry on."""
    system = RemoteLikeSystem(directory=tmp_path, cert_days=LEAF_DAYS, renew=False)
    async with bigactor.open_cluster(system) as cluster:
        a = await cluster.spawn(Peer)
        b = await cluster.spawn(Peer)
        served = [await served_certificate(system.transport, bigactor.machine_of(m).addr) for m in (a, b)]
        await sleep_past(max(_pki.expires(pem) for pem in [system.transport.identity.cert_pem, *served]))
        assert await a.hello() == "hello"  # the connection opened before expiry carries on
        with pytest.raises(bigactor.BigActorError, match=r"certificate has expired \(the server's"):
            await a.greet(b)
        await redial(bigactor.machine_of(a))
        with pytest.raises(bigactor.BigActorError, match=r"certificate has expired \(the server's"):
            await a.hello()
        # A new machine's certificate is fresh, but it refuses the driver's expired one. (The
        # driver names the expiry only when the refusing side's TLS alert arrives before its
        # close does, which TCP does not promise; the refusing side always logs it.)
        with pytest.raises(bigactor.MachineError, match="cannot reach the worker"):
            await cluster.spawn(Peer)


async def test_a_worker_refuses_a_certificate_from_another_ca_for_another_key_or_address(
    tmp_path: Path,
) -> None:
    """Supervisor.renew_certificate refuses, changing nothing, a certificate from a foreign
    CA, for another key or naming another address; it takes the CA's renewal of its own."""
    system = RemoteLikeSystem(directory=tmp_path, renew=False)
    async with bigactor.open_cluster(system) as cluster:
        machine = bigactor.machine_of(await cluster.spawn(Peer))
        current = await served_certificate(system.transport, machine.addr)
        own_key = x509.load_pem_x509_certificate(current).public_key()
        own_pem = own_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        foreign = _pki.ClusterCA.create("another cluster").issue(
            own_pem, ips=["127.0.0.1"], client=True, server=True
        )
        other_key = system.ca.issue(
            _pki.public_key_pem(_pki.new_key()), ips=["127.0.0.1"], client=True, server=True
        )
        other_address = system.ca.issue(own_pem, ips=["127.0.0.2"], client=True, server=True)
        for bad, why in [
            (foreign, "not signed by this cluster's CA"),
            (other_key, "for another key"),
            (other_address, "does not name this machine's address 127.0.0.1"),
            (b"not a certificate", "cannot be read"),
        ]:
            with pytest.raises(ValueError, match=f"refused the certificate: .*{why}"):
                await machine.call("Supervisor.renew_certificate", bad)
            assert await served_certificate(system.transport, machine.addr) == current
        renewed = system.ca.reissue(current, days=2)
        await machine.call("Supervisor.renew_certificate", renewed)
        assert await served_certificate(system.transport, machine.addr) == renewed


class Unreachable(Instance):
    """A worker nobody answers for (its port is closed)."""

    def __init__(self, addr: str) -> None:
        self.addr = addr


async def test_a_failed_push_is_logged_and_retried_until_the_certificate_expires(
    nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker the driver cannot reach: each failed push is a warning and is retried with
    backoff; when its certificate expires anyway, an error says so and names it."""
    caplog.set_level(logging.INFO, logger="bigactor.remote")
    ca = _pki.ClusterCA.create("test cluster")
    transport = TLSTransport(ca.identity(client=True, server=False), ca.cert_pem)
    renewal = Renewal(ca, transport, b"k" * 32, days=LEAF_DAYS)
    await nursery.start(renewal.run)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    addr = f"tls:127.0.0.1:{closed.getsockname()[1]}"
    closed.close()
    cert = ca.issue(
        _pki.public_key_pem(_pki.new_key()), ips=["127.0.0.1"], client=True, server=True, days=LEAF_DAYS
    )
    renewal.add(Unreachable(addr), cert)
    with trio.fail_after(LEAF_SECONDS + 5):
        while renewal.certificate(addr) is not None:  # noqa: ASYNC110 - nothing to wait on
            await trio.sleep(0.1)
    assert now() >= _pki.expires(cert)
    warnings = [r for r in caplog.records if "could not renew" in r.getMessage()]
    assert len(warnings) >= 2
    assert all(addr in r.getMessage() and r.levelno == logging.WARNING for r in warnings)
    assert "attempt 1;" in warnings[0].getMessage()
    assert "retrying in 1.0 s" in warnings[0].getMessage()
    assert "retrying in 1.5 s" in warnings[1].getMessage()
    [expired] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert addr in expired.getMessage()
    assert "expired at" in expired.getMessage()
