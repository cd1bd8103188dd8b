"""Choosing a system: by instance, by name, by BIGACTOR_SYSTEM, and bigactor.run's flags."""

import subprocess
import sys
import textwrap

import pytest

import bigactor
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
    with pytest.raises(ValueError, match=r"unknown bigactor system 'nope' \(known: local, test"):
        lookup("nope")


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
