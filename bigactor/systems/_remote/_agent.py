"""The boot agent: the first Python a remote machine runs, before bigactor is there.

The user data (see ``_userdata``) installs the pinned packages into a venv and runs this file
with that venv's interpreter, its settings (the cluster CA certificate, the one-time enrollment
token, the port, where to cache) arriving as JSON on stdin, never in argv or the environment.
It imports only the standard library and ``cryptography``: bigactor itself arrives in the code
bundle, through this agent.

What it does, each step logged with timings to the boot log and to stdout:

1. Makes its own key (it never leaves the instance) and a self-signed certificate, and listens
   with TLS on the port, *requiring* a client certificate that chains to the cluster CA: a peer
   without one fails the TLS handshake, so nothing an unauthenticated peer sends is ever parsed.
2. Enrollment (the driver dials in; one enrollment per boot): the driver sends a fresh 32-byte
   nonce; the agent answers ``HMAC-SHA256(token, "bigactor-enroll-v1" | binding | client |
   nonce)``, where ``binding`` is the RFC 5929 ``tls-server-end-point`` value of this channel
   (SHA-256 of the agent's certificate, which is signed with SHA-256) and ``client`` the SHA-256
   of the client certificate the agent saw. A relay that terminates TLS must show the driver its
   own certificate and the agent its own client certificate, so the proof it relays does not
   match what the driver computes. Answering spends the token: the agent forgets it. The driver
   then sends a certificate the cluster CA issued for the agent's key and the address it dialed;
   the agent checks it (CA signature, its own key) and serves with it from then on. (CPython's
   ``ssl`` has no TLS exporter, python/cpython gh-82133, hence ``tls-server-end-point``.)
3. Bundle: the driver offers the bundle's SHA-256; the agent says whether it has it cached
   (``<cache>/bundles/<sha256>/``); if not, the driver sends it, and the agent checks the digest
   and extracts it atomically (temporary directory, then rename).
4. The driver sends the worker's configuration; the agent answers with its boot log so far and
   hands its listening socket, key and certificate over to bigactor from the bundle
   (``bigactor.systems._remote._worker.run``).

Framing on the enrollment channel: a 4-byte big-endian length, then a JSON object with a
``type``; at most :data:`MAX_MESSAGE` bytes, except the bundle, whose size is announced first.
A failure prints ``bigactor boot: stage <name> failed after X s: <why>`` and exits non-zero.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import hmac
import json
import os
import platform
import select
import shutil
import socket
import ssl
import struct
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

PROTOCOL = b"bigactor-enroll-v1"
#: the longest framed message (everything but the bundle)
MAX_MESSAGE = 64 * 1024
#: the largest bundle the agent accepts
MAX_BUNDLE = 1 << 30
NONCE_SIZE = 32
TOKEN_SIZE = 32
#: seconds a peer has for its TLS handshake
HANDSHAKE_TIMEOUT = 10.0
#: seconds the agent waits for each message of an enrollment session (bundle chunks included)
STEP_TIMEOUT = 60.0
#: connections at most in their TLS handshake at once; one more closes the oldest
MAX_HANDSHAKES = 16
#: rejected handshakes are logged at most once per this many seconds
REJECT_LOG_PERIOD = 60.0
#: how much of the boot log the driver receives (its end)
MAX_BOOT_LOG = 48 * 1024
_HEX = frozenset("0123456789abcdef")


class StageFailed(Exception):
    """A boot stage failed: the agent exits naming ``stage``."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(stage, message)
        self.stage = stage
        self.message = message

    def __str__(self) -> str:
        return f"{self.stage}: {self.message}"


class SessionError(Exception):
    """An enrollment session broke; ``stage`` names where. The driver is told when possible."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(stage, message)
        self.stage = stage
        self.message = message


# --- shared with the driver (bigactor.systems._remote._enroll imports these) -------------------


def enrollment_proof(token: bytes, binding: bytes, client_digest: bytes, nonce: bytes) -> bytes:
    """The proof that the agent at the end of this TLS channel knows ``token``.

    Every part has a fixed size, so the concatenation is unambiguous.
    """
    if len(binding) != 32 or len(client_digest) != 32 or len(nonce) != NONCE_SIZE:
        raise ValueError("binding, client digest and nonce must each be 32 bytes")
    return hmac.new(token, PROTOCOL + binding + client_digest + nonce, hashlib.sha256).digest()


def server_end_point(cert_der: bytes) -> bytes:
    """RFC 5929 ``tls-server-end-point`` of a certificate signed with SHA-256 (as the agent's
    is): the SHA-256 of its DER encoding. bigactor uses SHA-256 whatever the signature."""
    return hashlib.sha256(cert_der).digest()


def pack_message(message: dict[str, Any]) -> bytes:
    """``message`` framed: its JSON length as 4 bytes big-endian, then the JSON."""
    body = json.dumps(message, separators=(",", ":")).encode()
    if len(body) > MAX_MESSAGE:
        raise ValueError(f"message of {len(body)} bytes is over the limit of {MAX_MESSAGE}")
    return struct.pack(">I", len(body)) + body


def parse_message(body: bytes) -> dict[str, Any]:
    """A framed message's JSON object, which must have a string ``type``; ValueError otherwise."""
    message = json.loads(body)
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ValueError("expected a JSON object with a string 'type'")
    return message


def is_digest(value: object) -> bool:
    """Whether ``value`` is a lowercase hex SHA-256 (a bundle's name in the cache)."""
    return isinstance(value, str) and len(value) == 64 and set(value) <= _HEX


# --- the agent --------------------------------------------------------------------------------


class BootLog:
    """Lines ``bigactor boot: ...`` to stdout and appended to the boot log file."""

    def __init__(self, path: str, t0: float, start: int = 0) -> None:
        self.path = path
        self.t0 = t0
        #: where this boot's lines begin in the file (a reused host's log has older boots)
        self.start = start
        self._lock = threading.Lock()
        #: the stage under way, and when it began (time.monotonic())
        self.stage = "agent"
        self.stage_t0 = time.monotonic()

    def begin(self, stage: str) -> None:
        """Log that ``stage`` begins; failures from now on name it."""
        self.stage, self.stage_t0 = stage, time.monotonic()
        self(f"stage {stage} ...")

    def done(self) -> None:
        """Log that the stage under way succeeded, with its time."""
        self(f"stage {self.stage} done in {time.monotonic() - self.stage_t0:.2f} s")

    def __call__(self, text: str) -> None:
        line = f"bigactor boot: [{time.time() - self.t0:7.2f} s] {text}\n"
        with self._lock:
            sys.stdout.write(line)
            sys.stdout.flush()
            try:
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(line)
            except OSError:
                pass  # the console still has it

    def tail(self) -> str:
        """This boot's part of the log file, its end only if long (what the driver shows)."""
        try:
            with open(self.path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(self.start, f.tell() - MAX_BOOT_LOG))
                return f.read().decode("utf-8", "replace")
        except OSError as exc:
            return f"(boot log {self.path} unreadable: {exc})\n"


def _self_signed(key: Any) -> Any:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    # No IP in it: the driver never checks this certificate's names (it authenticates the agent
    # by the token proof bound to this certificate's hash), and an instance may not know the
    # address it is dialed at (a public IP is not on any interface).
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bigactor boot agent")])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .sign(key, hashes.SHA256())
    )


def _load_chain(context: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    # OpenSSL loads a key from a path only: on Linux, a path to memory (the key never touches
    # a disk); elsewhere a private temporary directory, just long enough.
    data = cert_pem + b"\n" + key_pem
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("bigactor-agent", os.MFD_CLOEXEC)
        try:
            os.write(fd, data)
            context.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="bigactor-tls-") as d:
        path = os.path.join(d, "identity.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        context.load_cert_chain(path)


def _recv_exact(sock: ssl.SSLSocket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise EOFError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


class Agent:
    """One boot's agent: listens, enrolls once, takes the bundle and the configuration."""

    def __init__(self, settings: dict[str, Any], log: BootLog) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        self.log = log
        token = bytes.fromhex(settings.pop("token"))
        if len(token) != TOKEN_SIZE:
            raise StageFailed("agent", f"the enrollment token must be {TOKEN_SIZE} bytes")
        self._token: bytes | None = token
        self.ca_pem: bytes = settings["ca"].encode()
        self.cache: str = settings["cache"]
        self.bundles = os.path.join(self.cache, "bundles")
        self.enroll_timeout = float(settings.get("enroll_timeout", 600.0))
        self.step_timeout = float(settings.get("step_timeout", STEP_TIMEOUT))
        self._key = ec.generate_private_key(ec.SECP256R1())
        self.key_pem = self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        cert = _self_signed(self._key)
        self.cert_der: bytes = cert.public_bytes(serialization.Encoding.DER)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_3
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.context.load_verify_locations(cadata=self.ca_pem.decode())
        _load_chain(self.context, cert.public_bytes(serialization.Encoding.PEM), self.key_pem)
        self._lock = threading.Lock()
        self._busy = False  # an authenticated session is under way
        self._done = threading.Event()  # the session ended: handed over, or failed for good
        self._stopping = threading.Event()  # the accept loop is asked to stop
        self._stopped = threading.Event()  # ... and has
        self._wake_r, self._wake_w = socket.socketpair()
        self._outcome: dict[str, Any] | StageFailed | None = None
        self._handshaking: dict[socket.socket, None] = {}
        self._rejected = 0
        self._quiet_until = 0.0

    # -- listening ----------------------------------------------------------------------------

    def serve(self, listener: socket.socket) -> dict[str, Any]:
        """Accept connections until one session has enrolled this machine and configured it.

        Returns the handoff (see ``_worker.Handoff``); raises StageFailed if enrollment did not
        happen within ``enroll_timeout`` seconds or a session failed after spending the token.
        The listener is left with what the agent did not accept, for the worker to serve.
        """
        deadline = time.monotonic() + self.enroll_timeout
        listener.setblocking(False)
        try:
            while not self._stopping.is_set():
                left = deadline - time.monotonic()
                if left <= 0 and self._token is not None and not self._busy:
                    raise StageFailed(
                        "enrollment", f"no driver enrolled this machine within {self.enroll_timeout:g} s"
                    )
                ready, _, _ = select.select([listener, self._wake_r], [], [], left if left > 0 else 1.0)
                if listener not in ready or self._stopping.is_set():
                    continue
                try:
                    raw, peer = listener.accept()
                except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                    continue
                self._admit(raw, peer)
        finally:
            self._stopped.set()
            with self._lock:
                self._wake_r.close()
                self._wake_w.close()
                for raw in self._handshaking:
                    with contextlib.suppress(OSError):
                        raw.shutdown(socket.SHUT_RDWR)
        self._done.wait()
        outcome = self._outcome
        if isinstance(outcome, StageFailed):
            raise outcome
        assert outcome is not None
        return outcome

    def _admit(self, raw: socket.socket, peer: Any) -> None:
        with self._lock:
            self._handshaking[raw] = None
            if len(self._handshaking) > MAX_HANDSHAKES:
                # Close the oldest rather than the newcomer: a peer holding idle connections
                # then cannot lock the driver out (see bigactor._rpc._transport.Admission).
                oldest = next(iter(self._handshaking))
                del self._handshaking[oldest]
                with contextlib.suppress(OSError):
                    oldest.shutdown(socket.SHUT_RDWR)
        threading.Thread(target=self._connection, args=(raw, peer), name=f"agent {peer}", daemon=True).start()

    def _stop_accepting(self) -> None:
        """Stop accepting and wait until the accept loop has: connections from now on wait in
        the listener's backlog for the worker (the driver dials it as soon as it is told)."""
        self._stopping.set()
        with self._lock:
            if self._wake_w.fileno() != -1:  # the loop closes it once it has stopped
                self._wake_w.send(b"x")
        self._stopped.wait(10)

    def _reject(self, peer: Any, reason: str) -> None:
        now = time.monotonic()
        with self._lock:
            if now < self._quiet_until:
                self._rejected += 1
                return
            more = f" (and {self._rejected} more not logged)" if self._rejected else ""
            self._rejected = 0
            self._quiet_until = now + REJECT_LOG_PERIOD
        self.log(f"refused a connection from {peer[0]}: {reason}{more}")

    def _connection(self, raw: socket.socket, peer: Any) -> None:
        try:
            raw.settimeout(HANDSHAKE_TIMEOUT)
            try:
                tls = self.context.wrap_socket(raw, server_side=True)
            except (OSError, ssl.SSLError) as exc:
                # The TLS library refused the peer (no client certificate from the cluster CA,
                # or no TLS at all): nothing it sent reaches this program.
                self._reject(peer, f"TLS handshake failed: {exc}")
                raw.close()
                return
            finally:
                with self._lock:
                    self._handshaking.pop(raw, None)
            with tls:
                self._authenticated(tls, peer)
        except Exception as exc:  # a thread must not die silently
            self.log(f"connection from {peer[0]} failed: {exc!r}")

    def _authenticated(self, tls: ssl.SSLSocket, peer: Any) -> None:
        with self._lock:
            refusal = None
            if self._token is None:
                refusal = "this machine is already enrolled: its one-time token is spent"
            elif self._busy:
                refusal = "another enrollment is under way"
            else:
                self._busy = True
        if refusal is not None:
            self.log(f"refused an enrollment from {peer[0]}: {refusal}")
            # Read the driver's first message before answering (it is authenticated): closing
            # with its bytes unread would reset the connection and lose the answer.
            with contextlib.suppress(SessionError):
                self._receive(tls, "enrollment", expect="enroll")
            with contextlib.suppress(OSError):
                tls.sendall(pack_message({"type": "error", "stage": "enrollment", "message": refusal}))
            return
        self.log(f"enrollment session from {peer[0]}")
        try:
            outcome: dict[str, Any] | StageFailed = self._session(tls)
        except Exception as exc:
            if not isinstance(exc, SessionError):  # a bug, or the disk: still name the stage
                exc = SessionError(self.log.stage, repr(exc))
            with contextlib.suppress(OSError, ValueError):
                tls.sendall(pack_message({"type": "error", "stage": exc.stage, "message": exc.message}))
            if self._token is not None:
                # The token was not spent: the driver may dial again.
                self.log(f"enrollment session from {peer[0]} failed ({exc.stage}): {exc.message}")
                with self._lock:
                    self._busy = False
                return
            outcome = StageFailed(exc.stage, exc.message)
            self._stop_accepting()
        self._outcome = outcome
        self._done.set()

    # -- the session --------------------------------------------------------------------------

    def _receive(self, tls: ssl.SSLSocket, stage: str, *, expect: str) -> dict[str, Any]:
        tls.settimeout(self.step_timeout)
        try:
            (size,) = struct.unpack(">I", _recv_exact(tls, 4))
            if size > MAX_MESSAGE:
                raise SessionError(stage, f"message of {size} bytes is over the limit of {MAX_MESSAGE}")
            message = parse_message(_recv_exact(tls, size))
        except TimeoutError:
            raise SessionError(stage, f"no message from the driver within {self.step_timeout:g} s") from None
        except (OSError, EOFError) as exc:
            raise SessionError(stage, f"the connection broke: {exc}") from None
        except ValueError as exc:
            raise SessionError(stage, f"malformed message: {exc}") from None
        if message["type"] == "error":
            raise SessionError(stage, f"the driver gave up: {message.get('message')}")
        if message["type"] != expect:
            raise SessionError(stage, f"expected a {expect!r} message, got {message['type']!r}")
        return message

    def _send(self, tls: ssl.SSLSocket, stage: str, message: dict[str, Any]) -> None:
        try:
            tls.sendall(pack_message(message))
        except OSError as exc:
            raise SessionError(stage, f"the connection broke: {exc}") from None

    def _session(self, tls: ssl.SSLSocket) -> dict[str, Any]:
        cert_pem = self._enroll(tls)
        self.log.done()
        self.log.begin("bundle")
        bundle = self._bundle(tls)
        self.log.done()
        self.log.begin("config")
        message = self._receive(tls, "config", expect="config")
        config = message.get("config")
        try:
            sys_path = json.loads(config)["sys_path"] if isinstance(config, str) else None
        except (ValueError, KeyError, TypeError):
            sys_path = None
        if not isinstance(sys_path, list) or not all(isinstance(p, str) for p in sys_path):
            raise SessionError("config", "expected the worker configuration, with its sys_path")
        self.log.done()
        self._stop_accepting()
        self._send(tls, "config", {"type": "handoff", "boot_log": self.log.tail()})
        return {
            "key_pem": self.key_pem.decode(),
            "cert_pem": cert_pem.decode(),
            "ca_pem": self.ca_pem.decode(),
            "config": config,
            "bundle": bundle,
            "sys_path": sys_path,
            "boot_log": self.log.path,
        }

    def _enroll(self, tls: ssl.SSLSocket) -> bytes:
        message = self._receive(tls, "enrollment", expect="enroll")
        try:
            nonce = bytes.fromhex(message["nonce"])
        except (KeyError, TypeError, ValueError):
            raise SessionError("enrollment", "the nonce is not hex") from None
        if len(nonce) != NONCE_SIZE:
            raise SessionError("enrollment", f"the nonce must be {NONCE_SIZE} bytes")
        client_der = tls.getpeercert(binary_form=True)
        assert client_der is not None  # CERT_REQUIRED
        with self._lock:
            token, self._token = self._token, None  # spent: one enrollment per boot
        assert token is not None
        proof = enrollment_proof(
            token, server_end_point(self.cert_der), hashlib.sha256(client_der).digest(), nonce
        )
        del token
        self._send(
            tls,
            "enrollment",
            {
                "type": "proof",
                "proof": proof.hex(),
                "python": platform.python_version(),
                "hostname": socket.gethostname(),
            },
        )
        message = self._receive(tls, "enrollment", expect="certificate")
        cert_pem = message.get("cert")
        if not isinstance(cert_pem, str):
            raise SessionError("enrollment", "the certificate is missing")
        self._check_certificate(cert_pem.encode())
        self._send(tls, "enrollment", {"type": "enrolled"})
        return cert_pem.encode()

    def _check_certificate(self, cert_pem: bytes) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
            ca = x509.load_pem_x509_certificate(self.ca_pem)
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError) as exc:
            raise SessionError("enrollment", f"the certificate is not from the cluster CA: {exc}") from None
        except Exception as exc:  # cryptography's InvalidSignature
            raise SessionError("enrollment", f"the certificate's signature is wrong: {exc!r}") from None
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        der = serialization.Encoding.DER
        if cert.public_key().public_bytes(der, spki) != self._key.public_key().public_bytes(der, spki):
            raise SessionError("enrollment", "the certificate is for another key")

    def _bundle(self, tls: ssl.SSLSocket) -> str:
        message = self._receive(tls, "bundle", expect="bundle")
        digest, size = message.get("digest"), message.get("size")
        if not is_digest(digest) or not isinstance(size, int) or not 0 < size <= MAX_BUNDLE:
            raise SessionError("bundle", "expected a SHA-256 digest and a size up to 1 GiB")
        assert isinstance(digest, str)
        target = os.path.join(self.bundles, digest)
        cached = os.path.isdir(target)
        self._send(tls, "bundle", {"type": "bundle-status", "cached": cached})
        if cached:
            self.log(f"bundle {digest[:12]} is cached")
            return target
        self._store(tls, digest, size, target)
        self._send(tls, "bundle", {"type": "bundle-stored"})
        self.log(f"bundle {digest[:12]} stored ({size} bytes)")
        return target

    def _store(self, tls: ssl.SSLSocket, digest: str, size: int, target: str) -> None:
        os.makedirs(self.bundles, mode=0o700, exist_ok=True)
        tls.settimeout(self.step_timeout)
        work = tempfile.mkdtemp(prefix=".incoming-", dir=self.bundles)
        try:
            archive = os.path.join(work, "bundle.tar.gz")
            h = hashlib.sha256()
            with open(archive, "wb") as f:
                left = size
                while left:
                    try:
                        chunk = tls.recv(min(left, 1 << 20))
                    except TimeoutError:
                        raise SessionError(
                            "bundle", f"the bundle stalled for {self.step_timeout:g} s"
                        ) from None
                    except OSError as exc:
                        raise SessionError("bundle", f"the connection broke: {exc}") from None
                    if not chunk:
                        raise SessionError("bundle", f"the bundle ended {left} bytes short")
                    h.update(chunk)
                    f.write(chunk)
                    left -= len(chunk)
            if h.hexdigest() != digest:
                raise SessionError("bundle", f"the bundle's digest is {h.hexdigest()}, not {digest}")
            tree = os.path.join(work, "tree")
            try:
                _extract(archive, tree)
            except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
                raise SessionError("bundle", f"cannot extract the bundle: {exc}") from None
            try:
                os.rename(tree, target)
            except OSError:
                # Another machine on this instance stored it first: same digest, same files.
                if not os.path.isdir(target):
                    raise
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _extract(archive: str, tree: str) -> None:
    """Extract the bundle: regular files and directories only, all inside ``tree``."""
    with tarfile.open(archive, "r:gz") as tar:
        members = tar.getmembers()
        for m in members:
            parts = m.name.split("/")
            if not (m.isfile() or m.isdir()) or m.name.startswith("/") or ".." in parts:
                raise ValueError(f"unexpected bundle entry {m.name!r}")
        if hasattr(tarfile, "data_filter"):  # Python 3.11.4 and later
            tar.extractall(tree, members, filter="data")
        else:
            tar.extractall(tree, members)


def _listen(port: int, host: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    return sock


def run(settings: dict[str, Any], log: BootLog, handoff: Callable[[dict[str, Any]], None]) -> None:
    """Enroll, take the bundle and configuration, then call ``handoff`` with what bigactor
    needs; raises StageFailed naming the stage that failed."""
    log.begin("agent")
    try:
        agent = Agent(settings, log)
        listener = _listen(int(settings["port"]), settings.get("host", "0.0.0.0"))
    except StageFailed:
        raise
    except Exception as exc:
        raise StageFailed("agent", f"cannot listen on port {settings.get('port')}: {exc}") from exc
    host, port = listener.getsockname()[:2]
    log(f"agent listening on {host}:{port} (TLS, client certificates from the cluster CA only)")
    log.done()
    log.begin("enrollment")
    try:
        result = agent.serve(listener)
    except BaseException:
        listener.close()
        raise
    listener.setblocking(True)
    result["listen_fd"] = listener.detach()
    log.begin("worker")
    try:
        handoff(result)
    except Exception as exc:
        raise StageFailed("worker", f"{type(exc).__name__}: {exc}") from exc


def _hand_over(result: dict[str, Any]) -> None:
    """Put the bundle on ``sys.path`` and run the worker from it (this process becomes it)."""
    roots = [os.path.join(result["bundle"], p) for p in result["sys_path"]]
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = roots + [p for p in sys.path if p and os.path.abspath(p) != here]
    from bigactor.systems._remote._worker import Handoff
    from bigactor.systems._remote._worker import run as run_worker

    run_worker(Handoff.from_agent(result))


def main() -> None:
    settings = json.loads(sys.stdin.read())
    sys.stdin.close()
    t0 = float(os.environ.get("BIGACTOR_BOOT_T0") or time.time())
    log = BootLog(settings["log"], t0, int(os.environ.get("BIGACTOR_BOOT_LOG_START") or 0))
    try:
        run(settings, log, _hand_over)
    except StageFailed as exc:
        log(f"stage {exc.stage} failed after {time.monotonic() - log.stage_t0:.2f} s: {exc.message}")
        sys.exit(1)


if __name__ == "__main__":
    main()
