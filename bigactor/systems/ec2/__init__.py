"""The EC2 system: a bigactor program's machines as EC2 instances, launched with boto3.

``BIGACTOR_SYSTEM=ec2 python prog.py``, or ``open_cluster("ec2", instance_type="m5.large")``
(or ``open_cluster(bigactor.systems.EC2(spot=True))``), runs the program's machines on EC2
instances, one machine per instance (:class:`EC2System`), and nothing is left running
afterwards. Each option of :class:`EC2System` may be set as ``BIGACTOR_EC2_<OPTION>``.

The building blocks it is made of may be used alone::

    from bigactor.systems.ec2 import EC2Config, Launcher

    config = EC2Config(instance_type="m5.large", region="us-west-2", spot=True)
    launcher = Launcher(config, cluster_id="c-1234")
    launched = await launcher.launch(4, user_data)   # all four, running, or EC2Error
    ...
    await launcher.terminate([m.instance_id for m in launched])

Lifecycle: the launcher checks the type is offered in the region and resolves the AMI
(Amazon Linux 2023 through its public SSM parameter, unless ``ami=`` is given), then starts
exactly ``n`` instances in one RunInstances call, tagged at launch with ``bigactor=true``,
``bigactor:cluster``, ``bigactor:user`` and a Name naming the user and program. The worker
inside reads its identity and spot notices from the metadata service (:class:`IMDS`).

Failure model: AWS's "not now" answers (RequestLimitExceeded, InsufficientInstanceCapacity) are
retried for a while; everything else is an :class:`EC2Error` naming the AWS call and code. An
instance that ends is reported by :meth:`Launcher.states` with AWS's reason ("terminated by AWS
(Server.SpotInstanceTermination ...)"). Instances terminate themselves when their worker exits
(they power off and ``InstanceInitiatedShutdownBehavior`` is terminate), the driver terminates
them explicitly on close, and ``bigactor ec2 cleanup`` finds any left over by their tags.

This package imports boto3 only when it calls AWS, so importing it is cheap.
"""

from __future__ import annotations

import contextlib

from ._config import DEFAULT_KEEPALIVE as DEFAULT_KEEPALIVE
from ._config import EC2Config as EC2Config
from ._errors import EC2Error as EC2Error
from ._imds import IMDS as IMDS
from ._imds import IMDSError as IMDSError
from ._imds import Interruption as Interruption
from ._imds import watch_interruptions as watch_interruptions
from ._launch import (
    InstanceStatus as InstanceStatus,
)
from ._launch import (
    Launched as Launched,
)
from ._launch import (
    Launcher as Launcher,
)
from ._launch import (
    Listed as Listed,
)
from ._launch import (
    TokenBucket as TokenBucket,
)
from ._launch import (
    address_of as address_of,
)
from ._launch import (
    launch_tags as launch_tags,
)
from ._progress import LaunchProgress as LaunchProgress
from ._progress import Stage as Stage
from ._system import EC2Instance as EC2Instance
from ._system import EC2System as EC2System
from ._types import InstanceType as InstanceType
from ._types import TypeTable as TypeTable
from ._types import load as load_types

__all__ = [
    "DEFAULT_KEEPALIVE",
    "EC2Config",
    "EC2Error",
    "EC2Instance",
    "EC2System",
    "IMDS",
    "IMDSError",
    "InstanceStatus",
    "InstanceType",
    "Interruption",
    "LaunchProgress",
    "Launched",
    "Launcher",
    "Listed",
    "Stage",
    "TokenBucket",
    "TypeTable",
    "address_of",
    "launch_tags",
    "load_types",
    "watch_interruptions",
]


def _fixup_module_metadata() -> None:
    # Tracebacks and pickles name the public path, which stays when private files move.
    for name in __all__:
        obj = globals()[name]
        if getattr(obj, "__module__", "").startswith(__name__ + "."):
            with contextlib.suppress(AttributeError, TypeError):  # e.g. a frozen attrs class
                obj.__module__ = __name__


_fixup_module_metadata()
