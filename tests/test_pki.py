"""The cluster CA (``bigactor._pki``): what it certifies, how, and that its keys stay in memory."""

from __future__ import annotations

import datetime
import os
import pickle
import ssl

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bigactor import _pki


@pytest.fixture(scope="module")
def ca() -> _pki.ClusterCA:
    return _pki.ClusterCA.create("test cluster")


def load(pem: bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem)


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def test_the_ca_certificate_is_a_p256_ca_that_signs_certificates_only(ca: _pki.ClusterCA) -> None:
    """basicConstraints CA (no intermediates below it), keyCertSign, self-signed, P-256."""
    cert = load(ca.cert_pem)
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical
    assert basic.value.ca
    assert basic.value.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign
    assert not usage.digital_signature
    cert.verify_directly_issued_by(cert)
    public_key = cert.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert isinstance(public_key.curve, ec.SECP256R1)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "test cluster"


def test_validity_starts_a_minute_ago_for_clock_drift(ca: _pki.ClusterCA) -> None:
    """NotBefore is a minute in the past; a leaf lasts the days asked for from then on."""
    t = now()
    cert = load(ca.identity(client=True, server=False, days=2).cert_pem)
    assert t - _pki.DRIFT - datetime.timedelta(seconds=5) <= cert.not_valid_before_utc <= t - _pki.DRIFT
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert abs(life - (datetime.timedelta(days=2) + _pki.DRIFT)) < datetime.timedelta(seconds=2)
    ca_cert = load(ca.cert_pem)
    assert ca_cert.not_valid_after_utc - ca_cert.not_valid_before_utc > datetime.timedelta(days=3000)


def test_issue_certifies_a_key_held_elsewhere_for_its_addresses_and_roles(ca: _pki.ClusterCA) -> None:
    """The worker's own public key is certified: names kept, roles as asked, not a CA."""
    key = _pki.new_key()  # the worker's: only its public half reaches the CA
    pem = ca.issue(
        _pki.public_key_pem(key), name="worker 1", ips=["10.0.0.7", "::1"], dns=["w1.internal"],
        client=True, server=True, days=7,
    )  # fmt: skip
    cert = load(pem)
    cert.verify_directly_issued_by(load(ca.cert_pem))
    assert cert.public_key() == key.public_key()
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)] == ["10.0.0.7", "::1"]
    assert sans.get_values_for_type(x509.DNSName) == ["w1.internal"]
    roles = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(roles) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.digital_signature
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "worker 1"

    client_only = load(ca.issue(_pki.public_key_pem(key), client=True, server=False))
    roles = client_only.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(roles) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_issue_refuses_other_key_types_and_certificates_for_no_role(ca: _pki.ClusterCA) -> None:
    """Only P-256 keys are certified, and only for at least one TLS role."""
    from cryptography.hazmat.primitives import serialization

    def pem(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
        return key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    with pytest.raises(ValueError, match="P-256"):
        ca.issue(pem(ed25519.Ed25519PrivateKey.generate()), client=True, server=False)
    with pytest.raises(ValueError, match="P-256"):
        ca.issue(pem(rsa.generate_private_key(65537, 2048)), client=True, server=False)
    with pytest.raises(ValueError, match="role"):
        ca.issue(_pki.public_key_pem(_pki.new_key()), client=False, server=False)
    with pytest.raises(ValueError, match="positive"):
        ca.issue(_pki.public_key_pem(_pki.new_key()), client=True, server=False, days=0)


def test_identity_is_a_fresh_key_and_its_certificate(ca: _pki.ClusterCA) -> None:
    """identity() makes a new key each time; the certificate is for that key."""
    from cryptography.hazmat.primitives import serialization

    a = ca.identity("driver", client=True, server=False)
    b = ca.identity("driver", client=True, server=False)
    assert a.key_pem != b.key_pem
    key = serialization.load_pem_private_key(a.key_pem, None)
    assert load(a.cert_pem).public_key() == key.public_key()
    assert "PRIVATE" not in repr(a)
    assert "driver" in repr(a)


def test_the_ca_key_cannot_leave_by_pickle_or_constructor(ca: _pki.ClusterCA) -> None:
    """A CA refuses to pickle (dill and a worker's arguments use pickle) and has no public constructor."""
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(ca)
    with pytest.raises(TypeError, match="no public constructor"):
        _pki.ClusterCA(None, None, _private=None)  # type: ignore[arg-type]
    assert "PRIVATE" not in repr(ca)
    assert not hasattr(ca, "__dict__")  # nothing but the slots: no stray export


def test_load_identity_writes_nothing_to_disk_and_leaks_no_descriptor(
    ca: _pki.ClusterCA, tmp_path: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The key reaches OpenSSL through an in-memory file, closed after."""
    monkeypatch.chdir(str(tmp_path))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    before = set(os.listdir("/proc/self/fd"))
    identity = ca.identity(client=True, server=True, ips=["127.0.0.1"])
    context = _pki.server_context(identity, ca.cert_pem)
    _pki.load_identity(context, identity)
    assert set(os.listdir("/proc/self/fd")) == before
    assert os.listdir(str(tmp_path)) == []


def test_contexts_are_tls13_mutual_and_trust_only_the_cluster_ca(ca: _pki.ClusterCA) -> None:
    """Both contexts require the peer's certificate, TLS 1.3, and hold only the cluster's CA."""
    identity = ca.identity(client=True, server=True, ips=["127.0.0.1"])
    client = _pki.client_context(identity, ca.cert_pem)
    server = _pki.server_context(identity, ca.cert_pem)
    for context in (client, server):
        assert context.minimum_version == ssl.TLSVersion.TLSv1_3
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert context.cert_store_stats()["x509_ca"] == 1
    assert client.check_hostname
    assert server.num_tickets == 0


def test_renew_at_is_two_thirds_through_a_certificates_life(ca: _pki.ClusterCA) -> None:
    """expires() reads NotAfter; renew_at() leaves a third of the life for the renewal."""
    pem = ca.identity(client=True, server=False, days=30).cert_pem
    cert = load(pem)
    assert _pki.expires(pem) == cert.not_valid_after_utc
    start = cert.not_valid_before_utc
    assert _pki.renew_at(pem) == start + (cert.not_valid_after_utc - start) * 2 / 3
    assert now() < _pki.renew_at(pem) < _pki.expires(pem)
