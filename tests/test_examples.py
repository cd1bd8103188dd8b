"""The examples run as a user runs them, on the local system, and print what they promise."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """Run an example; it must print no warning (a deprecated API, a coroutine never awaited)."""
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=60, check=False)
    assert "Warning" not in out.stderr, out.stderr
    return out


def test_counter_example_runs() -> None:
    """examples/counter.py shows sync, async, streamed and actor-to-actor calls."""
    out = run(str(EXAMPLES / "counter.py"))
    assert out.returncode == 0, out.stderr
    assert "add(5) -> 15" in out.stdout
    assert "total() -> 15" in out.stdout
    assert "count_up(3) -> [16, 17, 18]" in out.stdout
    assert "says 18" in out.stdout


def test_pi_example_scatters_over_n_machines() -> None:
    """examples/pi.py estimates pi on the number of machines given on the command line."""
    out = run(str(EXAMPLES / "pi.py"), "3", "--samples", "300000")
    assert out.returncode == 0, out.stderr
    assert "on 3 machines" in out.stdout
    estimate = float(out.stdout.split("pi ~ ")[1].split()[0])
    assert abs(estimate - 3.14159) < 0.05


def test_pool_example_fixes_lost_updates_keeps_order_and_caps_each_actor() -> None:
    """examples/pool.py shows the lost update fixed, gather, as_completed and an ActorPool."""
    out = run(str(EXAMPLES / "pool.py"))
    assert out.returncode == 0, out.stderr
    lost = int(out.stdout.split("lost updates: total = ")[1].split(",")[0])
    assert lost < 285  # every task but one overwrote the others' updates
    assert "gather: total = 285, expected 285" in out.stdout
    assert "gather in order: [0, 1, 4, 9, 16]" in out.stdout
    assert "as completed, by index: [4, 3, 2, 1, 0]" in out.stdout
    assert f"pool.map: {[x * x for x in range(20)]}" in out.stdout
    assert "most calls at once on each actor: [2, 2, 2]" in out.stdout
    assert "pool.map_unordered: total = 2470" in out.stdout
