"""``bigactor ec2 ...``: find, end and describe what the EC2 system launches.

    bigactor ec2 ls [--all-users] [--cluster ID]          bigactor's instances still alive
    bigactor ec2 cleanup [--cluster ID] [--all-users] [--yes]
                                                         terminate them (asks first)
    bigactor ec2 types [NAME ...] [--region R]           the instance-type table
    bigactor ec2 types --rebuild [--regions R ...] [--no-prices] [-o FILE]
                                                         rebuild it from the AWS APIs

Credentials, region and endpoints come from boto3's usual places (AWS_PROFILE,
AWS_DEFAULT_REGION, AWS_ENDPOINT_URL_EC2, ~/.aws); ``--region`` overrides the region.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Sequence
from typing import Any

import trio


def add_parser(sub: Any) -> None:
    """Add the ``ec2`` command to ``sub`` (an argparse subparsers object)."""
    ec2 = sub.add_parser("ec2", help="instances of the EC2 system: ls, cleanup, types")
    cmds = ec2.add_subparsers(dest="ec2_command", required=True)
    p = cmds.add_parser("ls", help="bigactor's instances not yet terminated")
    p.add_argument("--all-users", action="store_true", help="everybody's, not only yours")
    p.add_argument("--cluster", help="only this cluster's (its bigactor:cluster tag)")
    p.add_argument("--user", default=None, help="whose (default: you)")
    p = cmds.add_parser("cleanup", help="terminate bigactor's leftover instances (asks first)")
    p.add_argument("--all-users", action="store_true", help="everybody's, not only yours")
    p.add_argument("--cluster", help="only this cluster's (its bigactor:cluster tag)")
    p.add_argument("--user", default=None, help="whose (default: you)")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask")
    p = cmds.add_parser("types", help="the instance-type table, or --rebuild it")
    p.add_argument("names", nargs="*", help="only these types")
    p.add_argument("--rebuild", action="store_true", help="rebuild from the AWS APIs")
    p.add_argument("--regions", nargs="+", help="regions to rebuild (default: all the account's)")
    p.add_argument("--no-prices", action="store_true", help="skip the Pricing API (prices unknown)")
    p.add_argument("-o", "--output", help="where to write (default: the cache the system reads)")
    for p in cmds.choices.values():
        p.add_argument("--region", help="the AWS region (default: boto3's)")


def run(args: argparse.Namespace) -> int:
    """Run the parsed ``ec2`` command; the exit status."""
    if args.ec2_command == "types":
        return _types_command(args)
    from ._config import EC2Config
    from ._launch import Launcher

    config = EC2Config(region=args.region, user=args.user or getpass.getuser())
    return trio.run(_instances_command, args, Launcher(config, cluster_id=args.cluster or ""))


def _table(rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() + "\n" for r in rows
    )


async def _instances_command(args: argparse.Namespace, launcher: Any) -> int:
    from ._errors import EC2Error

    try:
        found = await launcher.list_instances(args.cluster, args.all_users)
        who = "anyone" if args.all_users else launcher.config.user
        where = f" of cluster {args.cluster}" if args.cluster else ""
        if not found:
            print(f"no bigactor instances{where} for {who} in {launcher.region}", file=sys.stderr)
            return 0
        rows = [("INSTANCE", "STATE", "TYPE", "CLUSTER", "USER", "ADDRESS", "ZONE", "LAUNCHED", "NAME")]
        rows += [
            (
                x.instance_id,
                x.state,
                x.instance_type + (" spot" if x.spot else ""),
                x.cluster_id,
                x.user,
                x.address or "-",
                x.zone,
                x.launched_at.strftime("%Y-%m-%d %H:%M") if x.launched_at else "-",
                x.name,
            )
            for x in found
        ]
        sys.stdout.write(_table(rows))
        if args.ec2_command == "ls":
            return 0
        ids = [x.instance_id for x in found]
        if not args.yes:
            sys.stdout.write(f"terminate these {len(ids)} instance(s) in {launcher.region}? [y/N] ")
            sys.stdout.flush()
            answer = sys.stdin.readline().strip().lower()
            if answer not in ("y", "yes"):
                print("nothing terminated", file=sys.stderr)
                return 1
        await launcher.terminate(ids, wait=True)
        print(f"terminated {len(ids)} instance(s)", file=sys.stderr)
        return 0
    except EC2Error as exc:
        print(f"bigactor: {exc}", file=sys.stderr)
        return 1
    finally:
        launcher.close()


def _types_command(args: argparse.Namespace) -> int:
    from . import _types

    if args.rebuild:
        return _rebuild(args)
    table = _types.load()
    names = args.names or sorted(table.types)
    try:
        types = [table.lookup(n) for n in names]
    except ValueError as exc:
        print(f"bigactor: {exc}", file=sys.stderr)
        return 1
    region = args.region
    rows = [
        ("TYPE", "VCPU", "MEMORY", "ARCH", "EBS-OPT", "NVME", f"USD/H ({region})" if region else "REGIONS")
    ]
    for t in types:
        if region:
            price = t.price(region)
            last = ("-" if not t.offered_in(region) else "?") if price is None else f"{price:.4f}"
        else:
            last = str(len(t.prices))
        mem = t.memory_mib / 1024
        rows.append(
            (
                t.name,
                str(t.vcpus),
                f"{mem:g} GiB",
                ",".join(t.architectures),
                "yes" if t.ebs_optimized else "no",
                "yes" if t.nvme else "no",
                last,
            )
        )
    sys.stdout.write(_table(rows))
    print(f"source: {table.source}; built {table.built}", file=sys.stderr)
    return 0


def _rebuild(args: argparse.Namespace) -> int:
    import boto3.session
    import botocore.exceptions

    from . import _types

    session = boto3.session.Session(region_name=args.region)
    try:
        regions = args.regions
        if not regions:
            home = session.client("ec2", region_name=args.region or session.region_name or "us-east-1")
            regions = sorted(r["RegionName"] for r in home.describe_regions()["Regions"])
        pricing = None if args.no_prices else session.client("pricing", region_name=_types.PRICING_REGION)

        def prices_for(region: str) -> dict[str, float]:
            assert pricing is not None
            return _types.prices_from_pricing_api(pricing, region)

        source = "DescribeInstanceTypes, DescribeInstanceTypeOfferings" + (
            "" if pricing is None else " and the AWS Pricing API (on-demand, Linux, shared tenancy)"
        )
        table = _types.rebuild(
            regions,
            lambda region: session.client("ec2", region_name=region),
            None if pricing is None else prices_for,
            source=source,
        )
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        print(f"bigactor: rebuilding the instance-type table: {exc}", file=sys.stderr)
        return 1
    output = args.output or _types.cache_path()
    table.dump(output)
    print(f"wrote {len(table.types)} instance types in {len(regions)} region(s) to {output}", file=sys.stderr)
    return 0
