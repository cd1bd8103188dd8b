"""Choosing a system: by instance, by name, by BIGACTOR_SYSTEM, and bigactor.run's flags."""

import importlib.metadata
import subprocess
import sys
import textwrap
from typing import Any

import attrs
import pytest

import bigactor
import bigactor.systems
from bigactor.systems import LocalSystem, lookup
from bigactor.testing import TestSystem


def test_lookup_builds_named_systems_with_options() -> None:
    """'local' and 'test' name the built-in systems; options reach their constructors."""
    local = lookup("local", boot_timeout=5.0)
    assert isinstance(local, LocalSystem)
    assert local.boot_timeout == 5.0
    assert isinstance(lookup("test"), TestSystem)


def test_unknown_system_name_lists_the_known_ones() -> None:
    """An unknown name is a ValueError naming the systems there are."""
    with pytest.raises(ValueError, match=r"unknown bigactor system 'nope' \(known: ec2, local, test"):
        lookup("nope")


def test_the_built_in_systems_are_registered_as_entry_points() -> None:
    """'local' and 'test' are in the bigactor.systems entry-point group, like any other."""
    found = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="bigactor.systems")}
    assert found["local"] == "bigactor.systems.local:LocalSystem"
    assert found["test"] == "bigactor.testing:TestSystem"


@attrs.define(kw_only=True)
class ThirdParty(LocalSystem):
    """A system another package would register."""

    name = "third"
    colour: str = "red"


def entry_points_of(*eps: importlib.metadata.EntryPoint) -> Any:
    """A stand-in for importlib.metadata.entry_points that knows only ``eps``."""

    def entry_points(**select: Any) -> importlib.metadata.EntryPoints:
        return importlib.metadata.EntryPoints(eps).select(**select)

    return entry_points


def test_lookup_finds_systems_only_through_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every name goes through the entry-point group: a registered third-party system is
    built with its options (and its environment), and 'test' is unknown when nothing
    registers it."""
    third = importlib.metadata.EntryPoint("third", f"{__name__}:ThirdParty", "bigactor.systems")
    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points_of(third))
    monkeypatch.setenv("BIGACTOR_THIRD_BOOT_TIMEOUT", "7")
    system = lookup("third", colour="blue")
    assert isinstance(system, ThirdParty)
    assert (system.colour, system.boot_timeout) == ("blue", 7.0)
    with pytest.raises(ValueError, match=r"unknown bigactor system 'test' \(known: local, third\)"):
        lookup("test")


def test_local_is_found_without_package_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run from a source tree (no entry points at all), 'local' is still found."""
    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points_of())
    assert isinstance(lookup("local"), LocalSystem)
    with pytest.raises(ValueError, match=r"unknown bigactor system 'nope' \(known: local\)"):
        lookup("nope")


def test_an_entry_point_that_is_not_a_system_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A name registered for something other than a System class is a TypeError naming it."""
    bad = importlib.metadata.EntryPoint("bad", "bigactor.systems:lookup", "bigactor.systems")
    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points_of(bad))
    with pytest.raises(
        TypeError, match=r"entry point 'bad' of bigactor\.systems names bigactor\.systems:lookup"
    ):
        lookup("bad")


async def test_options_with_a_system_instance_are_refused() -> None:
    """Options belong to a system name; with an instance they are a TypeError."""
    with pytest.raises(TypeError, match="options go with a system name"):
        async with bigactor.open_cluster(TestSystem(), boot_timeout=1):
            pass


async def test_environment_variable_picks_the_system(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a system argument, BIGACTOR_SYSTEM names it."""
    monkeypatch.setenv("BIGACTOR_SYSTEM", "test")
    async with bigactor.open_cluster() as cluster:
        assert isinstance(cluster.system, TestSystem)


async def test_closed_cluster_refuses_new_work() -> None:
    """After the cluster closes, starting or dialing raises ClusterClosed."""
    async with bigactor.open_cluster("test") as cluster:
        pass
    with pytest.raises(bigactor.ClusterClosed):
        await cluster.start(1, bigactor.Services(x=1))
    with pytest.raises(bigactor.ClusterClosed):
        cluster.machine_for("test:nowhere")


def test_run_takes_its_own_flags_and_leaves_the_rest() -> None:
    """bigactor.run removes --bigactor-* flags from sys.argv and applies them."""
    script = textwrap.dedent(
        """
        import os, sys, bigactor

        async def main():
            async with bigactor.open_cluster() as cluster:
                print(type(cluster.system).__name__, sys.argv[1:])

        bigactor.run(main)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script, "--bigactor-system=test", "--mine", "x",
         "--bigactor-log-level=warning"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "TestSystem ['--mine', 'x']"
