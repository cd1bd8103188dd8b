"""The EC2 system's options (:class:`EC2Config`).

Every option is a plain typed field; ``BIGACTOR_EC2_<OPTION>`` in the environment sets one
through bigactor's settings layer, and ``open_cluster("ec2", instance_type=...)`` passes them as
keywords. Validation happens here, before anything is launched: an instance type the table does
not know is a ``ValueError`` naming the close matches. Whether the region offers the type is
asked of EC2 itself (DescribeInstanceTypeOfferings) by the launcher, still before launching.
"""

from __future__ import annotations

import getpass
import sys
from typing import Any

import attrs

from ..._system import KeepaliveConfig
from . import _types

#: bigmachine's EC2 keepalive: a period of 1 min, lost after 10 min, each ping may take 2 min
#: (instances are far away and may be busy; spot interruptions are seen sooner through states)
DEFAULT_KEEPALIVE = KeepaliveConfig(period=60.0, timeout=600.0, rpc_timeout=120.0)

#: The public SSM parameter naming the current Amazon Linux 2023 AMI of each architecture.
#: AL2023 is chosen over Debian 12 because it packages several Python minors (python3.11,
#: python3.12, ...) beside its system python3.9, so a worker can match the driver's minor
#: version from the distribution, and AWS publishes the parameter in every region.
AL2023_PARAMETER = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-{arch}"


def _keepalive(value: KeepaliveConfig | float | int | str) -> KeepaliveConfig:
    """A KeepaliveConfig, or seconds: how long a silent machine lives before it is lost."""
    if isinstance(value, KeepaliveConfig):
        return value
    seconds = float(value)
    if seconds <= 0:
        raise ValueError(f"keepalive must be a positive number of seconds, not {value!r}")
    return attrs.evolve(DEFAULT_KEEPALIVE, timeout=seconds)


def _str_list(value: Any) -> list[str]:
    if isinstance(value, str):  # from the environment: "sg-1,sg-2"
        return [s.strip() for s in value.split(",") if s.strip()]
    return [str(v) for v in value]


def _str_dict(value: Any) -> dict[str, str]:
    if isinstance(value, str):  # from the environment: "team=infra,cost=batch"
        pairs = [p.split("=", 1) for p in value.split(",") if p.strip()]
        if any(len(p) != 2 for p in pairs):
            raise ValueError(f"tags must be key=value pairs separated by commas, not {value!r}")
        return {k.strip(): v.strip() for k, v in pairs}
    return {str(k): str(v) for k, v in dict(value).items()}


def _bool(value: Any) -> bool:
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off", ""):
            return False
        raise ValueError(f"expected a boolean, not {value!r}")
    return bool(value)


def _optional_float(value: Any) -> float | None:
    return None if value is None or value == "" else float(value)


def _known_type(_: Any, attribute: attrs.Attribute[str], value: str) -> None:
    _types.load().lookup(value)


def _reserved_tags(_: Any, attribute: attrs.Attribute[dict[str, str]], value: dict[str, str]) -> None:
    for key in value:
        if key.lower().startswith(("aws:", "bigactor")) or key == "Name":
            raise ValueError(
                f"tag {key!r} is reserved: bigactor sets Name and the bigactor* tags, AWS the aws:* ones"
            )


@attrs.define(kw_only=True)
class EC2Config:
    """Options of the EC2 system; see the field comments for defaults and meaning."""

    #: the instance type of every machine; its vCPUs are a machine's maxprocs
    instance_type: str = attrs.field(default="m5.large", validator=_known_type)
    #: spot instances (one-time, terminated on interruption) instead of on-demand ones
    spot: bool = attrs.field(default=False, converter=_bool)
    #: the highest spot price to pay, USD/h; None: AWS's default cap, the on-demand price
    max_price: float | None = attrs.field(default=None, converter=_optional_float)
    #: the AWS region; None: boto3's (AWS_REGION, AWS_DEFAULT_REGION, ~/.aws/config)
    region: str | None = None
    #: the AMI to boot; None: resolve ``ami_parameter`` through SSM at each launch
    ami: str | None = None
    #: the public SSM parameter naming the AMI, ``{arch}`` being x86_64 or arm64
    ami_parameter: str = AL2023_PARAMETER
    #: the VPC subnet; None: the default VPC's subnet AWS picks
    subnet_id: str | None = None
    #: the security groups (they must admit the worker port from the driver); []: the VPC's default
    security_group_ids: list[str] = attrs.field(factory=list, converter=_str_list)
    #: an IAM instance profile, by name or ARN (``arn:...``)
    instance_profile: str | None = None
    #: an EC2 key pair for SSH to the instances (debugging only; bigactor does not use SSH)
    key_name: str | None = None
    #: the command giving a Python of the driver's minor version on the instance
    python: str = f"python3.{sys.version_info.minor}"
    #: a package index the instances install from (None: PyPI)
    index_url: str | None = None
    #: a wheelhouse (URL or S3 prefix) the instances install wheels from first
    wheelhouse: str | None = None
    #: extra tags on every instance and volume
    tags: dict[str, str] = attrs.field(factory=dict, converter=_str_dict, validator=_reserved_tags)
    #: the keepalive policy; a number is the seconds a silent machine lives before it is lost
    keepalive: KeepaliveConfig = attrs.field(default=DEFAULT_KEEPALIVE, converter=_keepalive)
    #: the TCP port the worker's TLS server listens on (above 1023: the worker needs no root)
    port: int = attrs.field(default=8443, converter=int)
    #: the root volume's size in GiB (gp3, deleted with the instance)
    disk_gib: int = attrs.field(default=50, converter=int)
    #: the user named in the Name and bigactor:user tags (``ls`` and ``cleanup`` filter on it)
    user: str = attrs.field(factory=getpass.getuser)
    #: dial instances at their private IP even when they have a public one
    prefer_private_ip: bool = attrs.field(default=False, converter=_bool)
    #: how long a launch retries RequestLimitExceeded and InsufficientInstanceCapacity (s)
    launch_retry_for: float = attrs.field(default=300.0, converter=float)
    #: how long ``terminate(wait=True)`` waits for instances to reach terminated (s)
    terminate_timeout: float = attrs.field(default=300.0, converter=float)

    def __attrs_post_init__(self) -> None:
        if self.max_price is not None and not self.spot:
            raise ValueError("max_price applies to spot instances: set spot=True or drop max_price")
        if self.max_price is not None and self.max_price <= 0:
            raise ValueError(f"max_price must be positive (USD/h), not {self.max_price}")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port must be 1..65535, not {self.port}")
        if self.disk_gib < 8:
            raise ValueError(f"disk_gib must be at least 8 (the AMI's root), not {self.disk_gib}")

    def instance(self) -> _types.InstanceType:
        """The table's entry for ``instance_type``."""
        return _types.load().lookup(self.instance_type)

    def capacity(self) -> tuple[int, int]:
        """A machine's ``maxprocs`` (the type's vCPUs) and memory in bytes."""
        itype = self.instance()
        return itype.vcpus, itype.memory
