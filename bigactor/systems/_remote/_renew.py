"""Certificate renewal: the driver keeps its own and every live worker's certificate valid.

A remote system's machines talk mutual TLS with leaves from the cluster CA, which last
``days`` days (``_pki.LEAF_DAYS`` by default). A handshake checks them, so a leaf that expires
stops every *new* connection to or from its holder: a redial after a broken connection, a
worker dialing another worker. bigmachine's leaves last 7 days and are never renewed, so its
clusters stop accepting connections after a week. A :class:`Renewal`, run in the cluster's
nursery for as long as the cluster lives, renews each leaf two thirds through its life
(``_pki.renew_at``), leaving a third of it for the renewal to get through:

* the driver's own client certificate: the CA reissues it for the same key and the driver's
  transport presents it from its next handshake on (``TLSTransport.renew``);
* each live worker's: the CA reissues it for the worker's key and address, and the driver
  pushes it over a fresh authenticated connection (mutual TLS, then the cluster key) as
  ``Supervisor.renew_certificate``. The worker takes it only if it is from the cluster's CA,
  for its own key and names its address (``_pki.check_renewal``), and presents it in its later
  handshakes, as server (the driver and other workers dialing it) and as client (it dialing
  other workers). Its private key never leaves it, nor does the CA's the driver.

A push that fails (the worker unreachable for a while, a refusal) is logged and retried with
bigactor's backoff (1 s, x1.5, capped at 5 s) until it gets through, the worker ends, or its
certificate expires; an expired certificate is logged as an error naming the worker, and
handshakes with it then fail naming the expiry. Connections open at renewal carry on with the
certificates that opened them.

The CA itself is not renewed: it is valid ten years (``_pki.CA_DAYS``), far longer than any
cluster, and its key lives in the driver's memory only, so it dies with the cluster.

A system uses it so (the EC2 system does; SSH and Slurm systems later, the same way)::

    # setup
    transport = TLSTransport(ca.identity("bigactor driver", client=True, server=False, days=days),
                             ca.cert_pem)
    renewal = Renewal(ca, transport, key, days=days)
    await nursery.start(renewal.run)
    # each worker, once enrolled (its certificate from ``enroll_and_ship``)
    renewal.add(instance, enrolled.cert_pem)
"""

from __future__ import annotations

import datetime
import logging

import attrs
import trio

from ... import _codec, _rpc
from ..._machine import backoff
from ..._pki import LEAF_DAYS, ClusterCA, Identity, expires, renew_at
from ..._rpc import Kind
from ..._rpc._tls import TLSTransport
from ..._system import Instance

log = logging.getLogger("bigactor.remote")

#: seconds one push may take: dial, handshakes and the call
ATTEMPT = 30.0
#: the longest one sleep towards a renewal lasts before the wall clock is read again (a host
#: that was suspended wakes with its monotonic clock behind)
RECHECK = 600.0


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


async def _sleep_until(when: datetime.datetime) -> None:
    """Sleep until the wall clock reads ``when``."""
    # Polls the wall clock on purpose: trio's deadlines run on the monotonic clock.
    while (left := (when - _now()).total_seconds()) > 0:  # noqa: ASYNC110
        await trio.sleep(min(left, RECHECK))


@attrs.define
class _Held:
    """A worker whose certificate the renewal keeps, and its cancel scope."""

    instance: Instance
    cert_pem: bytes
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)


class Renewal:
    """Renews the certificates of a cluster's driver and workers while the cluster runs.

    ``ca`` issued them all; ``transport`` is the driver's (its identity is the driver's client
    certificate, renewed in place); ``key`` is the cluster key the driver authenticates with;
    renewed certificates last ``days`` days. See the module docstring.
    """

    def __init__(
        self, ca: ClusterCA, transport: TLSTransport, key: bytes, *, days: float = LEAF_DAYS
    ) -> None:
        if not days > 0:
            raise ValueError(f"certificates must last a positive number of days, not {days}")
        self._ca = ca
        self._transport = transport
        self._key = key
        self.days = days
        self._nursery: trio.Nursery | None = None
        self._ended = False
        self._held: dict[str, _Held] = {}

    @property
    def identity(self) -> Identity:
        """The driver's client identity now (enrollment presents it too)."""
        return self._transport.identity

    def certificate(self, addr: str) -> bytes | None:
        """The certificate the worker at ``addr`` was last known to accept (None: not kept)."""
        held = self._held.get(addr)
        return None if held is None else held.cert_pem

    def add(self, instance: Instance, cert_pem: bytes) -> None:
        """Keep renewing the certificate ``cert_pem`` of the worker ``instance`` (at
        ``instance.addr``) until it ends (``instance.ended()``) or :meth:`discard`.

        Raises RuntimeError before :meth:`run` started; does nothing once it ended (the
        cluster is going away, and its machines with it).
        """
        if self._ended:
            return
        if self._nursery is None:
            raise RuntimeError("Renewal.run has not started")
        self.discard(instance.addr)
        held = _Held(instance, cert_pem)
        self._held[instance.addr] = held
        self._nursery.start_soon(self._keep, held, name=f"certificate renewal {instance.addr}")

    def discard(self, addr: str) -> None:
        """Stop renewing the certificate of the worker at ``addr`` (if it was kept)."""
        held = self._held.pop(addr, None)
        if held is not None:
            held.scope.cancel()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Renew the driver's certificate, and each worker's :meth:`add` gives it, until
        cancelled (never returns on its own). ``task_status.started()`` once workers can be
        added. Cancelling it stops every renewal; a push under way is abandoned (the worker
        keeps the certificate it had)."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._keep_driver, name="certificate renewal (driver)")
                task_status.started()
        finally:
            self._nursery = None
            self._ended = True
            self._held.clear()

    async def _keep_driver(self) -> None:
        while True:
            current = self._transport.identity
            await _sleep_until(renew_at(current.cert_pem))
            renewed = Identity(
                cert_pem=self._ca.reissue(current.cert_pem, days=self.days), key_pem=current.key_pem
            )
            self._transport.renew(renewed)
            log.info("the driver's certificate was renewed; it expires at %s", expires(renewed.cert_pem))

    async def _keep(self, held: _Held) -> None:
        addr = held.instance.addr
        with held.scope:
            while True:
                await _sleep_until(renew_at(held.cert_pem))
                renewed = self._ca.reissue(held.cert_pem, days=self.days)
                if not await self._deliver(held, renewed):
                    if self._held.get(addr) is held:
                        del self._held[addr]
                    return
                held.cert_pem = renewed
                log.info("%s: certificate renewed; it expires at %s", addr, expires(renewed))

    async def _deliver(self, held: _Held, renewed: bytes) -> bool:
        """Push ``renewed`` to the worker until it takes it (True), or it ends or its current
        certificate expires (False: nothing more can reach it)."""
        addr = held.instance.addr
        waits = backoff()
        failures = 0
        while True:
            if held.instance.ended():
                log.debug("%s: the machine ended; its certificate is no longer renewed", addr)
                return False
            deadline = expires(held.cert_pem)
            if _now() >= deadline:
                log.error(
                    "%s: the machine's certificate expired at %s before its renewal reached it "
                    "(%d attempt(s) failed): new connections to and from it fail from now on",
                    addr, deadline, failures,
                )  # fmt: skip
                return False
            try:
                with trio.fail_after(ATTEMPT):
                    await self._push(addr, renewed)
                return True
            except Exception as exc:
                # Any failure of one push (unreachable, refused, too slow, a remote error) is
                # retried; cancellation is a BaseException and ends the renewal.
                failures += 1
                wait = next(waits)
                log.warning(
                    "%s: could not renew the machine's certificate (attempt %d; it expires at %s): "
                    "%s; retrying in %.1f s",
                    addr, failures, deadline, str(exc) or type(exc).__name__, wait,
                )  # fmt: skip
                await trio.sleep(wait)

    async def _push(self, addr: str, cert_pem: bytes) -> None:
        """Dial the worker at ``addr`` and have it take ``cert_pem``; raise what failed."""
        async with trio.open_nursery() as nursery:
            conn, _ = await _rpc.connect(nursery, addr, self._key, transport=self._transport)
            try:
                kind, _, data = await conn.call(
                    _codec.encode_call("Supervisor.renew_certificate", (cert_pem,), {})
                )
            finally:
                await conn.aclose()
            if kind != Kind.REPLY:
                raise _rpc.decode_error(data, addr)
