"""The EC2 launcher against moto's EC2 server on loopback, and botocore's Stubber for the
errors moto cannot produce (RequestLimitExceeded, InsufficientInstanceCapacity).

No test can reach AWS: every AWS endpoint variable points at 127.0.0.1 before any client is
made, the credentials are fake, and the shared config and metadata lookups are switched off.
"""

from __future__ import annotations

import base64
import datetime
import logging
import os
import pickle
from collections.abc import Iterator
from typing import Any

import pytest
import trio
import trio.testing

from bigactor.systems.ec2 import (
    EC2Config,
    EC2Error,
    InstanceStatus,
    Launcher,
    LaunchProgress,
    Stage,
    TokenBucket,
    address_of,
    launch_tags,
)

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto")
from botocore.stub import Stubber  # noqa: E402

REGION = "us-west-2"
#: the port of nothing: a client a test forgot to point at moto fails here, never at AWS
NOWHERE = "http://127.0.0.1:9"


def _offline_env(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    for var in list(os.environ):
        if var.startswith("AWS_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)  # every service
    monkeypatch.setenv("AWS_ENDPOINT_URL_EC2", endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL_SSM", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def aws(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> str:
    _offline_env(monkeypatch, moto_url)
    return moto_url


def _ec2() -> Any:
    return boto3.client("ec2", region_name=REGION)


def _config(**kw: Any) -> EC2Config:
    kw.setdefault("region", REGION)
    kw.setdefault("user", "tester")
    return EC2Config(**kw)


def FAST() -> TokenBucket:
    """A limiter that never waits in practice: moto needs no throttling."""
    return TokenBucket(rate=1000.0, burst=1000)


def _ami() -> str:
    return str(_ec2().describe_images(Owners=["amazon"])["Images"][0]["ImageId"])


def _instances(cluster: str) -> list[dict[str, Any]]:
    reply = _ec2().describe_instances(Filters=[{"Name": "tag:bigactor:cluster", "Values": [cluster]}])
    return [i for r in reply["Reservations"] for i in r["Instances"]]


# --- against moto ---------------------------------------------------------------------------


@pytest.mark.slow
async def test_launch_starts_exactly_n_tagged_at_launch(aws: str) -> None:
    """Three on-demand instances run, tagged at launch, terminating on shutdown, with the user data."""
    config = _config(ami=_ami(), tags={"team": "infra"}, disk_gib=20)
    launcher = Launcher(config, "c-exact")
    user_data = b"#!/bin/sh\necho \x00binary\xff\n"
    launched = await launcher.launch(3, user_data, argv=["/home/u/prog.py", "--x", "1"])
    launcher.close()
    assert len(launched) == 3
    ec2 = _ec2()
    for m in launched:
        assert m.instance_type == "m5.large"
        assert not m.spot
        assert m.address == m.public_ip  # moto's default subnet gives public IPs
        assert m.private_ip
        assert m.zone.startswith(REGION)
        assert m.price == config.instance().price(REGION)
        assert isinstance(m.launched_at, datetime.datetime)
        attr = ec2.describe_instance_attribute(InstanceId=m.instance_id, Attribute="userData")
        assert base64.b64decode(attr["UserData"]["Value"]) == user_data
        attr = ec2.describe_instance_attribute(
            InstanceId=m.instance_id, Attribute="instanceInitiatedShutdownBehavior"
        )
        assert attr["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate"
    found = _instances("c-exact")
    assert {i["InstanceId"] for i in found} == {m.instance_id for m in launched}
    tags = {t["Key"]: t["Value"] for t in found[0]["Tags"]}
    assert tags == {
        "Name": "tester:prog.py --x 1 (bigactor)",
        "bigactor": "true",
        "bigactor:cluster": "c-exact",
        "bigactor:user": "tester",
        "bigactor:program": "prog.py --x 1",
        "team": "infra",
    }
    volume_ids = [b["Ebs"]["VolumeId"] for b in found[0]["BlockDeviceMappings"]]
    volumes = ec2.describe_volumes(VolumeIds=volume_ids)["Volumes"]
    assert [v["Size"] for v in volumes] == [20]


@pytest.mark.slow
async def test_spot_launch_uses_run_instances_market_options(aws: str) -> None:
    """A spot launch gives spot instances, priced at the configured cap."""
    launcher = Launcher(_config(ami=_ami(), spot=True, max_price=0.05), "c-spot", limiter=FAST())
    launched = await launcher.launch(2, b"spot")
    launcher.close()
    assert [m.spot for m in launched] == [True, True]
    assert {m.price for m in launched} == {0.05}
    assert {i.get("InstanceLifecycle") for i in _instances("c-spot")} == {"spot"}


@pytest.mark.slow
async def test_subnet_without_public_ip_gives_private_address(aws: str) -> None:
    """In a VPC subnet that assigns no public IP, the address is the private IP."""
    ec2 = _ec2()
    vpc = ec2.create_vpc(CidrBlock="10.77.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.77.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName="bigactor-test", Description="t", VpcId=vpc)["GroupId"]
    launcher = Launcher(
        _config(ami=_ami(), subnet_id=subnet, security_group_ids=[group]), "c-private", limiter=FAST()
    )
    (m,) = await launcher.launch(1, b"x")
    launcher.close()
    assert m.public_ip is None
    assert m.address == m.private_ip
    assert m.address.startswith("10.77.1.")
    (inst,) = _instances("c-private")
    assert inst["SubnetId"] == subnet
    assert [g["GroupId"] for g in inst["SecurityGroups"]] == [group]


def test_address_rule_prefers_public_unless_asked() -> None:
    """The public IP wins unless prefer_private; without one the private IP; never DNS."""
    both = {"PublicIpAddress": "3.3.3.3", "PrivateIpAddress": "10.0.0.1", "PublicDnsName": "x.aws"}
    assert address_of(both) == "3.3.3.3"
    assert address_of(both, prefer_private=True) == "10.0.0.1"
    assert address_of({"PrivateIpAddress": "10.0.0.1"}) == "10.0.0.1"
    assert address_of({"PublicDnsName": "x.aws"}) is None


@pytest.mark.slow
async def test_ami_resolved_through_ssm_parameter(aws: str) -> None:
    """Without ami=, the AL2023 AMI of the type's architecture comes from the public SSM parameter."""
    launcher = Launcher(_config(), "c-ssm", limiter=FAST())
    itype, image = await launcher.check()
    ssm = boto3.client("ssm", region_name=REGION)
    want = ssm.get_parameter(Name="/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64")
    assert image["ImageId"] == want["Parameter"]["Value"]
    assert itype.name == "m5.large"
    launcher.close()


@pytest.mark.slow
async def test_unknown_ami_is_a_clear_error_before_launch(aws: str) -> None:
    """An AMI EC2 does not know fails the check, and nothing is launched."""
    launcher = Launcher(_config(ami="ami-00000000000000000"), "c-noami", limiter=FAST())
    with pytest.raises(EC2Error) as info:
        await launcher.launch(1, b"x")
    launcher.close()
    assert info.value.operation == "DescribeImages"
    assert "ami-00000000000000000" in str(info.value)
    assert _instances("c-noami") == []


@pytest.mark.slow
async def test_type_not_offered_in_region_is_a_clear_error(aws: str) -> None:
    """A type the region does not offer fails before anything is launched."""
    launcher = Launcher(_config(instance_type="hpc7g.4xlarge", ami=_ami()), "c-offer", limiter=FAST())
    with pytest.raises(EC2Error, match=r"hpc7g.4xlarge is not offered in region us-west-2"):
        await launcher.launch(1, b"x")
    launcher.close()
    assert _instances("c-offer") == []


@pytest.mark.slow
async def test_terminate_waits_and_is_idempotent(aws: str) -> None:
    """terminate ends the instances, waits for terminated, and may be repeated."""
    launcher = Launcher(_config(ami=_ami()), "c-term", limiter=FAST())
    ids = [m.instance_id for m in await launcher.launch(2, b"x")]
    await launcher.terminate(ids)
    await launcher.terminate(ids)
    await launcher.terminate([*ids, "i-0123456789abcdef0"])
    states = await launcher.states([*ids, "i-0123456789abcdef0"])
    launcher.close()
    assert [states[i].state for i in ids] == ["terminated", "terminated"]
    assert all(states[i].ended for i in ids)
    assert states["i-0123456789abcdef0"] == InstanceStatus("gone")


@pytest.mark.slow
async def test_list_and_cleanup_by_tags(aws: str) -> None:
    """ls finds a user's live instances by tag (one cluster, or all users'); cleanup ends them."""
    mine = Launcher(_config(ami=_ami(), user="ann"), "c-ann", limiter=FAST())
    theirs = Launcher(_config(ami=_ami(), user="bob"), "c-bob", limiter=FAST())
    a = [m.instance_id for m in await mine.launch(2, b"x")]
    b = [m.instance_id for m in await theirs.launch(1, b"x")]
    assert {x.instance_id for x in await mine.list_instances()} >= set(a)
    assert not {x.instance_id for x in await mine.list_instances()} & set(b)
    assert {x.instance_id for x in await mine.list_instances("c-ann")} == set(a)
    everyone = {x.instance_id for x in await mine.list_instances(all_users=True)}
    assert everyone >= set(a) | set(b)
    (listed,) = await mine.list_instances("c-bob", all_users=True)
    assert (listed.user, listed.cluster_id, listed.state) == ("bob", "c-bob", "running")
    assert sorted(await mine.cleanup("c-ann")) == sorted(a)
    assert await mine.list_instances("c-ann") == []
    assert [x.instance_id for x in await theirs.list_instances("c-bob")] == b
    await theirs.cleanup("c-bob")
    mine.close()
    theirs.close()


@pytest.mark.slow
async def test_progress_sees_each_instance_run(aws: str, caplog: pytest.LogCaptureFixture) -> None:
    """A launch reports requested, pending and running for each instance."""
    caplog.set_level(logging.INFO, "bigactor.ec2")
    progress = LaunchProgress(tty=False)
    launcher = Launcher(_config(ami=_ami()), "c-progress", limiter=FAST())
    launched = await launcher.launch(2, b"x", progress=progress)
    launcher.close()
    assert progress.counts()[Stage.RUNNING] == 2
    text = caplog.text
    for m in launched:
        assert f"{m.instance_id} pending" in text
        assert f"{m.instance_id} running ({m.address})" in text


# --- the errors moto cannot produce, through Stubber ----------------------------------------


class _StubSession:
    """A boto3 session whose clients are the given (stubbed) ones."""

    region_name = REGION

    def __init__(self, **clients: Any) -> None:
        self.clients = clients

    def client(self, service: str, **kwargs: Any) -> Any:
        return self.clients[service]


@pytest.fixture
def autojump_clock() -> trio.testing.MockClock:
    """Virtual time that jumps only once every task has waited a while in real time.

    A boto3 call runs in a thread; pytest-trio's clock (threshold 0) would jump while it runs
    and fire timeouts the real call never reached (a failed launch's cleanup, cut short).
    """
    return trio.testing.MockClock(autojump_threshold=0.5)


@pytest.fixture
def stubbed(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Stubber]]:
    _offline_env(monkeypatch, NOWHERE)
    client = boto3.client("ec2", region_name=REGION)
    with Stubber(client) as stub:
        yield client, stub


def _stub_checks(stub: Stubber) -> None:
    stub.add_response(
        "describe_instance_type_offerings",
        {
            "InstanceTypeOfferings": [
                {"InstanceType": "m5.large", "LocationType": "region", "Location": REGION}
            ]
        },
    )
    stub.add_response(
        "describe_images",
        {"Images": [{"ImageId": "ami-12345678", "Architecture": "x86_64", "RootDeviceName": "/dev/xvda"}]},
    )


def _instance(iid: str, state: str = "running", **extra: Any) -> dict[str, Any]:
    return {
        "InstanceId": iid,
        "State": {"Name": state, "Code": 16},
        "PrivateIpAddress": "10.0.0.5",
        "Placement": {"AvailabilityZone": "us-west-2a"},
        "InstanceType": "m5.large",
        **extra,
    }


async def test_request_limit_exceeded_is_retried_with_backoff(
    stubbed: tuple[Any, Stubber], autojump_clock: trio.testing.MockClock
) -> None:
    """RequestLimitExceeded twice, then success: retried after 1 s and 2 s (plus the rate limit)."""
    client, stub = stubbed
    _stub_checks(stub)
    for _ in range(2):
        stub.add_client_error("run_instances", "RequestLimitExceeded", "Request limit exceeded.")
    stub.add_response("run_instances", {"Instances": [_instance("i-1", "pending")]})
    # Two reservations: flattened, never assumed to be one.
    stub.add_response(
        "describe_instances", {"Reservations": [{"Instances": [_instance("i-1")]}, {"Instances": []}]}
    )
    launcher = Launcher(_config(ami="ami-12345678"), "c-x", session=lambda: _StubSession(ec2=client))
    start = trio.current_time()
    (m,) = await launcher.launch(1, b"x")
    # t=0 offerings, images (the burst of 2); t=1 run #1; t=2 run #2; t=4 run #3, describe.
    assert trio.current_time() - start == 4.0
    assert m.address == "10.0.0.5"
    stub.assert_no_pending_responses()


async def test_capacity_error_gives_up_at_the_deadline_naming_it(
    stubbed: tuple[Any, Stubber], autojump_clock: trio.testing.MockClock
) -> None:
    """InsufficientInstanceCapacity is retried until launch_retry_for, then raised by name."""
    client, stub = stubbed
    _stub_checks(stub)
    for _ in range(3):
        stub.add_client_error(
            "run_instances", "InsufficientInstanceCapacity", "We currently do not have capacity."
        )
    launcher = Launcher(
        _config(ami="ami-12345678", launch_retry_for=5), "c-x", session=lambda: _StubSession(ec2=client)
    )
    start = trio.current_time()
    with pytest.raises(EC2Error) as info:
        await launcher.launch(1, b"x")
    # Runs at t=1, 2 and 4; the next wait (4 s) would pass the 5 s deadline.
    assert trio.current_time() - start == 4.0
    assert info.value.code == "InsufficientInstanceCapacity"
    assert "do not have capacity" in str(info.value)
    assert "retrying for 5 s" in str(info.value)
    stub.assert_no_pending_responses()


async def test_other_errors_are_not_retried(
    stubbed: tuple[Any, Stubber], autojump_clock: trio.testing.MockClock
) -> None:
    """An error that retrying cannot fix is raised at once, with a hint."""
    client, stub = stubbed
    _stub_checks(stub)
    stub.add_client_error("run_instances", "VcpuLimitExceeded", "You have requested more vCPU capacity.")
    launcher = Launcher(_config(ami="ami-12345678"), "c-x", session=lambda: _StubSession(ec2=client))
    with pytest.raises(EC2Error, match="vCPU quota"):
        await launcher.launch(1, b"x")
    stub.assert_no_pending_responses()


async def test_describe_images_failure_is_not_memoised(
    stubbed: tuple[Any, Stubber], autojump_clock: trio.testing.MockClock
) -> None:
    """A throttled DescribeImages fails one launch; the next launch asks again and succeeds."""
    client, stub = stubbed
    stub.add_response(
        "describe_instance_type_offerings",
        {
            "InstanceTypeOfferings": [
                {"InstanceType": "m5.large", "LocationType": "region", "Location": REGION}
            ]
        },
    )
    stub.add_client_error("describe_images", "RequestLimitExceeded", "Request limit exceeded.")
    # The offering check succeeded and is remembered; the AMI is checked again.
    stub.add_response("describe_images", {"Images": [{"ImageId": "ami-12345678", "Architecture": "x86_64"}]})
    stub.add_response("run_instances", {"Instances": [_instance("i-2", "pending")]})
    stub.add_response("describe_instances", {"Reservations": [{"Instances": [_instance("i-2")]}]})
    launcher = Launcher(_config(ami="ami-12345678"), "c-x", session=lambda: _StubSession(ec2=client))
    with pytest.raises(EC2Error) as info:
        await launcher.launch(1, b"x")
    assert (info.value.operation, info.value.code) == ("DescribeImages", "RequestLimitExceeded")
    (m,) = await launcher.launch(1, b"x")
    assert m.instance_id == "i-2"
    stub.assert_no_pending_responses()


async def test_instance_ending_before_running_fails_launch_and_terminates_rest(
    stubbed: tuple[Any, Stubber], autojump_clock: trio.testing.MockClock
) -> None:
    """All or nothing: one instance terminated by AWS while pending ends the launch, and the
    other is terminated."""
    client, stub = stubbed
    _stub_checks(stub)
    stub.add_response(
        "run_instances", {"Instances": [_instance("i-a", "pending"), _instance("i-b", "pending")]}
    )
    reason = {"Code": "Server.InsufficientInstanceCapacity", "Message": "Insufficient capacity"}
    stub.add_response(
        "describe_instances",
        {
            "Reservations": [
                {
                    "Instances": [
                        _instance("i-a", "pending"),
                        _instance("i-b", "terminated", StateReason=reason),
                    ]
                }
            ]
        },
    )
    # terminate: states, then TerminateInstances for the one still alive
    stub.add_response(
        "describe_instances",
        {"Reservations": [{"Instances": [_instance("i-a", "pending"), _instance("i-b", "terminated")]}]},
    )
    stub.add_response("terminate_instances", {"TerminatingInstances": []}, {"InstanceIds": ["i-a"]})
    launcher = Launcher(_config(ami="ami-12345678"), "c-x", session=lambda: _StubSession(ec2=client))
    with pytest.raises(EC2Error) as info:
        await launcher.launch(2, b"x")
    assert "i-b terminated by AWS (Server.InsufficientInstanceCapacity" in str(info.value)
    stub.assert_no_pending_responses()


async def test_cancelled_launch_terminates_what_it_started(stubbed: tuple[Any, Stubber]) -> None:
    """Cancelled once its instances are pending, launch terminates them before it returns."""
    client, stub = stubbed
    _stub_checks(stub)
    stub.add_response("run_instances", {"Instances": [_instance("i-c", "pending")]})
    stub.add_response("describe_instances", {"Reservations": [{"Instances": [_instance("i-c", "pending")]}]})
    stub.add_response("terminate_instances", {"TerminatingInstances": []}, {"InstanceIds": ["i-c"]})
    launcher = Launcher(_config(ami="ami-12345678"), "c-x", session=lambda: _StubSession(ec2=client))

    class CancelWhenPending(LaunchProgress):
        def update(self, key: str, stage: Stage, detail: str = "") -> None:
            super().update(key, stage, detail)
            if stage == Stage.PENDING:
                scope.cancel()

    with trio.CancelScope() as scope:
        await launcher.launch(1, b"x", progress=CancelWhenPending(tty=False))
    assert scope.cancelled_caught
    stub.assert_no_pending_responses()


def test_user_data_over_16_kib_is_refused() -> None:
    """AWS's 16 KiB user-data limit is checked before any call."""
    launcher = Launcher(EC2Config(region=REGION), "c-x")
    with pytest.raises(ValueError, match="at most 16384"):
        trio.run(launcher.launch, 1, b"x" * 16385)


# --- pieces ---------------------------------------------------------------------------------


async def test_token_bucket_rate_and_burst(autojump_clock: trio.testing.MockClock) -> None:
    """Two calls pass at once, then one a second."""
    bucket = TokenBucket(rate=1.0, burst=2)
    times = []
    for _ in range(5):
        await bucket.acquire()
        times.append(trio.current_time())
    assert [t - times[0] for t in times] == [0.0, 0.0, 1.0, 2.0, 3.0]


async def test_token_bucket_close_wakes_waiters(autojump_clock: trio.testing.MockClock) -> None:
    """Closing the bucket wakes its waiters with an error at once, and refuses later calls
    (bigmachine's limiter wedged its callers after shutdown)."""
    bucket = TokenBucket(rate=0.001, burst=1)
    await bucket.acquire()
    errors: list[BaseException] = []

    async def waiter() -> None:
        try:
            await bucket.acquire()
        except trio.ClosedResourceError as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        start = trio.current_time()
        bucket.close()
    assert trio.current_time() == start
    assert len(errors) == 2
    with pytest.raises(trio.ClosedResourceError):
        await bucket.acquire()


def test_name_tag_is_truncated_to_aws_limit() -> None:
    """A long command line is cut to AWS's 256 characters, and the suffix stays."""
    tags = {t["Key"]: t["Value"] for t in launch_tags(EC2Config(user="u"), "c", ["/x/prog", "a" * 400])}
    assert len(tags["Name"]) == 256
    assert tags["Name"].endswith("... (bigactor)")
    assert len(tags["bigactor:program"]) == 256


def test_status_cause_names_aws() -> None:
    """A machine's cause says when AWS ended the instance, and when it shut itself down."""
    spot = InstanceStatus(
        "terminated", "Server.SpotInstanceTermination", "Spot instance termination", spot=True
    )
    assert spot.cause() == "terminated by AWS (Server.SpotInstanceTermination: Spot instance termination)"
    own = InstanceStatus("terminated", "Client.InstanceInitiatedShutdown", "shutdown")
    assert own.cause().startswith("terminated by its own shutdown")
    assert InstanceStatus("gone").cause() == "no longer listed by EC2 (terminated)"
    assert not InstanceStatus("running").ended


def test_ec2_error_pickles() -> None:
    """EC2Error round-trips through pickle."""
    err = EC2Error("RunInstances", "InsufficientInstanceCapacity", "no capacity")
    back = pickle.loads(pickle.dumps(err))
    assert (back.operation, back.code, back.message, str(back)) == (
        err.operation,
        err.code,
        err.message,
        "EC2 RunInstances: InsufficientInstanceCapacity: no capacity",
    )


def test_config_validation() -> None:
    """Bad options fail when the config is made, before any launch."""
    with pytest.raises(ValueError, match=r"did you mean m5\.large"):
        EC2Config(instance_type="m5.larg")
    with pytest.raises(ValueError, match="spot"):
        EC2Config(max_price=0.1)
    with pytest.raises(ValueError, match="reserved"):
        EC2Config(tags={"bigactor:cluster": "x"})
    c = EC2Config(keepalive=900, tags="a=1,b=2", security_group_ids="sg-1, sg-2", spot="yes")
    assert c.keepalive.timeout == 900.0
    assert c.tags == {"a": "1", "b": "2"}
    assert c.security_group_ids == ["sg-1", "sg-2"]
    assert c.spot
    assert EC2Config(instance_type="c5.2xlarge").capacity() == (8, 16 * 1024**3)


def test_public_names_are_exported_and_documented() -> None:
    """Every name of bigactor.systems.ec2 is documented and reports the public module."""
    import inspect

    import bigactor.systems.ec2 as ec2

    assert ec2.__all__ == sorted(ec2.__all__)
    assert ec2.__doc__ is not None
    assert len(ec2.__doc__) > 200
    for name in ec2.__all__:
        obj = getattr(ec2, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), f"{name} has no docstring"
            assert obj.__module__ == "bigactor.systems.ec2", f"{name} reports {obj.__module__}"
