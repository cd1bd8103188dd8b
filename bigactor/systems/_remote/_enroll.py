"""The driver's side of a remote boot: enroll the agent, ship the bundle, hand over.

:func:`enroll_and_ship` dials the boot agent (``_agent``) of a freshly started host, over TLS
with the driver's client certificate from the cluster CA, and on that one channel:

1. **enrollment**: sends a fresh nonce; checks the agent's proof, an HMAC of the launch's
   one-time token over this channel's ``tls-server-end-point`` binding, the driver's own client
   certificate and the nonce (see ``_agent.enrollment_proof``); then has the cluster CA certify
   the key of the certificate it saw, for the address it dialed, and sends that certificate;
2. **bundle**: offers the bundle's digest; sends the bundle only if the host lacks it;
3. **config**: sends the worker's configuration and receives the boot log so far.

The agent then becomes the worker on the same socket, and the driver reaches it like any machine
over mutual TLS (``_rpc._tls.TLSTransport``), both sides with CA-signed certificates.

Why the proof binds the channel: the agent's certificate is self-signed (the CA signs nothing
before enrollment), so TLS alone tells the driver nothing about who answers. The token says
"one of this launch's hosts"; the binding says "at the end of *this* connection": a relay that
terminates TLS shows the driver its own certificate, and the proof it can pass along was made
over another. Taking the worker's key from the certificate the driver saw means the CA certifies
exactly the key that proved itself.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import ssl
import struct
from typing import Any

import attrs
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..._contract import WorkerConfig
from ..._errors import MachineStartError
from ..._machine import backoff
from ..._pki import LEAF_DAYS, ClusterCA, Identity, load_identity
from ..._rpc._tls import TLSError, TLSStream, connect_tls, parse_address
from . import _agent
from ._bundle import Bundle

CHUNK = 256 * 1024


@attrs.frozen
class EnrollPolicy:
    """How long each step of a remote boot may take.

    Attributes:
        dial: seconds to keep dialing the agent (an instance is ``running`` long before its
            agent listens: the packages stage alone can take minutes), retrying with
            bigactor's backoff (1 s, x1.5, capped at 5 s).
        step: seconds for each exchange of the session.
        min_rate: bytes per second the bundle transfer must keep up: it has
            ``step + size / min_rate`` seconds.
        days: life of the certificate the worker receives; the system renews it before it
            expires (``_renew.Renewal``), so a short life only costs more renewals.
    """

    dial: float = 600.0
    step: float = 30.0
    min_rate: float = 256 * 1024
    days: float = LEAF_DAYS


@attrs.frozen(kw_only=True)
class EnrolledWorker:
    """A host enrolled and configured: it is becoming a worker at ``addr``.

    Attributes:
        addr: the worker's address (``tls:host:port``).
        cert_pem: the certificate the cluster CA issued for the worker's key.
        boot_log: the host's boot log up to the handoff (stages and their times).
        bundle_cached: whether the host had the bundle already (nothing was sent).
        python: the host's Python version.
        hostname: the host's name for itself.
    """

    addr: str
    cert_pem: bytes
    boot_log: str = attrs.field(repr=False)
    bundle_cached: bool
    python: str
    hostname: str


def enrollment_context(identity: Identity) -> ssl.SSLContext:
    """The TLS client context of enrollment: presents ``identity``, checks no certificate.

    The agent's certificate is self-signed; the proof authenticates it instead (module
    docstring). Everything after enrollment uses ``_pki.client_context``, which verifies.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    load_identity(context, identity)
    return context


class _Session:
    """Framed messages on the enrollment channel, each step bounded, errors naming it."""

    def __init__(self, stream: TLSStream, addr: str, policy: EnrollPolicy) -> None:
        self.stream = stream
        self.addr = addr
        self.policy = policy
        self.stage = "enrollment"
        self._buffer = bytearray()

    def fail(self, message: str) -> MachineStartError:
        return MachineStartError(self.addr, f"remote boot failed at stage {self.stage}: {message}")

    async def _exactly(self, n: int) -> bytes:
        while len(self._buffer) < n:
            chunk = await self.stream.receive_some()
            if not chunk:
                raise trio.BrokenResourceError("the machine closed the connection")
            self._buffer += chunk
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    async def send(self, message: dict[str, Any]) -> None:
        try:
            with trio.fail_after(self.policy.step):
                await self.stream.send_all(_agent.pack_message(message))
        except trio.TooSlowError:
            raise self.fail(f"sending took over {self.policy.step:g} s") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise self.fail(f"the connection broke: {exc}") from exc

    async def receive(self, expect: str) -> dict[str, Any]:
        try:
            with trio.fail_after(self.policy.step):
                (size,) = struct.unpack(">I", await self._exactly(4))
                if size > _agent.MAX_MESSAGE:
                    raise self.fail(f"a message of {size} bytes is over the limit of {_agent.MAX_MESSAGE}")
                message = _agent.parse_message(await self._exactly(size))
        except trio.TooSlowError:
            raise self.fail(f"no answer within {self.policy.step:g} s") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise self.fail(f"the connection broke: {exc}") from exc
        except ValueError as exc:
            raise self.fail(f"a malformed message: {exc}") from None
        if message["type"] == "error":
            stage = message.get("stage")
            if isinstance(stage, str):
                self.stage = stage
            raise self.fail(f"the machine reported: {message.get('message')}")
        if message["type"] != expect:
            raise self.fail(f"expected a {expect!r} message, got {message['type']!r}")
        return message

    async def send_bundle(self, data: bytes) -> None:
        budget = self.policy.step + len(data) / self.policy.min_rate
        view = memoryview(data)
        try:
            with trio.fail_after(budget):
                for i in range(0, len(view), CHUNK):
                    await self.stream.send_all(view[i : i + CHUNK])
        except trio.TooSlowError:
            raise self.fail(f"sending {len(data)} bytes took over {budget:.0f} s") from None
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise self.fail(f"the connection broke: {exc}") from exc


async def _dial(host: str, port: int, context: ssl.SSLContext, addr: str, policy: EnrollPolicy) -> TLSStream:
    """Dial until the agent answers or ``policy.dial`` seconds pass."""
    waits = backoff()
    last = "nothing tried"
    with trio.move_on_after(policy.dial):
        while True:
            try:
                return await connect_tls(host, port, context)
            except (OSError, TLSError, trio.TooSlowError) as exc:
                last = str(exc) or type(exc).__name__
            await trio.sleep(next(waits))
    raise MachineStartError(
        addr,
        f"remote boot failed at stage enrollment: no boot agent answered within {policy.dial:g} s ({last})",
    )


def _san(host: str) -> dict[str, tuple[str, ...]]:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return {"dns": (host,)}
    return {"ips": (host,)}


async def enroll_and_ship(
    addr: str,
    ca: ClusterCA,
    token: bytes,
    bundle: Bundle,
    config: WorkerConfig,
    *,
    identity: Identity,
    policy: EnrollPolicy = EnrollPolicy(),
) -> EnrolledWorker:
    """Enroll the boot agent at ``addr`` (``tls:host:port``), ship ``bundle`` and ``config``.

    ``identity`` is the driver's client certificate from ``ca`` (the agent refuses any other);
    ``token`` the launch's enrollment token. Dials until the agent answers (``policy.dial``),
    then bounds each step by ``policy.step``. Raises :class:`~bigactor.MachineStartError`
    naming the address and the stage (enrollment, bundle, config) if a step fails or the agent
    does not prove it holds ``token`` over this very channel. Cancelling it closes the
    connection; the agent then fails its boot if it had spent its token.
    """
    host, port = parse_address(addr)
    stream = await _dial(host, port, enrollment_context(identity), addr, policy)
    try:
        return await _session(_Session(stream, addr, policy), ca, token, bundle, config, identity, host)
    finally:
        with trio.CancelScope(shield=True):
            await stream.aclose()


async def _session(
    s: _Session,
    ca: ClusterCA,
    token: bytes,
    bundle: Bundle,
    config: WorkerConfig,
    identity: Identity,
    host: str,
) -> EnrolledWorker:
    nonce = secrets.token_bytes(_agent.NONCE_SIZE)
    await s.send({"type": "enroll", "nonce": nonce.hex()})
    reply = await s.receive("proof")
    server_der = s.stream.peer_certificate
    assert server_der is not None  # TLS always shows the server's certificate
    client_der = ssl.PEM_cert_to_DER_cert(identity.cert_pem.decode("ascii"))
    expected = _agent.enrollment_proof(
        token, s.stream.channel_binding(), hashlib.sha256(client_der).digest(), nonce
    )
    proof = reply.get("proof")
    if not isinstance(proof, str) or not hmac.compare_digest(proof.encode(), expected.hex().encode()):
        await s.send({"type": "error", "stage": "enrollment", "message": "wrong proof"})
        raise s.fail(
            "the machine did not prove it holds this launch's enrollment token over this "
            "connection (a wrong token, or a relay between driver and machine); not enrolled"
        )
    public_key = x509.load_der_x509_certificate(server_der).public_key()
    public_pem = public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    try:
        cert_pem = ca.issue(
            public_pem,
            name=f"bigactor worker {host}",
            client=True,
            server=True,
            days=s.policy.days,
            **_san(host),
        )
    except ValueError as exc:
        await s.send({"type": "error", "stage": "enrollment", "message": str(exc)})
        raise s.fail(f"cannot certify the machine's key: {exc}") from None
    await s.send({"type": "certificate", "cert": cert_pem.decode("ascii")})
    await s.receive("enrolled")

    s.stage = "bundle"
    await s.send({"type": "bundle", "digest": bundle.digest, "size": bundle.size})
    cached = (await s.receive("bundle-status")).get("cached") is True
    if not cached:
        await s.send_bundle(bundle.data)
        await s.receive("bundle-stored")

    s.stage = "config"
    await s.send({"type": "config", "config": config.to_json().decode()})
    handoff = await s.receive("handoff")
    boot_log = handoff.get("boot_log")
    return EnrolledWorker(
        addr=s.addr,
        cert_pem=cert_pem,
        boot_log=boot_log if isinstance(boot_log, str) else "",
        bundle_cached=cached,
        python=str(reply.get("python", "")),
        hostname=str(reply.get("hostname", "")),
    )
