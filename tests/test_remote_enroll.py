"""Enrollment and bundle shipping: the real boot agent on a thread, the driver in trio, real
TLS on loopback. Who may enroll a host, and what a refused peer gets to make the agent parse."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import ssl
import struct
import threading
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from test_remote_support import AgentThread, free_port

from bigactor import MachineStartError
from bigactor._contract import WorkerConfig
from bigactor._pki import ClusterCA, Identity, load_identity
from bigactor._rpc._tls import TLSStream, connect_tls
from bigactor.systems._remote import (
    Bundle,
    EnrollPolicy,
    _agent,
    build_bundle,
    enroll_and_ship,
    enrollment_context,
    new_token,
)

POLICY = EnrollPolicy(dial=20.0, step=10.0)


@pytest.fixture(scope="module")
def ca() -> ClusterCA:
    return ClusterCA.create("remote enrollment tests")


@pytest.fixture(scope="module")
def driver(ca: ClusterCA) -> Identity:
    return ca.identity("driver", client=True, server=False)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    root = tmp_path_factory.mktemp("program")
    (root / "program_module.py").write_text("VALUE = 1\n")
    return build_bundle(sys_path=[str(root)], modules={})


@pytest.fixture
def parsed(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every message body the agent parses, in order (the driver, on the main thread, parses
    with the same function)."""
    seen: list[bytes] = []
    real = _agent.parse_message

    def spy(body: bytes) -> dict[str, Any]:
        if threading.current_thread() is not threading.main_thread():
            seen.append(body)
        return real(body)

    monkeypatch.setattr(_agent, "parse_message", spy)
    return seen


def config_for(addr: str, bundle: Bundle) -> WorkerConfig:
    return WorkerConfig(key=os.urandom(32), addr=addr, sys_path=bundle.sys_path, argv=("prog", "-x"))


async def test_enrollment_certifies_the_agents_own_key_for_the_address_dialed(
    ca: ClusterCA, driver: Identity, bundle: Bundle, tmp_path: Path
) -> None:
    """The right token enrolls: the CA signs the key the agent made, naming the IP dialed."""
    token = new_token()
    agent = AgentThread(ca, token, tmp_path).start()
    config = config_for(agent.addr, bundle)
    worker = await enroll_and_ship(agent.addr, ca, token, bundle, config, identity=driver, policy=POLICY)
    await trio.to_thread.run_sync(agent.join)
    assert agent.failure is None
    assert agent.handoff is not None
    cert = x509.load_pem_x509_certificate(worker.cert_pem)
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert agent.handoff["cert_pem"].encode() == worker.cert_pem
    # The key certified is the one the agent made (its private half never left it).
    key = serialization.load_pem_private_key(agent.handoff["key_pem"].encode(), None)
    assert cert.public_key() == key.public_key()
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.cert_pem))
    assert WorkerConfig.from_json(agent.handoff["config"]) == config
    assert agent.handoff["sys_path"] == list(bundle.sys_path)
    assert (Path(agent.handoff["bundle"]) / "1" / "program_module.py").read_text() == "VALUE = 1\n"
    assert not worker.bundle_cached
    assert "stage enrollment done" in worker.boot_log
    assert "bundle" in worker.boot_log


async def test_wrong_token_is_refused_and_spends_the_agents_token(
    ca: ClusterCA, driver: Identity, bundle: Bundle, tmp_path: Path
) -> None:
    """A proof made with another token fails; the agent's token is spent, so its boot fails."""
    agent = AgentThread(ca, new_token(), tmp_path).start()
    with pytest.raises(MachineStartError, match="stage enrollment: the machine did not prove"):
        await enroll_and_ship(
            agent.addr,
            ca,
            new_token(),
            bundle,
            config_for(agent.addr, bundle),
            identity=driver,
            policy=POLICY,
        )
    await trio.to_thread.run_sync(agent.join)
    assert agent.handoff is None
    assert agent.failure is not None
    assert agent.failure.stage == "enrollment"


async def _relay(
    listener: trio.SocketListener, agent_addr: tuple[str, int], inside: Identity, outside: Identity
) -> None:
    """A TLS-terminating relay: shows the driver its own certificate, the agent its own CA-signed
    client certificate (say, another worker's), and copies the bytes between them."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.minimum_version = ssl.TLSVersion.TLSv1_3
    load_identity(server, outside)
    async with listener:
        raw = await listener.accept()
    front = trio.SSLStream(raw, server, server_side=True)
    await front.do_handshake()
    back = await connect_tls(*agent_addr, enrollment_context(inside))

    async def pump(a: trio.abc.Stream, b: trio.abc.Stream) -> None:
        try:
            while data := await a.receive_some(65536):
                await b.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(b)

    async with trio.open_nursery() as n:
        n.start_soon(pump, front, back)
        n.start_soon(pump, back, front)


async def test_a_relay_that_knows_no_token_cannot_pass_the_agents_proof_along(
    ca: ClusterCA, driver: Identity, bundle: Bundle, tmp_path: Path, nursery: trio.Nursery
) -> None:
    """A relay with a CA-signed client certificate between driver and agent: the proof it
    passes along is bound to the relay's channel, and the driver refuses it."""
    token = new_token()
    agent = AgentThread(ca, token, tmp_path).start()
    other_worker = ca.identity("another worker", ips=["127.0.0.1"], client=True, server=True)
    relay_self = ClusterCA.create("relay").identity("relay", ips=["127.0.0.1"], client=False, server=True)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    nursery.start_soon(_relay, listeners[0], ("127.0.0.1", agent.port), other_worker, relay_self)
    addr = f"tls:127.0.0.1:{port}"
    with pytest.raises(MachineStartError, match="a relay between driver and machine"):
        await enroll_and_ship(
            addr, ca, token, bundle, config_for(addr, bundle), identity=driver, policy=POLICY
        )
    await trio.to_thread.run_sync(agent.join)
    assert agent.handoff is None  # never enrolled, never got a bundle or configuration


async def _raw_attempts(port: int, identities: list[Identity | None]) -> list[str]:
    """Connect as each identity (None: no certificate) plus plaintext; what each one saw."""
    seen = []
    for identity in identities:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        if identity is not None:
            load_identity(context, identity)
        stream: TLSStream = await connect_tls("127.0.0.1", port, context)
        try:
            # A well-formed enroll message: were it parsed, the agent would answer a proof.
            await stream.send_all(_agent.pack_message({"type": "enroll", "nonce": "00" * 32}))
            seen.append(repr(await stream.receive_some()))
        except trio.BrokenResourceError as exc:
            seen.append(f"refused: {exc}")
        finally:
            await stream.aclose()
    plain = await trio.open_tcp_stream("127.0.0.1", port)
    body = b'{"type":"enroll","nonce":"' + b"00" * 32 + b'"}'
    await plain.send_all(struct.pack(">I", len(body)) + body)
    try:
        seen.append(f"closed: {await plain.receive_some()!r}")
    except trio.BrokenResourceError:
        seen.append("closed: reset")
    await plain.aclose()
    return seen


async def test_clients_without_a_ca_certificate_are_refused_before_anything_is_parsed(
    ca: ClusterCA, driver: Identity, bundle: Bundle, tmp_path: Path, parsed: list[bytes]
) -> None:
    """No certificate, one from another CA, or no TLS at all: the TLS library refuses them and
    the agent parses none of their bytes; the driver enrolls afterwards as usual."""
    token = new_token()
    agent = AgentThread(ca, token, tmp_path).start()
    port = agent.port
    foreign = ClusterCA.create("another cluster").identity("intruder", client=True, server=False)
    with trio.fail_after(30):
        while True:
            try:
                seen = await _raw_attempts(port, [None, foreign])
                break
            except OSError:
                await trio.sleep(0.05)  # not listening yet
    assert all(s.startswith("refused") for s in seen[:2]), seen
    assert seen[2] in ("closed: b''", "closed: reset"), seen
    assert parsed == []
    worker = await enroll_and_ship(
        agent.addr, ca, token, bundle, config_for(agent.addr, bundle), identity=driver, policy=POLICY
    )
    assert "TLS handshake failed" in worker.boot_log
    # What the agent parsed is the enrolled driver's session, and only that.
    assert [b[:16] for b in parsed] == [
        b'{"type":"enroll"',
        b'{"type":"certifi',
        b'{"type":"bundle"',
        b'{"type":"config"',
    ]


async def test_driver_with_a_foreign_certificate_fails_naming_the_stage(
    ca: ClusterCA, bundle: Bundle, tmp_path: Path
) -> None:
    """A driver whose client certificate is not from the agent's CA learns it at once."""
    token = new_token()
    agent = AgentThread(ca, token, tmp_path, enroll_timeout=2.0).start()
    other = ClusterCA.create("other")
    identity = other.identity("driver", client=True, server=False)
    with pytest.raises(
        MachineStartError, match=f"machine {agent.addr}: remote boot failed at stage enrollment"
    ):
        await enroll_and_ship(
            agent.addr, other, token, bundle, config_for(agent.addr, bundle), identity=identity, policy=POLICY
        )
    await trio.to_thread.run_sync(agent.join)
    assert agent.handoff is None
    assert str(agent.failure) == "enrollment: no driver enrolled this machine within 2 s"


async def test_a_second_enrollment_is_refused_once_the_token_is_spent(
    ca: ClusterCA, driver: Identity, bundle: Bundle, tmp_path: Path
) -> None:
    """One enrollment per boot: while a session holds the spent token, another driver is
    refused, and the first session completes."""
    token = new_token()
    agent = AgentThread(ca, token, tmp_path).start()
    with trio.fail_after(30):
        while True:
            try:
                first = await connect_tls("127.0.0.1", agent.port, enrollment_context(driver))
                break
            except OSError:
                await trio.sleep(0.05)
    nonce = os.urandom(32)
    await first.send_all(_agent.pack_message({"type": "enroll", "nonce": nonce.hex()}))
    reply = await first.receive_some()
    assert b'"proof"' in reply  # the token is spent now
    with pytest.raises(MachineStartError, match="already enrolled: its one-time token is spent"):
        await enroll_and_ship(
            agent.addr, ca, token, bundle, config_for(agent.addr, bundle), identity=driver, policy=POLICY
        )
    await first.aclose()
    await trio.to_thread.run_sync(agent.join)
    assert agent.failure is not None
    assert agent.failure.stage == "enrollment"


async def test_a_second_machine_on_the_host_gets_the_bundle_from_the_cache(
    ca: ClusterCA, driver: Identity, bundle: Bundle, tmp_path: Path
) -> None:
    """Two boots sharing a cache: the first receives the bundle, the second nothing."""
    cached = []
    for _ in range(2):
        token = new_token()
        agent = AgentThread(ca, token, tmp_path).start()
        worker = await enroll_and_ship(
            agent.addr, ca, token, bundle, config_for(agent.addr, bundle), identity=driver, policy=POLICY
        )
        await trio.to_thread.run_sync(agent.join)
        cached.append(worker.bundle_cached)
        assert agent.handoff is not None
        assert agent.handoff["bundle"] == str(tmp_path / "bundles" / bundle.digest)
    assert cached == [False, True]
    assert "is cached" in (tmp_path / "boot.log").read_text()


async def test_a_bundle_that_does_not_match_its_digest_fails_the_bundle_stage(
    ca: ClusterCA, driver: Identity, bundle: Bundle, tmp_path: Path
) -> None:
    """The agent checks what it received against the digest offered."""
    token = new_token()
    agent = AgentThread(ca, token, tmp_path).start()
    bad = Bundle(
        data=bundle.data + b"x",
        digest=bundle.digest,
        sys_path=bundle.sys_path,
        sources=bundle.sources,
        files=bundle.files,
        imports=bundle.imports,
    )
    with pytest.raises(MachineStartError, match="stage bundle: the machine reported: the bundle's digest is"):
        await enroll_and_ship(
            agent.addr, ca, token, bad, config_for(agent.addr, bad), identity=driver, policy=POLICY
        )
    await trio.to_thread.run_sync(agent.join)
    assert agent.failure is not None
    assert agent.failure.stage == "bundle"
    assert not (tmp_path / "bundles" / bundle.digest).exists()
    assert [p.name for p in (tmp_path / "bundles").iterdir()] == []


async def test_the_driver_dials_until_the_agent_listens(
    ca: ClusterCA, driver: Identity, bundle: Bundle, tmp_path: Path, nursery: trio.Nursery
) -> None:
    """An instance runs long before its agent listens: the driver retries the dial."""
    token = new_token()
    agent = AgentThread(ca, token, tmp_path)
    enrolled = trio.Event()

    async def enroll() -> None:
        config = config_for(agent.addr, bundle)
        await enroll_and_ship(agent.addr, ca, token, bundle, config, identity=driver, policy=POLICY)
        enrolled.set()

    nursery.start_soon(enroll)
    await trio.sleep(1.2)  # real time (a real socket): the driver's first dial was refused
    assert not enrolled.is_set()
    await trio.to_thread.run_sync(agent.start)
    with trio.fail_after(20):
        await enrolled.wait()
    await trio.to_thread.run_sync(agent.join)
    assert agent.handoff is not None


async def test_no_agent_within_the_dial_deadline_names_the_stage(
    ca: ClusterCA, driver: Identity, bundle: Bundle
) -> None:
    """Nobody listening: after ``policy.dial`` seconds the error names the stage and the address."""
    addr = f"tls:127.0.0.1:{free_port()}"
    with pytest.raises(
        MachineStartError, match=r"stage enrollment: no boot agent answered within 1.5 s \(.*failed"
    ):
        await enroll_and_ship(
            addr,
            ca,
            new_token(),
            bundle,
            config_for(addr, bundle),
            identity=driver,
            policy=EnrollPolicy(dial=1.5),
        )


async def test_an_agent_nobody_enrolls_fails_its_boot(ca: ClusterCA, tmp_path: Path) -> None:
    """An orphan host (its driver died mid-launch) ends its boot after ``enroll_timeout``."""
    agent = AgentThread(ca, new_token(), tmp_path, enroll_timeout=0.5).start()
    await trio.to_thread.run_sync(agent.join)
    assert agent.failure is not None
    assert str(agent.failure) == "enrollment: no driver enrolled this machine within 0.5 s"


def test_the_proof_binds_the_token_channel_client_and_nonce() -> None:
    """Each input changes the proof; sizes are fixed so the concatenation is unambiguous."""
    parts = [os.urandom(32) for _ in range(4)]
    base = _agent.enrollment_proof(*parts)
    for i in range(4):
        changed = list(parts)
        changed[i] = os.urandom(32)
        assert _agent.enrollment_proof(*changed) != base
    with pytest.raises(ValueError, match="32 bytes"):
        _agent.enrollment_proof(parts[0], parts[1][:31], parts[2], parts[3] + b"x")
    assert _agent.server_end_point(b"der") == hashlib.sha256(b"der").digest()
