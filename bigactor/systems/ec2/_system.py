"""The EC2 system (:class:`EC2System`): each machine is an EC2 instance of its own.

How a machine starts (``cluster.start(n)``):

1. Once per cluster, at the first start: the code bundle (bigactor and the program's own
   modules, ``_remote.build_bundle``, in a thread) and the pins (the third-party packages at the
   driver's versions, ``_remote.compute_pins``). Modules the program imports after its first
   start are not in the bundle.
2. Once per start: the user data (``_remote.render_user_data``) with a fresh one-time
   enrollment token, then one RunInstances of exactly ``n`` instances (``Launcher``: all or
   nothing; a launch that fails starts nothing and ``cluster.start`` raises ``EC2Error``).
3. For every instance, concurrently, once it runs: enrollment over TLS, the bundle, the
   worker's configuration (``_remote.enroll_and_ship``). The worker then serves mutual TLS at
   ``tls:<address>:<port>`` with a certificate from the cluster's CA, whose key never leaves the
   driver. An instance whose boot fails (its user data failed, it ended, enrollment failed or
   timed out) is terminated; its machine fails with ``MachineStartError`` naming the stage, the
   time it took and what the instance showed (its boot log, or before enrollment its console
   output from GetConsoleOutput). The other machines of the start are unaffected: RunInstances
   is all or nothing, a boot is per machine, as a local worker that dies while starting fails
   only its own machine.

The driver's and the workers' certificates last ``cert_days`` days; the driver renews each
before it expires for as long as the cluster runs (``_remote._renew``).

``cluster.start`` returns once every instance of the start is serving or has failed (minutes on
EC2: the live progress on stderr says where each one is).

What the driver sees of an instance from outside: one task per cluster polls DescribeInstances
for every live instance every ``poll_interval`` seconds (through the launcher's rate limit), and
at once when a machine's connection breaks, so a machine whose instance ended fails with AWS's
reason ("terminated by AWS (Server.SpotInstanceTermination ...)"). ``kill`` and ``aclose``
terminate instances explicitly (TerminateInstances, batched).

Nothing is left running:

* leaving ``open_cluster`` terminates every instance of the cluster and waits (bounded by
  ``terminate_timeout``) until EC2 reports them terminated, after errors and cancellation too;
* if the driver dies (even SIGKILL), each worker's watchdog exits at most
  ``keepalive.unattended`` seconds (never more than ``keepalive.timeout``) after the last
  keepalive it answered, plus one watchdog tick; the user data then runs ``final_action``
  (``poweroff``) and ``InstanceInitiatedShutdownBehavior=terminate`` terminates the instance.
  An instance whose agent is never enrolled ends its boot after ``boot_timeout`` seconds the
  same way;
* ``bigactor ec2 cleanup`` finds anything left by its tags.
"""

from __future__ import annotations

import datetime
import json
import logging
import secrets
import shlex
import sys
import urllib.parse
from typing import Any

import attrs
import trio

from ..._contract import WatchdogConfig, WorkerConfig, worker_log_level
from ..._errors import MachineStartError
from ..._pki import LEAF_DAYS, ClusterCA
from ..._rpc import Transport
from ..._rpc._tls import TLSTransport
from ..._system import Instance, System
from .._remote import (
    BootSpec,
    Bundle,
    EnrollPolicy,
    build_bundle,
    compute_pins,
    enroll_and_ship,
    new_token,
    render_user_data,
)
from .._remote._renew import Renewal
from .._remote._worker import IMDS_EXTRA
from ._config import EC2Config
from ._errors import EC2Error
from ._imds import DEFAULT_BASE as IMDS_URL
from ._launch import Launched, Launcher
from ._progress import LaunchProgress, Stage

log = logging.getLogger("bigactor.ec2")

#: what the user data runs first when the instance lacks the driver's Python (Amazon Linux has
#: python3.X packages; Debian and Ubuntu need the venv module apart)
DEFAULT_SETUP = (
    'command -v "$WANT_PYTHON" >/dev/null 2>&1 || '
    '{ command -v dnf >/dev/null 2>&1 && dnf install -y "$WANT_PYTHON" "$WANT_PYTHON-pip"; } || '
    "{ command -v apt-get >/dev/null 2>&1 && apt-get update && "
    'apt-get install -y "$WANT_PYTHON" "$WANT_PYTHON-venv"; }'
)
#: the most console output quoted in a boot failure
CONSOLE_LINES = 25
#: the most boot-log lines logged for a machine that became ready
BOOT_LOG_LINES = 40
#: how often the live progress is redrawn while nothing happens
PROGRESS_REFRESH = 1.0


def _floats(value: Any) -> float:
    return float(value)


def _watchdog_for(system: EC2System) -> WatchdogConfig:
    """The watchdog of a worker: it checks every ``tick`` (a quarter of the keepalive timeout,
    at most 30 s). Its first keepalive may come only once the whole start is done (``start``
    returns when every instance of it serves), so its grace is the boot timeout."""
    tick = min(30.0, max(0.5, system.keepalive.timeout / 4))
    return WatchdogConfig(tick=tick, boot_grace=system.boot_timeout)


def _trusted_hosts(*urls: str | None) -> list[str]:
    """``--trusted-host`` for each plain-HTTP URL: pip ignores such an index otherwise."""
    out: list[str] = []
    for url in urls:
        if url and url.startswith("http://"):
            host = urllib.parse.urlsplit(url).hostname
            if host and host not in out[1::2]:
                out += ["--trusted-host", host]
    return out


class EC2Instance(Instance):
    """One machine: an EC2 instance running one worker. No public constructor."""

    def __init__(self, system: EC2System, launched: Launched, addr: str, *, _private: object) -> None:
        if _private is not _TOKEN:
            raise TypeError("EC2Instance has no public constructor; EC2System.start makes them")
        self._system = system
        self.launched = launched
        self.addr = addr
        self.maxprocs, self.memory = system.capacity()
        self.hostname = launched.address
        self.observes_exit = True
        # The worker runs on another host: its output comes over its connection.
        self.output_over_channel = True
        self.price_per_hour = launched.price
        #: whether the instance had the code bundle cached at enrollment (None: not enrolled)
        self.bundle_cached: bool | None = None
        #: the instance's boot log up to its handoff to the worker (stages and their times)
        self.boot_log = ""
        self._ended = trio.Event()
        self._cause = ""
        #: a DescribeInstances was asked for after a broken connection and has not answered
        self._asked = False

    @property
    def instance_id(self) -> str:
        return self.launched.instance_id

    def __repr__(self) -> str:
        return f"<EC2Instance {self.instance_id} {self.addr}>"

    def details(self) -> dict[str, str]:
        launched = self.launched
        price = "unknown" if launched.price is None else f"${launched.price:.4f}/h"
        if launched.spot:
            price += " (at most: the spot cap)"
        return {
            "instance": launched.instance_id,
            "type": launched.instance_type,
            "market": "spot" if launched.spot else "on-demand",
            "zone": launched.zone,
            "price": price,
            "launched": launched.launched_at.astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        }

    def ended(self) -> bool:
        """Whether EC2 said the instance ended, or is being asked right now.

        The cluster asks after a connection broke, and waits a few seconds for the end to be
        described when the answer is True. Nothing on this host can tell at once whether
        another host is gone, so the answer is "maybe" until DescribeInstances (asked now,
        not at the next poll) answers, in well under a second: a machine on an instance that
        ended fails with EC2's reason rather than a bare transport error, and one whose
        instance still runs reports its transport error that much later.
        """
        if not self._ended.is_set():
            self._asked = True
            self._system._check_now()
        return self._ended.is_set() or self._asked

    async def wait_exit(self) -> str:
        await self._ended.wait()
        return self._cause

    def kill(self) -> None:
        self._system._terminate_soon(self.instance_id)

    def _end(self, cause: str) -> None:
        """The instance ended (``cause``: what EC2 says, "terminated by AWS (...)")."""
        if not self._ended.is_set():
            self._cause = f"instance {self.instance_id} {cause}"
            self._ended.set()

    def _boot_failed(self, message: str) -> None:
        """The boot failed: ``message`` is the cause, even if the instance's end was seen
        first (before ``start`` returns, nobody waits for it yet)."""
        self._cause = f"instance {self.instance_id}: {message}"
        self._ended.set()


_TOKEN = object()


@attrs.define(kw_only=True)
class EC2System(EC2Config, System):
    """Machines as EC2 instances, one each; see the module docstring and :class:`EC2Config`.

    Every option may be given to the constructor (``open_cluster("ec2", spot=True)``) or set as
    ``BIGACTOR_EC2_<OPTION>`` (``BIGACTOR_EC2_INSTANCE_TYPE=c6i.xlarge``); a keyword wins. Besides
    :class:`EC2Config`'s options:

    Args:
        boot_timeout: seconds an instance may take from running to serving (its packages
            stage alone can take minutes on a fresh instance); the agent gives up too.
        final_action: the shell command the user data runs when the worker exits or the boot
            fails (``poweroff``: the instance then terminates itself); empty: none.
        setup_commands: shell commands the user data runs first (default: install the driver's Python
            minor version with dnf or apt-get when the instance lacks it); ``$WANT_PYTHON``
            names it (``python3.11``).
        cache: where the instance keeps its venvs and bundles, keyed by their digests.
        boot_log: the instance's boot log file.
        pip_options: more pip arguments, as shell words (``--trusted-host`` is added by
            itself for an ``index_url`` or ``wheelhouse`` served over plain HTTP).
        packages / exclude_packages: distributions to pin beside, or leave out of, what the
            program imports (``_remote.compute_pins``).
        watchdog: when an unattended worker exits; default: within the keepalive timeout.
        log_level: the ``logging`` level configured in workers (default: the driver's root
            logger's level when each starts).
        poll_interval: seconds between DescribeInstances polls of the cluster's instances.
        progress: show the live launch progress on stderr (a log record per stage elsewhere).
        cert_days: life of the driver's and workers' TLS certificates, in days (fractions
            allowed); the driver renews each two thirds through its life, so any value works
            for a cluster of any length. The cluster's CA lasts ten years.
    """

    name = "ec2"

    boot_timeout: float = attrs.field(default=600.0, converter=_floats)
    final_action: str = "poweroff"
    setup_commands: str = DEFAULT_SETUP
    cache: str = "/var/cache/bigactor"
    boot_log: str = "/var/log/bigactor-boot.log"
    pip_options: str = ""
    packages: list[str] = attrs.field(factory=list)
    exclude_packages: list[str] = attrs.field(factory=list)
    watchdog: WatchdogConfig = attrs.field(default=attrs.Factory(_watchdog_for, takes_self=True))
    log_level: int | None = None
    poll_interval: float = attrs.field(default=5.0, converter=_floats)
    progress: bool = True
    cert_days: float = attrs.field(default=LEAF_DAYS, converter=_floats)

    key: bytes = attrs.field(default=b"", init=False, repr=False)
    transport: Transport = attrs.field(factory=Transport, init=False)
    cluster_id: str = attrs.field(factory=lambda: f"c-{secrets.token_hex(6)}", init=False)
    _ca: ClusterCA | None = attrs.field(default=None, init=False, repr=False)
    _renewal: Renewal | None = attrs.field(default=None, init=False, repr=False)
    _launcher: Launcher | None = attrs.field(default=None, init=False, repr=False)
    _nursery: trio.Nursery | None = attrs.field(default=None, init=False, repr=False)
    _reporter: LaunchProgress | None = attrs.field(default=None, init=False, repr=False)
    _bundle: Bundle | None = attrs.field(default=None, init=False, repr=False)
    _pins: tuple[str, ...] = attrs.field(default=(), init=False, repr=False)
    _prepare_lock: trio.Lock = attrs.field(factory=trio.Lock, init=False, repr=False)
    #: every instance the cluster launched, live or not, by instance ID
    _instances: dict[str, EC2Instance] = attrs.field(factory=dict, init=False, repr=False)
    #: launched instances without an EC2Instance yet (still booting)
    _booting: set[str] = attrs.field(factory=set, init=False, repr=False)
    _to_terminate: set[str] = attrs.field(factory=set, init=False, repr=False)
    _terminated: set[str] = attrs.field(factory=set, init=False, repr=False)
    _terminate_wake: trio.Event = attrs.field(factory=trio.Event, init=False, repr=False)
    _poll_wake: trio.Event = attrs.field(factory=trio.Event, init=False, repr=False)
    _closed: bool = attrs.field(default=False, init=False, repr=False)
    #: seconds each stage of each start took, for the curious and the tests: see ``timings``
    _timings: list[dict[str, float]] = attrs.field(factory=list, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if self.boot_timeout <= 0:
            raise ValueError(f"boot_timeout must be positive, not {self.boot_timeout}")
        if self.poll_interval <= 0:
            raise ValueError(f"poll_interval must be positive, not {self.poll_interval}")
        if not self.cert_days > 0:
            raise ValueError(f"cert_days must be positive, not {self.cert_days}")
        if self.wheelhouse and self.wheelhouse.startswith("s3://"):
            raise ValueError("wheelhouse: S3 prefixes are not supported yet; serve it over HTTPS")
        # A worker outlives a dead driver by at most ``unattended`` after the keepalive it last
        # answered, plus a watchdog tick: together within the keepalive timeout.
        ka = self.keepalive
        within = max(ka.timeout - self.watchdog.tick, ka.period)
        if ka.unattended > within:
            self.keepalive = attrs.evolve(ka, unattended=within)

    # --- System -------------------------------------------------------------------------

    def capacity(self) -> tuple[int, int]:
        return EC2Config.capacity(self)

    async def setup(self, nursery: trio.Nursery, key: bytes) -> None:
        """Check the type and AMI with EC2 (before anything is launched), make the cluster's
        CA and the driver's certificate, and start the cluster's background tasks."""
        self.key = key
        self._nursery = nursery
        self._launcher = Launcher(self, self.cluster_id)
        await self._launcher.check()
        self._ca = await trio.to_thread.run_sync(ClusterCA.create, f"bigactor cluster {self.cluster_id}")
        identity = self._ca.identity("bigactor driver", client=True, server=False, days=self.cert_days)
        self.transport = TLSTransport(identity, self._ca.cert_pem)
        self._renewal = Renewal(self._ca, self.transport, key, days=self.cert_days)
        await nursery.start(self._renewal.run)
        self._reporter = LaunchProgress(
            tty=None if self.progress else False, title=f"ec2 {self.instance_type}"
        )
        nursery.start_soon(self._poll, name=f"ec2 {self.cluster_id} states")
        nursery.start_soon(self._terminator, name=f"ec2 {self.cluster_id} terminations")
        if self.progress:
            nursery.start_soon(self._refresh, name=f"ec2 {self.cluster_id} progress")

    async def start(self, n: int, env: dict[str, str]) -> list[Instance]:
        """Launch ``n`` instances and boot a worker on each; return once each serves or failed.

        Raises EC2Error if the launch fails (then nothing was started). Cancelled, it
        terminates what it launched.
        """
        launcher, ca = self._launcher, self._ca
        if launcher is None or ca is None or self._closed:
            raise RuntimeError("EC2System.setup was not called, or the system is closed")
        t0 = trio.current_time()
        bundle, pins = await self._prepare()
        token = new_token()
        spec = self._boot_spec(ca, token, pins)
        user_data = render_user_data(spec)
        t_launch = trio.current_time()
        launched = await launcher.launch(n, user_data, progress=self._reporter)
        t_running = trio.current_time()
        ids = [m.instance_id for m in launched]
        self._booting.update(ids)
        self._poll_wake.set()
        out: list[EC2Instance | None] = [None] * len(launched)
        try:
            async with trio.open_nursery() as boots:
                for i, machine in enumerate(launched):
                    boots.start_soon(self._boot_one, machine, token, bundle, env, out, i, t_running)
        except BaseException:
            # Cancelled (or a bug): no machine will ever use these instances. The terminator
            # task ends them; if the cluster itself is going away, aclose does.
            self._booting.difference_update(ids)
            for iid in ids:
                self._terminate_soon(iid)
            raise
        self._booting.difference_update(ids)
        instances = [inst for inst in out if inst is not None]
        ready = [inst for inst in instances if not inst._ended.is_set()]
        self._timings.append(
            {
                "n": float(n),
                "prepare": t_launch - t0,
                "launch": t_running - t_launch,
                "boot": trio.current_time() - t_running,
                "ready": float(len(ready)),
            }
        )
        log.info(
            "ec2: %d of %d machine(s) serving %.1f s after RunInstances (launch %.1f s, boot %.1f s)",
            len(ready), n, trio.current_time() - t_launch, t_running - t_launch,
            trio.current_time() - t_running,
        )  # fmt: skip
        return list(instances)

    async def aclose(self) -> None:
        """Terminate every instance of the cluster and wait until EC2 says so (at most
        ``terminate_timeout`` seconds); idempotent, shielded from cancellation."""
        if self._closed:
            return
        self._closed = True
        launcher = self._launcher
        with trio.CancelScope(shield=True):
            try:
                if launcher is not None:
                    ids = sorted({*self._instances, *self._booting, *self._to_terminate})
                    if ids:
                        try:
                            with trio.move_on_after(self.terminate_timeout + 30):
                                await launcher.terminate(ids, wait=True)
                        except EC2Error as exc:
                            log.error(
                                "ec2: could not terminate every instance of cluster %s: %s; "
                                "`bigactor ec2 cleanup` ends what is left",
                                self.cluster_id, exc,
                            )  # fmt: skip
                    for iid in ids:
                        inst = self._instances.get(iid)
                        if inst is not None:
                            inst._end("terminated: the cluster closed")
            finally:
                if launcher is not None:
                    launcher.close()
                self._terminate_wake.set()
                self._poll_wake.set()
                if self._reporter is not None:
                    self._reporter.close()

    # --- what the tests and status pages read -------------------------------------------

    def instances(self) -> list[EC2Instance]:
        """Every instance this cluster started a machine on, in launch order."""
        return list(self._instances.values())

    def timings(self) -> list[dict[str, float]]:
        """Per start: seconds to ``prepare`` (bundle, pins), ``launch`` (RunInstances until
        all run) and ``boot`` (until each serves or failed), and how many became ``ready``."""
        return [dict(t) for t in self._timings]

    # --- starting -----------------------------------------------------------------------

    async def _prepare(self) -> tuple[Bundle, tuple[str, ...]]:
        async with self._prepare_lock:
            if self._bundle is None:
                bundle = await trio.to_thread.run_sync(build_bundle)
                pins = compute_pins(
                    imports=bundle.imports, packages=self.packages, exclude_packages=self.exclude_packages
                )
                log.info(
                    "ec2: code bundle %s (%d files, %d bytes) from %s; %d pinned packages",
                    bundle.digest[:12], bundle.files, bundle.size, ", ".join(bundle.sources), len(pins),
                )  # fmt: skip
                self._bundle, self._pins = bundle, pins
            return self._bundle, self._pins

    def _boot_spec(self, ca: ClusterCA, token: bytes, pins: tuple[str, ...]) -> BootSpec:
        options = shlex.split(self.pip_options)
        index_url, find_links = self.index_url, None
        if self.wheelhouse and index_url:
            options += ["--find-links", self.wheelhouse]
        elif self.wheelhouse:
            find_links = self.wheelhouse
        elif not index_url:
            index_url = "https://pypi.org/simple"
        # A plain-HTTP index is the user's choice (a mirror inside the VPC): pip needs to be
        # told it is trusted, which is only saying so again. HTTPS is checked as usual.
        options += _trusted_hosts(index_url, find_links, self.wheelhouse)
        want = f"python{sys.version_info[0]}.{sys.version_info[1]}"
        setup = f"WANT_PYTHON={shlex.quote(want)}\n{self.setup_commands}" if self.setup_commands else ""
        return BootSpec(
            ca_pem=ca.cert_pem,
            token=token,
            pins=pins,
            index_url=index_url,
            find_links=find_links,
            python=self.python or None,
            port=self.port,
            cache=self.cache,
            log=self.boot_log,
            pip_options=tuple(options),
            setup=setup,
            final=self.final_action,
            enroll_timeout=self.boot_timeout,
        )

    def _worker_config(self, addr: str, bundle: Bundle, env: dict[str, str]) -> WorkerConfig:
        extra: dict[str, str] = {}
        if env:
            # Applied to the worker's os.environ before it serves (``_remote._worker.run``).
            extra["env"] = json.dumps(env)
        if self.spot:
            # A spot worker watches the instance metadata service for an interruption notice
            # and passes it on as a draining notice (``_remote._worker.relay_interruptions``).
            extra[IMDS_EXTRA] = IMDS_URL
        return WorkerConfig(
            key=self.key,
            addr=addr,
            sys_path=bundle.sys_path,
            argv=sys.argv,
            watchdog=self.watchdog,
            log_level=worker_log_level(self.log_level),
            extra=extra,
        )

    async def _boot_one(
        self,
        launched: Launched,
        token: bytes,
        bundle: Bundle,
        env: dict[str, str],
        out: list[EC2Instance | None],
        index: int,
        t_running: float,
    ) -> None:
        """Enroll one instance; put its EC2Instance in ``out[index]`` (ended if it failed)."""
        assert self._ca is not None
        assert self._renewal is not None
        assert self._reporter is not None
        addr = f"tls:{launched.address}:{self.port}"
        iid = launched.instance_id
        inst = EC2Instance(self, launched, addr, _private=_TOKEN)
        self._instances[iid] = inst
        self._booting.discard(iid)
        out[index] = inst
        policy = EnrollPolicy(dial=self.boot_timeout, days=self.cert_days)
        enrolled = None
        try:
            async with trio.open_nursery() as race:

                async def watch() -> None:
                    # The instance ended while booting (its user data failed, say): stop
                    # dialing an agent that will never answer.
                    await inst._ended.wait()
                    race.cancel_scope.cancel()

                race.start_soon(watch)
                enrolled = await enroll_and_ship(
                    addr,
                    self._ca,
                    token,
                    bundle,
                    self._worker_config(addr, bundle, env),
                    identity=self._renewal.identity,
                    policy=policy,
                )
                race.cancel_scope.cancel()
        except MachineStartError as exc:
            # "remote boot failed at stage X: ...": the stage the driver reached with the agent
            await self._boot_failed(inst, exc.message.removeprefix("remote boot failed "), t_running)
            return
        if enrolled is None or inst._ended.is_set():
            why = "at stage enrollment: the instance ended before its boot agent answered"
            await self._boot_failed(inst, why, t_running)
            return
        self._renewal.add(inst, enrolled.cert_pem)
        seconds = trio.current_time() - t_running
        inst.bundle_cached, inst.boot_log = enrolled.bundle_cached, enrolled.boot_log
        self._reporter.update(iid, Stage.READY, f"{addr}, {seconds:.1f} s")
        tail = enrolled.boot_log.splitlines()[-BOOT_LOG_LINES:]
        log.info(
            "ec2: %s (%s) serving %.1f s after it ran; bundle %s; boot log:\n%s",
            iid, addr, seconds, "cached" if enrolled.bundle_cached else "sent",
            "\n".join(f"    {line}" for line in tail),
        )  # fmt: skip

    async def _boot_failed(self, inst: EC2Instance, why: str, t_running: float) -> None:
        """End ``inst`` with a cause naming the stage, time and what the instance showed;
        terminate it."""
        assert self._reporter is not None
        seconds = trio.current_time() - t_running
        ended = inst._cause if inst._ended.is_set() else ""
        console = await self._console(inst.instance_id)
        message = f"boot failed {seconds:.1f} s after the instance ran, {why}"
        if ended:
            message += f" ({ended})"
        self._reporter.update(inst.instance_id, Stage.FAILED, why)
        self._terminate_soon(inst.instance_id)
        inst._boot_failed(message + console)

    async def _console(self, instance_id: str) -> str:
        """The end of the instance's console output (GetConsoleOutput), quoted; or why not."""
        assert self._launcher is not None
        try:
            with trio.move_on_after(15):
                reply = await self._launcher._call(
                    "ec2", "get_console_output", InstanceId=instance_id, Latest=True
                )
                text = str(reply.get("Output") or "")  # botocore decodes its base64
                if not text.strip():
                    return "; the console output is empty so far (EC2 updates it every few minutes)"
                lines = text.rstrip().splitlines()[-CONSOLE_LINES:]
                quoted = "".join(f"\n    {line}" for line in lines)
                return f"; console output (GetConsoleOutput, last {len(lines)} lines):{quoted}"
        except (EC2Error, trio.ClosedResourceError) as exc:
            return f"; no console output: {exc}"
        return "; no console output: GetConsoleOutput did not answer within 15 s"

    # --- background tasks ----------------------------------------------------------------

    def _check_now(self) -> None:
        self._poll_wake.set()

    async def _poll(self) -> None:
        """Poll DescribeInstances for the cluster's live instances; end those EC2 ended."""
        assert self._launcher is not None
        while not self._closed:
            with trio.move_on_after(self.poll_interval):
                await self._poll_wake.wait()
            self._poll_wake = trio.Event()
            live = [inst for inst in self._instances.values() if not inst._ended.is_set()]
            if self._closed or not live:
                continue
            # Those asked about from now on are answered by the next poll, which comes at once.
            asked = [inst for inst in live if inst._asked]
            try:
                states = await self._launcher.states([inst.instance_id for inst in live])
            except trio.ClosedResourceError:
                return
            except EC2Error as exc:
                log.warning("ec2: DescribeInstances failed (retrying in %.0f s): %s", self.poll_interval, exc)
                continue
            for inst in live:
                status = states.get(inst.instance_id)
                if status is not None and status.ended:
                    inst._end(status.cause())
            for inst in asked:
                inst._asked = False

    def _terminate_soon(self, instance_id: str) -> None:
        if instance_id in self._terminated or self._closed:
            return
        self._to_terminate.add(instance_id)
        self._terminate_wake.set()

    async def _terminator(self) -> None:
        """Terminate what ``kill`` and failed boots ask for, many instances per call."""
        assert self._launcher is not None
        while not self._closed:
            await self._terminate_wake.wait()
            self._terminate_wake = trio.Event()
            batch = sorted(self._to_terminate - self._terminated)
            if self._closed or not batch:
                continue
            try:
                await self._launcher.terminate(batch, wait=False)
            except trio.ClosedResourceError:
                return
            except EC2Error as exc:
                log.warning("ec2: TerminateInstances failed (retried at close): %s", exc)
                continue
            self._terminated.update(batch)
            self._to_terminate.difference_update(batch)
            self._poll_wake.set()

    async def _refresh(self) -> None:
        while not self._closed:
            await trio.sleep(PROGRESS_REFRESH)
            if self._reporter is not None and any(
                c for s, c in self._reporter.counts().items() if s < Stage.READY
            ):
                self._reporter.refresh()
