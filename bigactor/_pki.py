"""A certificate authority of one cluster, and the TLS contexts built on it.

The driver makes a :class:`ClusterCA` when a cluster over TCP opens. Its private key is made in
the driver's memory and never leaves it: this module has no way to export it, refuses to pickle
a CA, and writes no private key to disk (OpenSSL loads a key from a path only, so
:func:`load_identity` hands it one in an anonymous in-memory file). What the CA gives out:

* to a worker, a certificate for a key the worker made itself (:meth:`ClusterCA.issue`, from the
  worker's public key): the worker's private key never travels either. It names the IP address
  (or DNS name) the driver dials, which the driver's TLS client checks;
* to the driver, an :class:`Identity` (a new key and its certificate, :meth:`ClusterCA.identity`)
  to prove itself as a client.

Both ends verify the other against the cluster's CA and nothing else (no system roots): the
server requires a client certificate from the CA, the client checks the server's certificate
and that it names the address dialed (:func:`server_context`, :func:`client_context`). TLS 1.3
only.

Keys are ECDSA on P-256. OpenSSL signs and verifies P-256 with hand-written assembly; on the
project's 2-core VM (OpenSSL 3.0) it signs 60k/s and verifies 20k/s, against 37k/s and 14k/s
for Ed25519, and a mutual handshake does two signatures and four verifications (two
CertificateVerify messages, two chains). Every TLS 1.3 stack accepts P-256.

Validity and renewal. A certificate is checked only during a handshake: a connection outlives
the certificates that opened it, so expiry only stops *new* connections (a reconnect, a
worker dialing another worker). Leaves are valid ``days`` days from a minute ago (the minute
absorbs clock drift between hosts); the CA ten years by default, since its key dies with the
driver anyway. bigmachine's leaves last 7 days and are never renewed, so its clusters stop
accepting connections after a week; here the driver renews: before a leaf is two thirds through
its life (see :func:`renew_at`) it issues a fresh certificate for the same public key, name,
addresses and roles (:meth:`ClusterCA.reissue`) and the holder loads it with
:func:`load_identity` into the contexts it already uses, which affects the handshakes after that
only. The driver renews its own client certificate so, and pushes each worker's to it over an
authenticated connection (``systems/_remote/_renew.py``, ``Supervisor.renew_certificate``); the
worker takes it only once :func:`check_renewal` found it is from the cluster's CA, for the
worker's own key and its address. The CA itself is never renewed: its ten years outlast any
cluster, whose CA dies with its driver.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
import ssl
from collections.abc import Iterable, Iterator
from typing import NoReturn

import attrs
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: how far back NotBefore is set, for clocks that disagree
DRIFT = datetime.timedelta(minutes=1)
CA_DAYS = 3650.0
#: default life of a leaf certificate; the driver renews it (see the module docstring)
LEAF_DAYS = 30.0
ORGANIZATION = "bigactor"


@attrs.frozen(repr=False)
class Identity:
    """A certificate and its private key (PEM), as a TLS endpoint presents them."""

    cert_pem: bytes
    key_pem: bytes

    def __repr__(self) -> str:
        # The key stays out of logs and tracebacks.
        return f"Identity({_subject(self.cert_pem)!r})"


def new_key() -> ec.EllipticCurvePrivateKey:
    """A new private key of the kind this module uses (P-256)."""
    return ec.generate_private_key(ec.SECP256R1())


def private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """``key`` as unencrypted PKCS#8 PEM, for :class:`Identity` (kept in memory)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The public half of ``key`` as PEM: what a worker sends to have it certified."""
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _subject(cert_pem: bytes) -> str:
    return x509.load_pem_x509_certificate(cert_pem).subject.rfc4514_string()


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _validity(days: float) -> tuple[datetime.datetime, datetime.datetime]:
    if not days > 0:
        raise ValueError(f"a certificate must be valid for a positive number of days, not {days}")
    now = datetime.datetime.now(datetime.UTC)
    life = datetime.timedelta(days=days)
    # A leaf of under ten minutes (tests shorten leaves to seconds) goes back a tenth of its
    # life, not a minute: renew_at counts from NotBefore, and a minute back would put it in
    # the past. Such a leaf is not meant to cross hosts with drifting clocks.
    return now - min(DRIFT, life / 10), now + life


def expires(cert_pem: bytes) -> datetime.datetime:
    """When the certificate ``cert_pem`` stops being valid (UTC)."""
    return x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc


def _sans(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    """The IP addresses and DNS names ``cert`` names."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    return [str(ip) for ip in san.get_values_for_type(x509.IPAddress)], san.get_values_for_type(x509.DNSName)


def _roles(cert: x509.Certificate) -> tuple[bool, bool]:
    """Whether ``cert`` is good for the client role, the server role."""
    try:
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return False, False
    return ExtendedKeyUsageOID.CLIENT_AUTH in usage, ExtendedKeyUsageOID.SERVER_AUTH in usage


def _public_der(key: ec.EllipticCurvePublicKey | object) -> bytes:
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return b""
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def check_renewal(cert_pem: bytes, current: Identity, ca_pem: bytes, host: str) -> Identity:
    """The identity ``current`` becomes with the renewed certificate ``cert_pem``; ValueError
    naming the fault unless ``cert_pem`` is a certificate signed by the CA of ``ca_pem``, valid
    now, for the key of ``current``, naming ``host`` (an IP address or DNS name) and good for
    every role ``current``'s certificate is good for.

    What a worker asks before it presents a certificate the driver pushed (a pushed certificate
    cannot make a worker present another's key or answer for another's address).
    """
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise ValueError(f"the renewed certificate cannot be read: {exc}") from None
    ca = x509.load_pem_x509_certificate(ca_pem)
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        raise ValueError(
            f"the renewed certificate ({cert.issuer.rfc4514_string()}) is not signed by this "
            f"cluster's CA ({ca.subject.rfc4514_string()})"
        ) from None
    now = datetime.datetime.now(datetime.UTC)
    if not cert.not_valid_before_utc <= now < cert.not_valid_after_utc:
        raise ValueError(
            f"the renewed certificate is not valid now: it is valid from {cert.not_valid_before_utc} "
            f"until {cert.not_valid_after_utc}"
        )
    key = serialization.load_pem_private_key(current.key_pem, None)
    if _public_der(cert.public_key()) != _public_der(key.public_key()):
        raise ValueError("the renewed certificate is for another key than this machine's")
    ips, dns = _sans(cert)
    try:
        named = ipaddress.ip_address(host) in {ipaddress.ip_address(ip) for ip in ips}
    except ValueError:
        named = host.lower() in {d.lower() for d in dns}
    if not named:
        raise ValueError(
            f"the renewed certificate does not name this machine's address {host} (it names {ips + dns})"
        )
    was = _roles(x509.load_pem_x509_certificate(current.cert_pem))
    now_roles = _roles(cert)
    if any(w and not n for w, n in zip(was, now_roles, strict=True)):
        raise ValueError("the renewed certificate drops a TLS role (client, server) the current one has")
    return Identity(cert_pem=cert_pem, key_pem=current.key_pem)


def renew_at(cert_pem: bytes) -> datetime.datetime:
    """When to renew ``cert_pem``: two thirds of the way through its life (UTC).

    A third of the life is left for the renewal to reach its holder, through retries.
    """
    cert = x509.load_pem_x509_certificate(cert_pem)
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return start + (end - start) * 2 / 3


class ClusterCA:
    """The certificate authority of one cluster; its key never leaves this object.

    No public constructor: :meth:`create` makes a new one. A CA cannot be pickled (so neither
    dill nor a worker's arguments can carry its key off by accident).
    """

    __slots__ = ("_cert", "_key", "cert_pem")

    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate, *, _private: object) -> None:
        if _private is not _TOKEN:
            raise TypeError("ClusterCA has no public constructor; use ClusterCA.create()")
        self._key = key
        self._cert = cert
        #: the CA's certificate (PEM): what every endpoint trusts, and all it trusts
        self.cert_pem: bytes = cert.public_bytes(serialization.Encoding.PEM)

    @classmethod
    def create(cls, name: str = "bigactor cluster", *, days: float = CA_DAYS) -> ClusterCA:
        """Make a new CA named ``name``, valid ``days`` days from a minute ago."""
        key = new_key()
        not_before, not_after = _validity(days)
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            # path_length=0: a certificate this CA issues can never sign another.
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert, _private=_TOKEN)

    def __repr__(self) -> str:
        return f"<ClusterCA {self._cert.subject.rfc4514_string()!r}>"

    def __reduce__(self) -> NoReturn:
        raise TypeError("a ClusterCA cannot be pickled: its private key stays in the driver's memory")

    def issue(
        self,
        public_key_pem: bytes,
        *,
        name: str = "bigactor",
        ips: Iterable[str] = (),
        dns: Iterable[str] = (),
        client: bool,
        server: bool,
        days: float = LEAF_DAYS,
    ) -> bytes:
        """Certify the P-256 public key ``public_key_pem`` (PEM); return the certificate (PEM).

        The certificate names ``ips`` and ``dns`` (what a client dialing its holder checks) and
        is good for the TLS roles asked for: ``server`` (serverAuth), ``client`` (clientAuth).
        OpenSSL enforces the role on both ends. Valid ``days`` days from a minute ago.
        """
        if not (client or server):
            raise ValueError("a certificate must be good for the client role, the server role or both")
        public_key = serialization.load_pem_public_key(public_key_pem)
        if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
            public_key.curve, ec.SECP256R1
        ):
            raise ValueError("only P-256 public keys are certified (make the key with _pki.new_key)")
        sans: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        sans += [x509.DNSName(d) for d in dns]
        roles = [ExtendedKeyUsageOID.SERVER_AUTH] * server + [ExtendedKeyUsageOID.CLIENT_AUTH] * client
        not_before, not_after = _validity(days)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(self._cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage(roles), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(self._key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    def reissue(self, cert_pem: bytes, *, days: float = LEAF_DAYS) -> bytes:
        """A renewal of ``cert_pem``, a certificate this CA issued: the same key, name,
        addresses and roles, valid ``days`` days from a minute ago (see :meth:`issue`).

        Raises ValueError for a certificate this CA did not sign.
        """
        cert = x509.load_pem_x509_certificate(cert_pem)
        try:
            cert.verify_directly_issued_by(self._cert)
        except (ValueError, TypeError, InvalidSignature):
            raise ValueError("this CA renews only the certificates it issued") from None
        [common_name] = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        ips, dns = _sans(cert)
        client, server = _roles(cert)
        public_pem = cert.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return self.issue(
            public_pem, name=str(common_name.value), ips=ips, dns=dns, client=client, server=server, days=days
        )

    def identity(
        self,
        name: str = "bigactor driver",
        *,
        ips: Iterable[str] = (),
        dns: Iterable[str] = (),
        client: bool,
        server: bool,
        days: float = LEAF_DAYS,
    ) -> Identity:
        """A new key and its certificate (see :meth:`issue`), for an endpoint in this process."""
        key = new_key()
        cert_pem = self.issue(
            public_key_pem(key), name=name, ips=ips, dns=dns, client=client, server=server, days=days
        )
        return Identity(cert_pem=cert_pem, key_pem=private_key_pem(key))


_TOKEN = object()


@contextlib.contextmanager
def _memory_file(data: bytes) -> Iterator[str]:
    """A path to ``data`` held in memory only: a memfd on Linux, else a pipe."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("bigactor-identity", os.MFD_CLOEXEC)
        try:
            os.write(fd, data)
            os.lseek(fd, 0, os.SEEK_SET)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    # A PEM key and certificate fit in a pipe's buffer, so the write cannot block.
    r, w = os.pipe()
    try:
        os.write(w, data)
        os.close(w)
        w = -1
        yield f"/dev/fd/{r}"
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def load_identity(context: ssl.SSLContext, identity: Identity) -> None:
    """Make ``context`` present ``identity`` in its handshakes from now on (also to renew it).

    OpenSSL reads a key from a path only; the path here names memory, never the disk.
    """
    with _memory_file(identity.cert_pem + b"\n" + identity.key_pem) as path:
        context.load_cert_chain(path)


def _context(protocol: int, identity: Identity | None, ca_pem: bytes) -> ssl.SSLContext:
    context = ssl.SSLContext(protocol)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    # Only the cluster's CA: no system roots, no default paths.
    context.load_verify_locations(cadata=ca_pem.decode("ascii"))
    context.verify_mode = ssl.CERT_REQUIRED
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    if identity is not None:
        load_identity(context, identity)
    return context


def client_context(identity: Identity | None, ca_pem: bytes) -> ssl.SSLContext:
    """A context that dials: presents ``identity``, verifies the server against ``ca_pem``.

    The server's certificate must name the host given as ``server_hostname`` when wrapping
    (an IP address is matched against the certificate's IP addresses). ``identity`` None
    presents no certificate, which servers of :func:`server_context` refuse (tests use it).
    """
    context = _context(ssl.PROTOCOL_TLS_CLIENT, identity, ca_pem)
    context.check_hostname = True
    return context


def server_context(identity: Identity, ca_pem: bytes) -> ssl.SSLContext:
    """A context that accepts: presents ``identity``, requires a client certificate from ``ca_pem``."""
    context = _context(ssl.PROTOCOL_TLS_SERVER, identity, ca_pem)
    # Nothing resumes a session (every connection lives long): no tickets to make and send.
    context.num_tickets = 0
    return context
