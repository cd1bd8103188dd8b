"""The EC2 instance-type table: what a machine of each type has, and where it runs.

The table ships as ``instance_types.json`` beside this module. Each type has its vCPUs (a
machine's ``maxprocs``), memory in MiB (its ``memory``), CPU architectures (which AMI it boots),
whether it is EBS-optimized, whether its disks are NVMe devices, and the regions that offer it,
each with the on-demand Linux price in USD per hour (``None`` where the price is unknown).

A table on disk is stale the day it is written, so :func:`rebuild` makes a fresh one from the
account's own view (DescribeInstanceTypes, DescribeInstanceTypeOfferings and the AWS Pricing
API) and ``bigactor ec2 types --rebuild`` writes it where :func:`load` looks first
(``$XDG_CACHE_HOME/bigactor/ec2-instance-types.json``). The launcher still asks
DescribeInstanceTypeOfferings before it launches anything: the table names what exists; the live
answer decides where.
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

SHIPPED = pathlib.Path(__file__).with_name("instance_types.json")
#: the Pricing API has endpoints in a few regions only; us-east-1 serves every region's prices
PRICING_REGION = "us-east-1"


@attrs.frozen
class InstanceType:
    """One EC2 instance type, as the table knows it."""

    name: str
    vcpus: int
    memory_mib: int
    architectures: tuple[str, ...]
    ebs_optimized: bool
    nvme: bool
    #: on-demand Linux USD/h per region offering the type; None where the price is unknown
    prices: Mapping[str, float | None] = attrs.field(factory=dict)

    @property
    def memory(self) -> int:
        """Bytes of memory (what ``Instance.memory`` reports)."""
        return self.memory_mib * 1024 * 1024

    def offered_in(self, region: str) -> bool:
        """Whether the table lists the type as offered in ``region``."""
        return region in self.prices

    def price(self, region: str) -> float | None:
        """The on-demand price in ``region`` (USD/h), or None if unknown."""
        return self.prices.get(region)

    def to_json(self) -> dict[str, Any]:
        return {
            "vcpus": self.vcpus,
            "memory_mib": self.memory_mib,
            "architectures": list(self.architectures),
            "ebs_optimized": self.ebs_optimized,
            "nvme": self.nvme,
            "prices": dict(sorted(self.prices.items())),
        }

    @classmethod
    def from_json(cls, name: str, data: Mapping[str, Any]) -> InstanceType:
        return cls(
            name=name,
            vcpus=int(data["vcpus"]),
            memory_mib=int(data["memory_mib"]),
            architectures=tuple(data["architectures"]),
            ebs_optimized=bool(data["ebs_optimized"]),
            nvme=bool(data["nvme"]),
            prices={r: (None if p is None else float(p)) for r, p in data["prices"].items()},
        )


@attrs.frozen
class TypeTable:
    """The table: types by name, and where its data came from."""

    types: Mapping[str, InstanceType]
    source: str
    built: str

    def __contains__(self, name: object) -> bool:
        return name in self.types

    def __getitem__(self, name: str) -> InstanceType:
        return self.types[name]

    def lookup(self, name: str, region: str | None = None) -> InstanceType:
        """The type called ``name``; ValueError if the table does not know it, or (given
        ``region``) lists it as not offered there. The message says what to do next."""
        found = self.types.get(name)
        if found is None:
            near = _near(name, self.types)
            hint = f" (did you mean {', '.join(near)}?)" if near else ""
            raise ValueError(
                f"unknown EC2 instance type {name!r}{hint}; `bigactor ec2 types` lists the known "
                f"ones (table built {self.built}; `bigactor ec2 types --rebuild` refreshes it)"
            )
        if region is not None and not found.offered_in(region):
            raise ValueError(
                f"EC2 instance type {name!r} is not offered in region {region} (offered in: "
                f"{', '.join(sorted(found.prices)) or 'no region'}); pick another type or region"
            )
        return found

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "built": self.built,
            "types": {name: self.types[name].to_json() for name in sorted(self.types)},
        }

    def dump(self, path: str | os.PathLike[str]) -> None:
        """Write the table to ``path`` (atomically: a reader sees the old or the new one)."""
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = self.to_json()
        # One type per line: a rebuilt table diffs type by type.
        lines = [f"{json.dumps(k)}: {json.dumps(v, sort_keys=True)}" for k, v in data["types"].items()]
        text = (
            "{\n"
            f'"source": {json.dumps(data["source"])},\n"built": {json.dumps(data["built"])},\n'
            '"types": {\n' + ",\n".join(lines) + "\n}\n}\n"
        )
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)


def _near(name: str, names: Iterable[str]) -> list[str]:
    import difflib

    return difflib.get_close_matches(name, list(names), n=3, cutoff=0.8)


def cache_path() -> pathlib.Path:
    """Where ``bigactor ec2 types --rebuild`` writes and :func:`load` looks first."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base, "bigactor", "ec2-instance-types.json")


def load(path: str | os.PathLike[str] | None = None) -> TypeTable:
    """The table at ``path``; by default the rebuilt one in the cache, else the shipped one."""
    if path is None:
        cached = cache_path()
        path = cached if cached.exists() else SHIPPED
    return _load(str(path), os.stat(path).st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _load(path: str, mtime_ns: int) -> TypeTable:
    data = json.loads(pathlib.Path(path).read_text())
    types = {name: InstanceType.from_json(name, d) for name, d in data["types"].items()}
    return TypeTable(types=types, source=data.get("source", path), built=data.get("built", "?"))


# --- rebuilding from the APIs -------------------------------------------------------------


def type_from_api(info: Mapping[str, Any], prices: Mapping[str, float | None]) -> InstanceType:
    """An :class:`InstanceType` from one DescribeInstanceTypes entry and its regions' prices."""
    ebs = info.get("EbsInfo", {})
    return InstanceType(
        name=info["InstanceType"],
        vcpus=int(info["VCpuInfo"]["DefaultVCpus"]),
        memory_mib=int(info["MemoryInfo"]["SizeInMiB"]),
        architectures=tuple(info.get("ProcessorInfo", {}).get("SupportedArchitectures", ())),
        ebs_optimized=ebs.get("EbsOptimizedSupport") in ("default", "supported"),
        nvme=ebs.get("NvmeSupport") in ("required", "supported"),
        prices=prices,
    )


def describe_types(ec2: Any) -> dict[str, dict[str, Any]]:
    """Every DescribeInstanceTypes entry the client's region answers, by name (blocking)."""
    out: dict[str, dict[str, Any]] = {}
    for page in ec2.get_paginator("describe_instance_types").paginate():
        for info in page["InstanceTypes"]:
            out[info["InstanceType"]] = info
    return out


def offered_types(ec2: Any, region: str) -> set[str]:
    """The types DescribeInstanceTypeOfferings lists for ``region`` (blocking)."""
    found: set[str] = set()
    pages = ec2.get_paginator("describe_instance_type_offerings").paginate(
        LocationType="region", Filters=[{"Name": "location", "Values": [region]}]
    )
    for page in pages:
        found.update(o["InstanceType"] for o in page["InstanceTypeOfferings"])
    return found


#: The Pricing API filters that select the plain on-demand Linux price of a type: shared
#: tenancy, no licensed software, capacity "Used" (the other capacity statuses are capacity
#: reservations, priced 0 or as reserved). Without them a region's table mixes in dedicated
#: hosts and reservations.
PRICE_FILTERS = {
    "operatingSystem": "Linux",
    "tenancy": "Shared",
    "preInstalledSw": "NA",
    "capacitystatus": "Used",
    "licenseModel": "No License required",
}


def prices_from_pricing_api(pricing: Any, region: str) -> dict[str, float]:
    """On-demand Linux USD/h by type in ``region``, from the Pricing API (blocking).

    ``pricing`` is a boto3 ``pricing`` client (its endpoint is in us-east-1)."""
    filters = [{"Type": "TERM_MATCH", "Field": "regionCode", "Value": region}]
    filters += [{"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in PRICE_FILTERS.items()]
    out: dict[str, float] = {}
    pages = pricing.get_paginator("get_products").paginate(ServiceCode="AmazonEC2", Filters=filters)
    for page in pages:
        for item in page["PriceList"]:
            product = json.loads(item) if isinstance(item, str) else item
            name = product.get("product", {}).get("attributes", {}).get("instanceType")
            price = _on_demand_usd(product)
            if name and price is not None and price > 0:
                out[name] = price
    return out


def _on_demand_usd(product: Mapping[str, Any]) -> float | None:
    for term in product.get("terms", {}).get("OnDemand", {}).values():
        for dim in term.get("priceDimensions", {}).values():
            usd = dim.get("pricePerUnit", {}).get("USD")
            if usd is not None and dim.get("unit", "Hrs") in ("Hrs", "Hours"):
                return float(usd)
    return None


def rebuild(
    regions: Iterable[str],
    ec2_for: Callable[[str], Any],
    prices_for: Callable[[str], Mapping[str, float]] | None,
    *,
    source: str,
) -> TypeTable:
    """A fresh table for ``regions`` (blocking; run it in a thread).

    ``ec2_for(region)`` gives an EC2 client of that region; ``prices_for(region)`` the
    on-demand prices there (e.g. :func:`prices_from_pricing_api`), or None to leave every
    price unknown. A type is in the table if any region describes it; a region is in a type's
    ``prices`` if DescribeInstanceTypeOfferings lists the type there."""
    infos: dict[str, dict[str, Any]] = {}
    offered: dict[str, dict[str, float | None]] = {}
    for region in regions:
        ec2 = ec2_for(region)
        for name, info in describe_types(ec2).items():
            infos.setdefault(name, info)
        region_prices = prices_for(region) if prices_for is not None else {}
        for name in offered_types(ec2, region):
            offered.setdefault(name, {})[region] = region_prices.get(name)
    types = {name: type_from_api(info, offered.get(name, {})) for name, info in infos.items()}
    return TypeTable(types=types, source=source, built=time.strftime("%Y-%m-%d", time.gmtime()))
