"""Mutual authentication of a fresh connection, before any payload is decoded.

Both ends hold the cluster's secret key (the local and test systems hand it to workers over a
private pipe; it never travels on the connection). The exchange is a challenge-response with
fresh nonces, so a recorded handshake cannot be replayed and neither side learns anything about
the key::

    client -> server  HELLO  magic | nonce_c (32 B) | versions (JSON)
    server -> client  WELCOME nonce_s (32 B) | mac_s | versions (JSON)
                      mac_s = HMAC(key, "server" | nonce_c | nonce_s | both version blobs)
    client -> server  PROOF  mac_c = HMAC(key, "client" | nonce_s | nonce_c)
    server -> client  OK

Only plain bytes and JSON are parsed here. The caller decodes frames only after
:func:`client_handshake` / :func:`server_handshake` returned. Versions of Python, bigactor and
dill are compared by the client: a mismatch fails the machine, naming both sides.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import platform
import secrets
from typing import Any, Protocol

import dill

from .. import _version
from .._errors import ProtocolError

MAGIC = b"bigactor/1\n"
NONCE = 32
MAC = hashlib.sha256().digest_size


class MessageChannel(Protocol):
    async def send_message(self, message: bytes) -> None: ...
    async def get_message(self) -> bytes | memoryview: ...


class AuthError(ProtocolError):
    """The peer failed authentication."""


class VersionMismatch(ProtocolError):
    """Driver and worker run different Python, bigactor or dill versions."""


def versions() -> dict[str, str]:
    """Versions that must match between the two ends of a connection."""
    return {
        "python": platform.python_version(),
        "bigactor": _version.__version__,
        "dill": dill.__version__,
    }


def _mac(key: bytes, *parts: bytes) -> bytes:
    return hmac.new(key, b"".join(parts), hashlib.sha256).digest()


async def _get(channel: MessageChannel, what: str) -> bytes:
    msg = await channel.get_message()
    if not isinstance(msg, (bytes, bytearray, memoryview)):
        raise AuthError(f"expected binary {what} message, got text")
    return bytes(msg)


async def client_handshake(channel: MessageChannel, key: bytes) -> dict[str, Any]:
    """Authenticate the server and prove ourselves; return the server's versions."""
    nonce_c = secrets.token_bytes(NONCE)
    mine = json.dumps(versions(), sort_keys=True).encode()
    await channel.send_message(MAGIC + nonce_c + mine)
    welcome = await _get(channel, "welcome")
    if len(welcome) < NONCE + MAC:
        raise AuthError("short welcome from server")
    nonce_s, mac_s, theirs = welcome[:NONCE], welcome[NONCE : NONCE + MAC], welcome[NONCE + MAC :]
    if not hmac.compare_digest(mac_s, _mac(key, b"server", nonce_c, nonce_s, mine, theirs)):
        raise AuthError("server failed authentication (wrong cluster key)")
    await channel.send_message(_mac(key, b"client", nonce_s, nonce_c))
    if await _get(channel, "ok") != b"OK":
        raise AuthError("server did not accept the handshake")
    try:
        peer: dict[str, Any] = json.loads(theirs)
    except ValueError as exc:
        raise AuthError("server sent unreadable versions") from exc
    return peer


async def server_handshake(channel: MessageChannel, key: bytes) -> None:
    """Authenticate a client; raise AuthError (and decode nothing) if it fails."""
    hello = await _get(channel, "hello")
    if not hello.startswith(MAGIC) or len(hello) < len(MAGIC) + NONCE:
        raise AuthError("peer did not open with the bigactor handshake")
    nonce_c, theirs = hello[len(MAGIC) : len(MAGIC) + NONCE], hello[len(MAGIC) + NONCE :]
    nonce_s = secrets.token_bytes(NONCE)
    mine = json.dumps(versions(), sort_keys=True).encode()
    await channel.send_message(nonce_s + _mac(key, b"server", nonce_c, nonce_s, theirs, mine) + mine)
    proof = await _get(channel, "proof")
    if not hmac.compare_digest(proof, _mac(key, b"client", nonce_s, nonce_c)):
        raise AuthError("client failed authentication (wrong cluster key)")
    await channel.send_message(b"OK")


def check_versions(addr: str, peer: dict[str, Any]) -> None:
    """Raise VersionMismatch naming both sides if ``peer`` differs from ours."""
    mine = versions()
    diff = {k: (mine[k], peer.get(k)) for k in mine if peer.get(k) != mine[k]}
    if diff:
        text = ", ".join(f"{k}: driver {a}, worker {b}" for k, (a, b) in sorted(diff.items()))
        raise VersionMismatch(f"{addr}: versions differ ({text})")
