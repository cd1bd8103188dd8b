"""What a machine's system says of it (details, price) on status and debug pages, and what the
cluster cost so far, priced or not."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import bigactor
from bigactor._debug import page_url
from bigactor._system import Instance
from bigactor.testing import TestSystem

DETAILS = {"instance-id": "i-0abc", "type": "m5.large", "market": "spot", "zone": "us-east-1a"}


@attrs.define(kw_only=True)
class HalfPriced(TestSystem):
    """Every second machine has no price (as a system that cannot tell for some)."""

    def __attrs_post_init__(self) -> None:
        self.started = 0

    async def start(self, n: int, env: dict[str, str]) -> list[Instance]:
        out = await super().start(n, env)
        for inst in out:
            self.started += 1
            if self.started % 2 == 0:
                inst.price_per_hour = None
        return out


def test_an_instance_says_nothing_by_default() -> None:
    """Instance.details() is empty and price_per_hour None unless a system says more."""

    class Bare(Instance):
        addr = "unix:/bare"

    bare = Bare()
    assert bare.details() == {}
    assert bare.price_per_hour is None
    assert bare.output_over_channel is False


async def test_status_entries_carry_details_price_and_cost(autojump_clock: trio.testing.MockClock) -> None:
    """Each status entry has its machine's details, its price and its cost so far (price x
    hours since the system handed it over), in virtual time exactly."""
    system = TestSystem(price_per_hour=1.8, details=DETAILS)
    async with bigactor.open_cluster(system) as cluster:
        [m] = await cluster.start(1)
        await m.wait(bigactor.State.RUNNING)
        await trio.sleep(1800 - trio.current_time())
        [entry] = await cluster.status()
        assert entry["details"] == DETAILS
        assert entry["price_per_hour"] == 1.8
        assert entry["cost"] == pytest.approx(0.9)
        assert m.details == DETAILS
        assert m.cost() == pytest.approx(0.9)


async def test_the_cluster_cost_counts_each_machine_until_it_stopped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A stopped machine costs nothing more; the running one keeps adding up."""
    async with bigactor.open_cluster(TestSystem(price_per_hour=1.8)) as cluster:
        one, two = await cluster.start(2)
        await trio.sleep(1800)
        await one.shutdown()
        assert str(cluster.cost()) == "$1.80 for 2 machines"
        await trio.sleep(1800)
        cost = cluster.cost()
        assert (cost.priced, cost.unpriced, cost.known) == (2, 0, True)
        assert cost.dollars == pytest.approx(0.9 + 1.8)
        assert two.cost() == pytest.approx(1.8)
        assert one.cost() == pytest.approx(0.9)


async def test_a_machine_of_unknown_price_makes_the_cost_a_lower_bound(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Machines without a price are counted and said to be unknown, never taken as free."""
    async with bigactor.open_cluster(TestSystem()) as cluster:
        await cluster.start(2)
        assert str(cluster.cost()) == "unknown (2 machines of unknown price)"
    async with bigactor.open_cluster(HalfPriced(price_per_hour=36.0)) as cluster:
        await cluster.start(2)
        await trio.sleep(100)
        cost = cluster.cost()
        assert (cost.priced, cost.unpriced, cost.known) == (1, 1, False)
        assert str(cost) == "$1.00 for 1 machine, plus 1 machine of unknown price"
        entries = await cluster.status()
        assert sorted(e["cost"] is None for e in entries) == [False, True]


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as reply:
        text: str = reply.read().decode()
        return text


async def get(url: str) -> str:
    return await trio.to_thread.run_sync(_get, url)


async def test_debug_pages_show_details_and_the_cluster_cost() -> None:
    """The HTML and text status pages show each machine's details and price and the cluster's
    cost; the cost page and metrics carry the figures."""
    system = TestSystem(price_per_hour=3600.0, details=DETAILS)  # a dollar a second
    async with bigactor.open_cluster(system, debug_address="127.0.0.1:0") as cluster:
        [m] = await cluster.start(1)
        await m.wait(bigactor.State.RUNNING)
        url = cluster.debug_url
        assert url is not None
        html = await get(page_url(url, "status"))
        for text in ("instance-id: i-0abc", "type: m5.large", "market: spot", "zone: us-east-1a"):
            assert text in html
        assert "$3600.0000/h" in html
        assert "Cost so far: $" in html
        text = await get(page_url(url, "status", format="text"))
        lines = text.splitlines()
        assert lines[0].split()[:2] == ["MACHINE", "STATE"]
        assert lines[1].startswith(m.addr)
        assert "    instance-id: i-0abc" in lines
        assert lines[-1].startswith("cost so far: $")
        assert lines[-1].endswith(" for 1 machine")
        cost: dict[str, Any] = json.loads(await get(page_url(url, "cost")))
        assert (cost["priced"], cost["unpriced"], cost["known"]) == (1, 0, True)
        assert cost["dollars"] > 0
        assert cost["text"].endswith(" for 1 machine")
        [entry] = json.loads(await get(page_url(url, "status", format="json")))
        assert entry["details"] == DETAILS
        metrics = await get(page_url(url, "metrics"))
        assert f'bigactor_machine_price_dollars_per_hour{{machine="{m.addr}"}} 3600.0' in metrics
        assert f'bigactor_machine_cost_dollars{{machine="{m.addr}"}} ' in metrics
