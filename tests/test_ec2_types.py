"""The instance-type table: the shipped one, and a rebuild from DescribeInstanceTypes and
DescribeInstanceTypeOfferings (moto's EC2 server on loopback, which answers with real AWS
data) plus the Pricing API (botocore's Stubber: moto has no Pricing API)."""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import pytest

from bigactor.systems.ec2 import _types, load_types

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto")
from botocore.stub import Stubber  # noqa: E402


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in list(os.environ):
        if var.startswith("AWS_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens: never AWS
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def test_shipped_table_has_real_shapes() -> None:
    """The shipped table knows the common types with their AWS vCPU and memory, and says
    where its data came from."""
    table = load_types(_types.SHIPPED)
    m5 = table.lookup("m5.large", "us-west-2")
    assert (m5.vcpus, m5.memory_mib, m5.architectures) == (2, 8192, ("x86_64",))
    assert m5.memory == 8 * 1024**3
    assert m5.nvme
    assert m5.ebs_optimized
    c5 = table["c5.24xlarge"]
    assert (c5.vcpus, c5.memory_mib) == (96, 196608)
    assert table["m6g.large"].architectures == ("arm64",)
    assert "moto" in table.source
    assert "libcloud" in table.source
    assert all(p is None or p > 0 for t in table.types.values() for p in t.prices.values())
    assert m5.price("us-east-1") == 0.096


def test_lookup_errors_say_what_to_do() -> None:
    """An unknown type names close matches; a type not offered in a region names where it is."""
    table = load_types(_types.SHIPPED)
    with pytest.raises(ValueError, match=r"unknown EC2 instance type 'm5.lage' \(did you mean m5.large"):
        table.lookup("m5.lage")
    with pytest.raises(ValueError, match=r"hpc7g\.4xlarge' is not offered in region us-west-2"):
        table.lookup("hpc7g.4xlarge", "us-west-2")


def test_cached_table_wins(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rebuilt table in the cache is what load() reads."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    table = _types.TypeTable(
        types={"x1.tiny": _types.InstanceType("x1.tiny", 1, 512, ("x86_64",), False, False, {"r-1": 0.5})},
        source="test",
        built="2026-01-01",
    )
    table.dump(_types.cache_path())
    loaded = load_types()
    assert list(loaded.types) == ["x1.tiny"]
    assert loaded.lookup("x1.tiny", "r-1").price("r-1") == 0.5


def _product(instance_type: str, usd: str) -> str:
    return json.dumps(
        {
            "product": {"attributes": {"instanceType": instance_type, "regionCode": "us-west-2"}},
            "terms": {
                "OnDemand": {
                    "SKU.TERM": {
                        "priceDimensions": {"SKU.TERM.DIM": {"unit": "Hrs", "pricePerUnit": {"USD": usd}}}
                    }
                }
            },
        }
    )


@pytest.mark.usefixtures("offline")
def test_prices_from_pricing_api_filter_and_parse() -> None:
    """The Pricing API is asked for shared-tenancy on-demand Linux prices of the region, across
    pages; zero prices are dropped."""
    pricing = boto3.client("pricing", region_name="us-east-1")
    filters = [{"Type": "TERM_MATCH", "Field": "regionCode", "Value": "us-west-2"}] + [
        {"Type": "TERM_MATCH", "Field": k, "Value": v} for k, v in _types.PRICE_FILTERS.items()
    ]
    with Stubber(pricing) as stub:
        stub.add_response(
            "get_products",
            {
                "PriceList": [_product("m5.large", "0.0960000000"), _product("t3.nano", "0")],
                "NextToken": "p2",
            },
            {"ServiceCode": "AmazonEC2", "Filters": filters},
        )
        stub.add_response(
            "get_products",
            {"PriceList": [_product("c5.large", "0.0850000000")]},
            {"ServiceCode": "AmazonEC2", "Filters": filters, "NextToken": "p2"},
        )
        prices = _types.prices_from_pricing_api(pricing, "us-west-2")
        stub.assert_no_pending_responses()
    assert prices == {"m5.large": 0.096, "c5.large": 0.085}


@pytest.mark.slow
def test_rebuild_from_describe_calls_and_pricing(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """rebuild() takes shapes and regions from EC2 (moto) and prices from the Pricing API
    (stubbed); the result matches what DescribeInstanceTypes says."""
    for var in list(os.environ):
        if var.startswith("AWS_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    regions = ["us-west-2", "eu-west-1"]
    stubbed: dict[str, Any] = {}
    pricing = boto3.client("pricing", region_name="us-east-1")
    with Stubber(pricing) as stub:
        for region in regions:
            stub.add_response(
                "get_products",
                {"PriceList": [_product("m5.large", "0.1" if region == "eu-west-1" else "0.096")]},
            )

        def prices_for(region: str) -> dict[str, float]:
            stubbed[region] = True
            return _types.prices_from_pricing_api(pricing, region)

        table = _types.rebuild(
            regions, lambda r: boto3.client("ec2", region_name=r), prices_for, source="test rebuild"
        )
        stub.assert_no_pending_responses()
    assert stubbed == {"us-west-2": True, "eu-west-1": True}
    ec2 = boto3.client("ec2", region_name="us-west-2")
    info = ec2.describe_instance_types(InstanceTypes=["m5.large"])["InstanceTypes"][0]
    m5 = table["m5.large"]
    assert (m5.vcpus, m5.memory_mib) == (info["VCpuInfo"]["DefaultVCpus"], info["MemoryInfo"]["SizeInMiB"])
    assert m5.prices == {"us-west-2": 0.096, "eu-west-1": 0.1}
    offered = {
        o["InstanceType"]
        for page in ec2.get_paginator("describe_instance_type_offerings").paginate(LocationType="region")
        for o in page["InstanceTypeOfferings"]
    }
    assert {n for n, t in table.types.items() if "us-west-2" in t.prices} == offered
    assert table["c5.large"].prices["us-west-2"] is None  # offered, price not given
