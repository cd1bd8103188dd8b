"""Mutual authentication of a fresh connection, before any payload is decoded.

Both ends hold the cluster's secret key (the local and test systems hand it to workers over a
private pipe; it never travels on the connection). The exchange is a challenge-response with
fresh nonces, so a recorded handshake cannot be replayed and neither side learns anything about
the key::

    client -> server  HELLO    magic | nonce_c (32 B) | versions_c (JSON)
    server -> client  WELCOME  nonce_s (32 B) | mac_s | versions_s (JSON)
    client -> server  PROOF    mac_c
    server -> client  OK

    mac_s = HMAC-SHA256(key, transcript("server"))
    mac_c = HMAC-SHA256(key, transcript("client"))
    transcript(role) = DOMAIN, role, addr, nonce_c, nonce_s, versions_c, versions_s
                       (each field length-prefixed, so no two transcripts read the same)

``addr`` is the address the client dialed, and for the server its own address. Binding both
proofs to it stops a relay: a driver that dials an attacker's address has its handshake
forwarded to a real worker, but the worker's proof covers the worker's address, not the one the
driver dialed, so the driver refuses it (and the driver's proof, covering the attacker's
address, would fail at the worker); the attacker never holds an authenticated connection to
inject frames into. The role label keeps one side's proof from ever serving as the other's,
and both nonces make every proof good for one connection only. Addresses compare as strings:
dial a machine by the address it reports (``Machine.addr``). The binding costs nothing per
frame: once both proofs passed, frames travel as before. So it cannot stop an attacker who sits
on the path of a connection the driver meant to make and alters its bytes after the handshake:
that is for the transport to rule out (on the local system, a socket in a directory only the
driver's user can enter; between hosts, mutual TLS).

Only plain bytes and JSON are parsed here, and the JSON only after the server proved it holds
the key. The caller decodes frames only after :func:`client_handshake` /
:func:`server_handshake` returned. Versions of Python, bigactor and the pickler (cloudpickle,
whose by-value pickles name its own helpers) are compared by the client, Python's by its
major.minor release only (3.11.2 and 3.11.7 run the same bytecode and pickles): a mismatch fails
the machine, naming both sides' full versions.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import platform
import re
import secrets
import struct
from typing import Any, Protocol

from .. import _codec, _version
from .._errors import ProtocolError

#: Opens every HELLO; the number changes whenever the handshake does (2: proofs bound to the
#: dialed address and the whole transcript).
MAGIC = b"bigactor/2\n"
DOMAIN = b"bigactor connection handshake"
NONCE = 32
MAC = hashlib.sha256().digest_size
_LENGTH = struct.Struct("<I")


class MessageChannel(Protocol):
    async def send_message(self, message: bytes) -> None: ...
    async def get_message(self) -> bytes | memoryview: ...


class AuthError(ProtocolError):
    """The peer failed authentication."""


class VersionMismatch(ProtocolError):
    """Driver and worker run different Python, bigactor or pickler versions."""


def versions() -> dict[str, str]:
    """Versions that must match between the two ends of a connection."""
    return {
        "python": platform.python_version(),
        "bigactor": _version.__version__,
        _codec.PICKLER: _codec.PICKLER_VERSION,
    }


def _versions_blob() -> bytes:
    return json.dumps(versions(), sort_keys=True).encode()


def transcript_mac(
    key: bytes, role: bytes, addr: str, nonce_c: bytes, nonce_s: bytes, versions_c: bytes, versions_s: bytes
) -> bytes:
    """The proof of ``role`` (``b"server"`` or ``b"client"``): an HMAC of the whole exchange."""
    mac = hmac.new(key, digestmod=hashlib.sha256)
    for part in (
        DOMAIN,
        role,
        addr.encode("utf-8", "surrogatepass"),
        nonce_c,
        nonce_s,
        versions_c,
        versions_s,
    ):
        mac.update(_LENGTH.pack(len(part)))
        mac.update(part)
    return mac.digest()


async def _get(channel: MessageChannel, what: str) -> bytes:
    msg = await channel.get_message()
    if not isinstance(msg, (bytes, bytearray, memoryview)):
        raise AuthError(f"expected binary {what} message, got text")
    return bytes(msg)


async def client_handshake(channel: MessageChannel, key: bytes, addr: str) -> dict[str, Any]:
    """Authenticate the server at ``addr`` (the address dialed) and prove ourselves to it.

    Returns the server's versions (see :func:`check_versions`). Raises AuthError if the server
    does not hold the key or is not the machine at ``addr``; nothing is sent after that.
    """
    nonce_c = secrets.token_bytes(NONCE)
    versions_c = _versions_blob()
    await channel.send_message(MAGIC + nonce_c + versions_c)
    welcome = await _get(channel, "welcome")
    if len(welcome) < NONCE + MAC:
        raise AuthError(f"short welcome from the server ({len(welcome)} bytes)")
    nonce_s, mac_s, versions_s = welcome[:NONCE], welcome[NONCE : NONCE + MAC], welcome[NONCE + MAC :]
    expected = transcript_mac(key, b"server", addr, nonce_c, nonce_s, versions_c, versions_s)
    if not hmac.compare_digest(mac_s, expected):
        raise AuthError(
            "server failed authentication: it does not hold the cluster key, or it is not the "
            f"machine at {addr} (a relayed connection)"
        )
    await channel.send_message(transcript_mac(key, b"client", addr, nonce_c, nonce_s, versions_c, versions_s))
    if await _get(channel, "ok") != b"OK":
        raise AuthError("server did not accept the handshake")
    try:
        peer = json.loads(versions_s)
    except (ValueError, RecursionError) as exc:
        raise AuthError("server sent unreadable versions") from exc
    if not isinstance(peer, dict):
        raise AuthError("server sent unreadable versions")
    return peer


async def server_handshake(channel: MessageChannel, key: bytes, addr: str) -> None:
    """Authenticate a client that dialed us at ``addr`` (our own address).

    Raises AuthError, having decoded nothing, if the client does not hold the key or dialed
    another address (its handshake was relayed to us).
    """
    hello = await _get(channel, "hello")
    if not hello.startswith(MAGIC):
        other = re.match(rb"bigactor/[0-9]{1,6}\n", hello)
        if other is not None:
            raise AuthError(
                f"peer speaks handshake {other.group().strip().decode()}, this machine "
                f"{MAGIC.strip().decode()}: driver and worker run different bigactor versions"
            )
        raise AuthError("peer did not open with the bigactor handshake")
    if len(hello) < len(MAGIC) + NONCE:
        raise AuthError(f"short hello from the client ({len(hello)} bytes)")
    nonce_c, versions_c = hello[len(MAGIC) : len(MAGIC) + NONCE], hello[len(MAGIC) + NONCE :]
    nonce_s = secrets.token_bytes(NONCE)
    versions_s = _versions_blob()
    mac_s = transcript_mac(key, b"server", addr, nonce_c, nonce_s, versions_c, versions_s)
    await channel.send_message(nonce_s + mac_s + versions_s)
    proof = await _get(channel, "proof")
    expected = transcript_mac(key, b"client", addr, nonce_c, nonce_s, versions_c, versions_s)
    if not hmac.compare_digest(proof, expected):
        raise AuthError(
            "client failed authentication: it does not hold the cluster key, or it dialed "
            f"another address than {addr} (a relayed connection)"
        )
    await channel.send_message(b"OK")


def _minor(version: Any) -> Any:
    """``3.11`` of ``3.11.7``: what must match of Python's version (anything else as it is)."""
    if not isinstance(version, str):
        return version
    return ".".join(version.split(".")[:2])


def _same(key: str, mine: str, theirs: Any) -> bool:
    # Python's bytecode and pickles change only between minor releases (the .pyc magic number
    # is fixed within one), so 3.11.2 on a Debian instance serves a 3.11.7 driver; bigactor and
    # the pickler must match exactly.
    if key == "python":
        return bool(_minor(theirs) == _minor(mine))
    return bool(theirs == mine)


def check_versions(addr: str, peer: dict[str, Any]) -> None:
    """Raise VersionMismatch naming both sides' full versions if ``peer`` differs from ours:
    bigactor and the pickler exactly, Python in its major.minor release."""
    mine = versions()
    diff = {k: (mine[k], peer.get(k)) for k in mine if not _same(k, mine[k], peer.get(k))}
    if diff:
        text = ", ".join(f"{k}: driver {a}, worker {b}" for k, (a, b) in sorted(diff.items()))
        raise VersionMismatch(f"{addr}: versions differ ({text})")
