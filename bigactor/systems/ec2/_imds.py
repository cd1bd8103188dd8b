"""A small IMDSv2 client for the worker side: who am I, and is my spot instance being taken?

IMDSv2 first asks for a session token (``PUT /latest/api/token`` with the TTL header), then
sends it with every GET. Instances launched by bigactor require the token (``HttpTokens:
required``), so IMDSv1 is never tried. A token is reused until shortly before it expires and
fetched again after a 401 (the metadata service restarted or the token expired early).

Blocking (stdlib ``urllib``, short timeouts); :func:`watch_interruptions` runs it in a thread.
The base URL is overridable for tests (``IMDS(base_url=...)``).
"""

from __future__ import annotations

import datetime
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator

import attrs
import trio

DEFAULT_BASE = "http://169.254.169.254"
TOKEN_TTL = 21600  # seconds; the most IMDS grants
TOKEN_HEADER = "X-aws-ec2-metadata-token"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"


class IMDSError(OSError):
    """The metadata service did not answer as expected (unreachable, or an HTTP error)."""


@attrs.frozen
class Interruption:
    """A spot interruption notice: ``action`` (terminate, stop or hibernate) at ``time``."""

    action: str
    time: datetime.datetime


class IMDS:
    """An IMDSv2 client; thread-safe.

    Args:
        base_url: the metadata service (default ``http://169.254.169.254``).
        timeout: seconds for each request.
    """

    def __init__(self, base_url: str = DEFAULT_BASE, *, timeout: float = 2.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._token: str | None = None
        self._token_expires = 0.0
        self._lock = threading.Lock()

    def _open(self, request: urllib.request.Request) -> tuple[int, bytes]:
        # No proxy: a proxy from the environment must never see the metadata service.
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(request, timeout=self.timeout) as reply:
                return int(reply.status), bytes(reply.read())
        except urllib.error.HTTPError as err:
            return err.code, err.read()
        except (urllib.error.URLError, OSError) as err:
            raise IMDSError(f"instance metadata service {self.base_url} unreachable: {err}") from err

    def token(self, *, fresh: bool = False) -> str:
        """A session token (cached; ``fresh`` asks for a new one)."""
        with self._lock:
            if fresh or self._token is None or time.monotonic() >= self._token_expires:
                request = urllib.request.Request(
                    f"{self.base_url}/latest/api/token", method="PUT", headers={TTL_HEADER: str(TOKEN_TTL)}
                )
                status, body = self._open(request)
                if status != 200:
                    raise IMDSError(f"IMDS token request: HTTP {status}: {body[:200]!r}")
                self._token = body.decode().strip()
                # Renew a minute early so a token never expires between check and use.
                self._token_expires = time.monotonic() + TOKEN_TTL - 60
            return self._token

    def get(self, path: str) -> str | None:
        """The text at ``/latest/<path>``, or None if the service says 404 (no such item)."""
        for fresh in (False, True):
            request = urllib.request.Request(
                f"{self.base_url}/latest/{path.lstrip('/')}", headers={TOKEN_HEADER: self.token(fresh=fresh)}
            )
            status, body = self._open(request)
            if status == 200:
                return body.decode()
            if status == 404:
                return None
            if status != 401:
                break
        raise IMDSError(f"IMDS GET {path}: HTTP {status}: {body[:200]!r}")

    def _need(self, path: str) -> str:
        value = self.get(path)
        if value is None:
            raise IMDSError(f"IMDS has no {path}")
        return value.strip()

    def instance_id(self) -> str:
        """This instance's ID."""
        return self._need("meta-data/instance-id")

    def local_ipv4(self) -> str:
        """This instance's private IPv4 address."""
        return self._need("meta-data/local-ipv4")

    def spot_interruption(self) -> Interruption | None:
        """The pending spot interruption, or None (the service answers 404 until there is one)."""
        text = self.get("meta-data/spot/instance-action")
        if text is None:
            return None
        data = json.loads(text)
        when = datetime.datetime.fromisoformat(data["time"].replace("Z", "+00:00"))
        return Interruption(action=str(data["action"]), time=when)


async def watch_interruptions(imds: IMDS, period: float = 2.0) -> AsyncIterator[Interruption]:
    """Yield each new spot interruption notice, polling every ``period`` seconds (AWS gives
    two minutes' notice). An unreachable service is retried at the next poll. Cancelling the
    iteration abandons the request in flight (it changes nothing). Iterate it inside
    ``contextlib.aclosing(...)``, as every async generator under Trio."""
    last: Interruption | None = None
    while True:
        try:
            notice = await trio.to_thread.run_sync(imds.spot_interruption, abandon_on_cancel=True)
        except IMDSError:
            notice = None
        if notice is not None and notice != last:
            last = notice
            yield notice
        await trio.sleep(period)
