"""Launching, watching and terminating EC2 instances with boto3 (:class:`Launcher`).

Choices, and why:

* **All or nothing.** On-demand and spot launches are one RunInstances call with
  ``MinCount = MaxCount = n``: EC2 starts all ``n`` instances or none, so a cluster never runs
  short without saying so. An instance that dies before it runs fails the whole launch, and the
  others are terminated.
* **Spot through RunInstances** (``InstanceMarketOptions``: one-time, terminate on
  interruption), not RequestSpotInstances: one code path for both markets, the same
  all-or-nothing count, tags applied at launch, no request objects to cancel or let expire, and
  boto3 base64-encodes ``UserData`` (it does not for RequestSpotInstances'
  ``LaunchSpecification``). The spot price cap is ``max_price``, else AWS's default: the
  on-demand price.
* **Tags at launch** (``TagSpecifications`` on the instance and its volumes), never afterwards:
  an instance is never untagged, so ``bigactor ec2 ls``/``cleanup`` always find it.
* **Nothing left running.** ``InstanceInitiatedShutdownBehavior=terminate`` (a worker that
  powers off is terminated, not stopped); a launch cancelled or failed after RunInstances
  terminates what it started; :meth:`Launcher.terminate` is explicit and idempotent.
* **The address** of an instance is its public IP, else its private IP (a VPC subnet that
  assigns no public IP), or always its private IP with ``prefer_private_ip``. Never a DNS name:
  the worker's certificate names the IP the driver dials.
* **Reservations are flattened**: DescribeInstances may split one launch over several.
* **Throttling.** Every call waits on one token bucket per launcher (1 call/s, bursts of 2, as
  bigmachine). RequestLimitExceeded and InsufficientInstanceCapacity are retried with backoff
  (1 s doubling to 10 s) for ``launch_retry_for`` seconds, then raised as :class:`EC2Error`
  naming AWS's code. Nothing is memoised from a failure: each launch resolves and checks its
  AMI again. Closing the launcher wakes every waiter with an error; nothing waits forever.
* boto3 blocks, so every call runs in a worker thread (``trio.to_thread``). Calls that change
  nothing may be abandoned when cancelled; RunInstances and TerminateInstances are waited for,
  so their outcome is always known.
"""

from __future__ import annotations

import datetime
import logging
import os
import sys
import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import attrs
import trio

from ._config import EC2Config
from ._errors import EC2Error
from ._progress import LaunchProgress, Stage
from ._types import InstanceType

log = logging.getLogger("bigactor.ec2")

T = TypeVar("T")

#: AWS errors that mean "not now" rather than "never"
RETRIED = frozenset({"RequestLimitExceeded", "InsufficientInstanceCapacity", "Throttling"})
#: seconds between DescribeInstances polls while instances start or terminate
POLL = 2.0
#: how long a failed launch may spend terminating what it started
CLEANUP_GRACE = 60.0
#: AWS's limit on user data, before base64
USER_DATA_LIMIT = 16 * 1024
#: AWS's limit on a tag value
TAG_VALUE_LIMIT = 256
LIVE_STATES = ("pending", "running", "stopping", "stopped", "shutting-down")
TAG_CLUSTER = "bigactor:cluster"
TAG_USER = "bigactor:user"
TAG_PROGRAM = "bigactor:program"


def _launch_waits() -> Iterable[float]:
    # Longer than the cluster's own retry waits (1 s x1.5 to 5 s): AWS asks for exponential
    # backoff on throttling, and capacity comes back in tens of seconds, not seconds.
    wait = 1.0
    while True:
        yield wait
        wait = min(wait * 2, 10.0)


class TokenBucket:
    """A rate limiter shared by a launcher's calls: ``rate`` per second, bursts of ``burst``.

    :meth:`close` makes every waiter, present and future, raise ``trio.ClosedResourceError``
    at once (bigmachine's limiter wedged its callers after shutdown).
    """

    def __init__(self, rate: float = 1.0, burst: int = 2) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._stamp: float | None = None
        self._lock = trio.Lock()  # FIFO: waiters are served in arrival order
        self._closed = trio.Event()

    async def acquire(self) -> None:
        """Take one token, waiting for it; ClosedResourceError once closed. Cancellation
        while waiting takes no token."""
        async with self._lock:
            while True:
                if self._closed.is_set():
                    raise trio.ClosedResourceError("the EC2 launcher is closed")
                now = trio.current_time()
                if self._stamp is not None:
                    self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
                self._stamp = now
                if self._tokens >= 1.0:
                    self._tokens -= 1.0
                    return
                with trio.move_on_after((1.0 - self._tokens) / self._rate):
                    await self._closed.wait()

    def close(self) -> None:
        """Refuse every later call and wake every waiter; idempotent."""
        self._closed.set()


@attrs.frozen
class Launched:
    """One instance a launch started, running."""

    instance_id: str
    private_ip: str | None
    public_ip: str | None
    #: what the driver dials (see the module docstring for the rule)
    address: str
    zone: str
    instance_type: str
    spot: bool
    launched_at: datetime.datetime
    #: the most it costs per hour, USD: the on-demand price, or the spot cap; None if unknown
    price: float | None


@attrs.frozen
class InstanceStatus:
    """What DescribeInstances says of one instance; ``state`` is "gone" when EC2 no longer
    lists it (terminated long enough ago)."""

    state: str
    reason_code: str | None = None
    reason_message: str | None = None
    spot: bool = False

    @property
    def ended(self) -> bool:
        """Whether the instance is terminating, stopping, or gone: its machine cannot live."""
        return self.state in ("shutting-down", "terminated", "stopping", "stopped", "gone")

    def cause(self) -> str:
        """Why the instance ended, for a machine's error ("terminated by AWS (...)")."""
        code = self.reason_code or ""
        why = f" ({code}: {self.reason_message})" if code else ""
        if code.startswith("Server."):
            return f"{self.state} by AWS{why}"
        if code == "Client.InstanceInitiatedShutdown":
            return f"{self.state} by its own shutdown{why}"
        if code == "Client.UserInitiatedShutdown":
            # AWS's meaning: TerminateInstances (or StopInstances) through the API or console.
            return f"{self.state} through the EC2 API (TerminateInstances by a user or program){why}"
        if self.state == "gone":
            return "no longer listed by EC2 (terminated)"
        return f"{self.state}{why}"


@attrs.frozen
class Listed:
    """One instance bigactor launched, as ``bigactor ec2 ls`` shows it."""

    instance_id: str
    state: str
    instance_type: str
    cluster_id: str
    user: str
    name: str
    zone: str
    address: str | None
    spot: bool
    launched_at: datetime.datetime | None


def address_of(instance: dict[str, Any], prefer_private: bool = False) -> str | None:
    """The address to dial: the public IP unless ``prefer_private`` or there is none, else the
    private IP (never a DNS name)."""
    public, private = instance.get("PublicIpAddress"), instance.get("PrivateIpAddress")
    if prefer_private:
        return private or public
    return public or private


def _truncate(text: str, limit: int = TAG_VALUE_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def launch_tags(
    config: EC2Config, cluster_id: str, argv: Sequence[str] | None = None
) -> list[dict[str, str]]:
    """The tags of every instance and volume of a launch: Name (user, program and its
    arguments), ``bigactor=true``, ``bigactor:cluster``, ``bigactor:user``,
    ``bigactor:program``, and the config's own tags."""
    argv = list(sys.argv if argv is None else argv)
    program = " ".join([os.path.basename(argv[0]) if argv else "python", *argv[1:]])
    suffix = " (bigactor)"
    name = _truncate(f"{config.user}:{program}", TAG_VALUE_LIMIT - len(suffix)) + suffix
    tags = {
        "Name": name,
        "bigactor": "true",
        TAG_CLUSTER: cluster_id,
        TAG_USER: config.user,
        TAG_PROGRAM: _truncate(program),
        **config.tags,
    }
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def _aws_code(exc: BaseException) -> str | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("Error", {}).get("Code")
        return str(code) if code else None
    return None


def _aws_message(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Message") or exc)
    return str(exc)


def _flatten(reply: dict[str, Any]) -> list[dict[str, Any]]:
    return [i for r in reply.get("Reservations", ()) for i in r.get("Instances", ())]


def _tag(instance: dict[str, Any], key: str) -> str:
    for t in instance.get("Tags", ()):
        if t.get("Key") == key:
            return str(t.get("Value", ""))
    return ""


def _status(instance: dict[str, Any]) -> InstanceStatus:
    reason = instance.get("StateReason") or {}
    return InstanceStatus(
        state=instance["State"]["Name"],
        reason_code=reason.get("Code"),
        reason_message=reason.get("Message"),
        spot=instance.get("InstanceLifecycle") == "spot",
    )


def _chunks(items: Sequence[T], size: int) -> Iterable[Sequence[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class Launcher:
    """Starts, watches and terminates the instances of one cluster (``cluster_id``).

    Args:
        config: the system's options.
        cluster_id: the value of every instance's ``bigactor:cluster`` tag.
        session: a factory of ``boto3.session.Session`` (for tests); default
            ``boto3.session.Session(region_name=config.region)``.
        limiter: the token bucket every call waits on (default 1/s, bursts of 2).

    Every method may be cancelled; what cancellation leaves behind is in its docstring. Call
    :meth:`close` when done.
    """

    def __init__(
        self,
        config: EC2Config,
        cluster_id: str,
        *,
        session: Callable[[], Any] | None = None,
        limiter: TokenBucket | None = None,
    ) -> None:
        self.config = config
        self.cluster_id = cluster_id
        self._session_factory = session
        self.limiter = limiter if limiter is not None else TokenBucket()
        self._clients: dict[str, Any] = {}
        self._region: str | None = None
        self._client_lock = trio.Lock()
        self._offered = False  # memoised only once it succeeded

    # --- plumbing -----------------------------------------------------------------------

    async def _client(self, service: str) -> Any:
        async with self._client_lock:
            if service not in self._clients:
                self._clients[service] = await trio.to_thread.run_sync(self._make_client, service)
            return self._clients[service]

    def _make_client(self, service: str) -> Any:
        import boto3.session
        import botocore.config

        session = (
            self._session_factory()
            if self._session_factory
            else boto3.session.Session(region_name=self.config.region)
        )
        region = self.config.region or session.region_name
        if not region:
            raise EC2Error(
                "configure",
                "NoRegion",
                "no AWS region: pass region= (or set BIGACTOR_EC2_REGION or AWS_DEFAULT_REGION)",
            )
        self._region = region
        # botocore retries a call that did not reach AWS or came back 5xx, with the same
        # ClientToken, so a RunInstances retried there never starts twice; throttling and
        # capacity are retried by the launch loop, which knows the deadline.
        cfg = botocore.config.Config(
            retries={"mode": "standard", "max_attempts": 3},
            connect_timeout=10,
            read_timeout=60,
            user_agent_extra="bigactor",
        )
        return session.client(service, region_name=region, config=cfg)

    @property
    def region(self) -> str:
        """The region calls go to (known once the first call was made)."""
        if self._region is None:
            raise RuntimeError("the launcher has made no call yet")
        return self._region

    async def _call(self, service: str, method: str, /, *, changes: bool = False, **kwargs: Any) -> Any:
        """One rate-limited boto3 call in a thread; AWS's errors come out as EC2Error with
        AWS's code. A call that ``changes`` something is waited for even when cancelled (so
        its effect is known); others are abandoned."""
        import botocore.exceptions

        client = await self._client(service)
        await self.limiter.acquire()
        fn = getattr(client, method)
        try:
            return await trio.to_thread.run_sync(lambda: fn(**kwargs), abandon_on_cancel=not changes)
        except botocore.exceptions.ClientError as exc:
            operation = "".join(w.title() for w in method.split("_"))
            raise EC2Error(operation, _aws_code(exc) or "Error", _aws_message(exc)) from exc
        except botocore.exceptions.BotoCoreError as exc:  # no answer: credentials, network
            operation = "".join(w.title() for w in method.split("_"))
            raise EC2Error(operation, type(exc).__name__, str(exc)) from exc

    def close(self) -> None:
        """Stop: later calls, and calls waiting for the rate limiter, raise
        ``trio.ClosedResourceError``; idempotent. The instances are left as they are."""
        self.limiter.close()
        for client in self._clients.values():
            close = getattr(client, "close", None)
            if close is not None:
                close()
        self._clients.clear()

    # --- launching ----------------------------------------------------------------------

    async def check(self) -> tuple[InstanceType, dict[str, Any]]:
        """Check before launching: the region offers the instance type, and the AMI exists
        with an architecture the type runs. Returns the type and the image (DescribeImages).

        The AMI is resolved (SSM, unless ``ami`` is set) and described on every call, so a
        failure is never remembered; only a successful offering check is."""
        itype = self.config.instance()
        await self._client("ec2")  # resolves the region
        if not self._offered:
            reply = await self._call(
                "ec2",
                "describe_instance_type_offerings",
                LocationType="region",
                Filters=[
                    {"Name": "location", "Values": [self.region]},
                    {"Name": "instance-type", "Values": [itype.name]},
                ],
            )
            if not reply.get("InstanceTypeOfferings"):
                raise EC2Error(
                    "DescribeInstanceTypeOfferings",
                    "InstanceTypeNotOffered",
                    f"instance type {itype.name} is not offered in region {self.region}; "
                    "pick another instance_type or region",
                )
            self._offered = True
        arch = "x86_64" if "x86_64" in itype.architectures else itype.architectures[0]
        ami = self.config.ami
        if ami is None:
            name = self.config.ami_parameter.format(arch=arch)
            try:
                reply = await self._call("ssm", "get_parameter", Name=name)
            except EC2Error as exc:
                raise EC2Error(
                    exc.operation, exc.code, f"{name}: {exc.message}; pass ami= to skip SSM"
                ) from exc
            ami = str(reply["Parameter"]["Value"])
        try:
            images = (await self._call("ec2", "describe_images", ImageIds=[ami])).get("Images", [])
        except EC2Error as exc:
            raise EC2Error(exc.operation, exc.code, f"{ami}: {exc.message}") from exc
        image = next((i for i in images if i.get("ImageId") == ami), None)
        if image is None:
            raise EC2Error("DescribeImages", "ImageNotFound", f"AMI {ami} not found in region {self.region}")
        image_arch = image.get("Architecture")
        if image_arch and image_arch not in itype.architectures:
            raise EC2Error(
                "DescribeImages",
                "ArchitectureMismatch",
                f"AMI {ami} is {image_arch}, but {itype.name} runs {', '.join(itype.architectures)}",
            )
        return itype, image

    def run_params(
        self,
        n: int,
        user_data: bytes,
        itype: InstanceType,
        image: dict[str, Any],
        argv: Sequence[str] | None = None,
    ) -> dict[str, Any]:
        """The RunInstances arguments of a launch of ``n`` (without its ClientToken)."""
        cfg = self.config
        tags = launch_tags(cfg, self.cluster_id, argv)
        params: dict[str, Any] = {
            "ImageId": image["ImageId"],
            "InstanceType": itype.name,
            "MinCount": n,
            "MaxCount": n,
            # boto3 base64-encodes it.
            "UserData": user_data,
            "InstanceInitiatedShutdownBehavior": "terminate",
            "BlockDeviceMappings": [
                {
                    "DeviceName": image.get("RootDeviceName") or "/dev/xvda",
                    "Ebs": {"VolumeSize": cfg.disk_gib, "VolumeType": "gp3", "DeleteOnTermination": True},
                }
            ],
            "TagSpecifications": [
                {"ResourceType": "instance", "Tags": tags},
                {"ResourceType": "volume", "Tags": tags},
            ],
            # IMDSv2 only, one hop: a container on the instance cannot reach the metadata.
            "MetadataOptions": {
                "HttpTokens": "required",
                "HttpEndpoint": "enabled",
                "HttpPutResponseHopLimit": 1,
            },
        }
        if itype.ebs_optimized:
            params["EbsOptimized"] = True
        if cfg.subnet_id:
            params["SubnetId"] = cfg.subnet_id
        if cfg.security_group_ids:
            params["SecurityGroupIds"] = list(cfg.security_group_ids)
        if cfg.instance_profile:
            key = "Arn" if cfg.instance_profile.startswith("arn:") else "Name"
            params["IamInstanceProfile"] = {key: cfg.instance_profile}
        if cfg.key_name:
            params["KeyName"] = cfg.key_name
        if cfg.spot:
            spot: dict[str, Any] = {
                "SpotInstanceType": "one-time",
                "InstanceInterruptionBehavior": "terminate",
            }
            if cfg.max_price is not None:
                spot["MaxPrice"] = f"{cfg.max_price:.4f}"
            params["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": spot}
        return params

    async def launch(
        self,
        n: int,
        user_data: bytes,
        *,
        progress: LaunchProgress | None = None,
        argv: Sequence[str] | None = None,
    ) -> list[Launched]:
        """Launch exactly ``n`` instances booting ``user_data`` and wait until all run.

        All or nothing: EC2 starts all ``n`` or none, and if one ends before it runs, the
        others are terminated and :class:`EC2Error` says which and why. RequestLimitExceeded
        and InsufficientInstanceCapacity are retried for ``config.launch_retry_for`` seconds.
        ``argv`` (default ``sys.argv``) names the program in the tags.

        Cancelled after RunInstances, it terminates what it started (shielded, for at most a
        minute) before the cancellation goes on.
        """
        if n < 1:
            raise ValueError(f"launch needs n >= 1, not {n}")
        if len(user_data) > USER_DATA_LIMIT:
            raise ValueError(f"user data is {len(user_data)} bytes; EC2 takes at most {USER_DATA_LIMIT}")
        if progress is not None:
            progress.requested(n)
        try:
            itype, image = await self.check()
        except EC2Error as exc:
            if progress is not None:
                progress.update(f"launch of {n}", Stage.FAILED, str(exc))
            raise
        params = self.run_params(n, user_data, itype, image, argv)
        deadline = trio.current_time() + self.config.launch_retry_for
        waits = iter(_launch_waits())
        while True:
            try:
                reply = await self._call(
                    "ec2", "run_instances", changes=True, ClientToken=uuid.uuid4().hex, **params
                )
                break
            except EC2Error as exc:
                code = exc.code
                wait = next(waits)
                if code not in RETRIED:
                    raise EC2Error("RunInstances", code, self._hint(code, exc.message)) from exc
                if trio.current_time() + wait > deadline:
                    raise EC2Error(
                        "RunInstances",
                        code,
                        f"{exc.message} (still failing after retrying for "
                        f"{self.config.launch_retry_for:.0f} s; try another instance type, region or "
                        "subnet, or later)",
                    ) from exc
                log.info("RunInstances: %s, retrying in %.0f s", code, wait)
                await trio.sleep(wait)
        instances = list(reply.get("Instances", ()))
        ids = [i["InstanceId"] for i in instances]
        if progress is not None:
            for i in ids:
                progress.update(i, Stage.PENDING)
        try:
            running = await self._wait_running(ids, progress)
        except BaseException:
            with trio.CancelScope(shield=True), trio.move_on_after(CLEANUP_GRACE):
                await self.terminate(ids, wait=False)
            raise
        price = (
            self.config.max_price if self.config.spot and self.config.max_price else itype.price(self.region)
        )
        out = []
        for iid in ids:
            inst = running[iid]
            address = address_of(inst, self.config.prefer_private_ip)
            assert address is not None  # _wait_running waits for one
            out.append(
                Launched(
                    instance_id=iid,
                    private_ip=inst.get("PrivateIpAddress"),
                    public_ip=inst.get("PublicIpAddress"),
                    address=address,
                    zone=inst.get("Placement", {}).get("AvailabilityZone", ""),
                    instance_type=inst.get("InstanceType", itype.name),
                    spot=inst.get("InstanceLifecycle") == "spot",
                    launched_at=inst.get("LaunchTime") or datetime.datetime.now(datetime.UTC),
                    price=price,
                )
            )
        return out

    def _hint(self, code: str, message: str) -> str:
        hints = {
            "UnauthorizedOperation": "the credentials may not launch instances (ec2:RunInstances)",
            "InvalidParameterValue": "check instance_type, subnet_id, security_group_ids",
            "InvalidSubnetID.NotFound": f"subnet {self.config.subnet_id} is not in region {self._region}",
            "InvalidGroup.NotFound": "a security group is not in the subnet's VPC",
            "VcpuLimitExceeded": "the account's vCPU quota for this family is used up; ask AWS for more",
            "MaxSpotInstanceCountExceeded": "the account's spot quota is used up; use on-demand",
        }
        hint = hints.get(code)
        return f"{message} ({hint})" if hint else message

    async def _wait_running(
        self, ids: list[str], progress: LaunchProgress | None
    ) -> dict[str, dict[str, Any]]:
        """Poll until every instance runs and has an address; EC2Error if one ends first."""
        seen: dict[str, str] = {}
        while True:
            found = await self._describe(ids)
            for iid in ids:
                inst = found.get(iid)
                if inst is None:
                    continue  # not listed yet: EC2 is eventually consistent
                status = _status(inst)
                if status.ended:
                    if progress is not None:
                        progress.update(iid, Stage.FAILED, status.cause())
                    raise EC2Error(
                        "RunInstances", status.reason_code or status.state, f"instance {iid} {status.cause()}"
                    )
                if seen.get(iid) != status.state and status.state == "running" and progress is not None:
                    progress.update(iid, Stage.RUNNING, address_of(inst, self.config.prefer_private_ip) or "")
                seen[iid] = status.state
            if all(
                iid in found
                and found[iid]["State"]["Name"] == "running"
                and address_of(found[iid], self.config.prefer_private_ip)
                for iid in ids
            ):
                return found
            await trio.sleep(POLL)

    async def _describe(
        self, ids: Sequence[str] = (), filters: list[dict[str, Any]] | None = None
    ) -> dict[str, dict[str, Any]]:
        """DescribeInstances by instance-id filter (which, unlike InstanceIds, does not fail on
        an ID EC2 does not know yet or any more), flattened over reservations and pages."""
        out: dict[str, dict[str, Any]] = {}
        all_filters = list(filters or [])
        chunks: Iterable[Sequence[str]] = _chunks(list(ids), 200) if ids else [()]
        for chunk in chunks:
            f = all_filters + ([{"Name": "instance-id", "Values": list(chunk)}] if chunk else [])
            token: str | None = None
            while True:
                kwargs: dict[str, Any] = {"Filters": f}
                if token:
                    kwargs["NextToken"] = token
                reply = await self._call("ec2", "describe_instances", **kwargs)
                for inst in _flatten(reply):
                    out[inst["InstanceId"]] = inst
                token = reply.get("NextToken")
                if not token:
                    break
        return out

    # --- watching and ending ------------------------------------------------------------

    async def states(self, ids: Sequence[str]) -> dict[str, InstanceStatus]:
        """The state of each instance (with AWS's StateReason); "gone" for an ID EC2 no longer
        lists. Rate-limited like every call; cancelling it abandons the call."""
        found = await self._describe(ids)
        return {iid: _status(found[iid]) if iid in found else InstanceStatus("gone") for iid in ids}

    async def terminate(self, ids: Sequence[str], *, wait: bool = True) -> None:
        """Terminate the instances; idempotent (ended or unknown IDs are fine). With ``wait``,
        return once all are terminated, or raise EC2Error after ``config.terminate_timeout``.

        Cancelled, the TerminateInstances calls already sent still complete."""
        ids = list(dict.fromkeys(ids))
        if not ids:
            return
        status = await self.states(ids)
        live = [i for i in ids if status[i].state not in ("terminated", "gone")]
        for chunk in _chunks(live, 1000):
            try:
                await self._call("ec2", "terminate_instances", changes=True, InstanceIds=list(chunk))
            except EC2Error as exc:
                if exc.code != "InvalidInstanceID.NotFound":  # already gone: that is the goal
                    raise
        if not wait:
            return
        left: dict[str, InstanceStatus] = {}
        with trio.move_on_after(self.config.terminate_timeout):
            while True:
                left = {
                    i: s for i, s in (await self.states(ids)).items() if s.state not in ("terminated", "gone")
                }
                if not left:
                    return
                await trio.sleep(POLL)
        states = ", ".join(f"{i} {s.state}" for i, s in sorted(left.items()))
        raise EC2Error(
            "TerminateInstances",
            "Timeout",
            f"not terminated after {self.config.terminate_timeout:.0f} s: {states}; "
            "check with `bigactor ec2 ls` and end them with `bigactor ec2 cleanup`",
        )

    async def list_instances(self, cluster_id: str | None = None, all_users: bool = False) -> list[Listed]:
        """bigactor's instances not yet terminated: the config's user's, or everybody's with
        ``all_users``; only cluster ``cluster_id``'s if given. Oldest first."""
        filters = [
            {"Name": "tag:bigactor", "Values": ["true"]},
            {"Name": "instance-state-name", "Values": list(LIVE_STATES)},
        ]
        if not all_users:
            filters.append({"Name": f"tag:{TAG_USER}", "Values": [self.config.user]})
        if cluster_id is not None:
            filters.append({"Name": f"tag:{TAG_CLUSTER}", "Values": [cluster_id]})
        found = await self._describe(filters=filters)
        out = [
            Listed(
                instance_id=iid,
                state=inst["State"]["Name"],
                instance_type=inst.get("InstanceType", ""),
                cluster_id=_tag(inst, TAG_CLUSTER),
                user=_tag(inst, TAG_USER),
                name=_tag(inst, "Name"),
                zone=inst.get("Placement", {}).get("AvailabilityZone", ""),
                address=address_of(inst),
                spot=inst.get("InstanceLifecycle") == "spot",
                launched_at=inst.get("LaunchTime"),
            )
            for iid, inst in found.items()
        ]
        far = datetime.datetime.max.replace(tzinfo=datetime.UTC)
        return sorted(out, key=lambda x: (x.launched_at or far, x.instance_id))

    async def cleanup(
        self, cluster_id: str | None = None, all_users: bool = False, wait: bool = True
    ) -> list[str]:
        """Terminate what :meth:`list_instances` lists; returns their IDs."""
        ids = [x.instance_id for x in await self.list_instances(cluster_id, all_users)]
        await self.terminate(ids, wait=wait)
        return ids
