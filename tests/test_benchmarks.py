"""Smoke test of the benchmark suite: ``python -m benchmarks --quick`` runs and writes sane JSON.

No timing is asserted: this only proves the suite still works against the library.
"""

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent


def positive(summary: dict[str, Any]) -> bool:
    return all(isinstance(summary[k], float | int) and summary[k] > 0 for k in ("median", "min", "max"))


def test_quick_run_writes_table_and_json(tmp_path: Path) -> None:
    """A quick pass of two sections prints their rows and records them with the machine."""
    out = tmp_path / "bench.json"
    argv = [sys.executable, "-m", "benchmarks", "--quick", "--only", "sequential,kill", "--json", str(out)]
    run = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=110, check=False)
    assert run.returncode == 0, run.stderr
    assert "b. sequential round trip" in run.stdout
    assert "f. SIGKILL of a worker" in run.stdout

    doc = json.loads(out.read_text())
    env = doc["environment"]
    assert env["cpu_count"] >= 1
    assert env["python"].count(".") == 2
    assert env["versions"]["bigactor"]
    assert env["versions"]["trio"]
    assert doc["sections"] == ["sequential", "kill"]
    assert doc["runtime_s"] > 0

    seq = doc["results"]["sequential"]
    assert seq["unit"] == "µs"
    assert positive(seq["bigactor"])
    assert seq["bigactor"]["p99"] >= seq["bigactor"]["median"]
    assert len(seq["bigactor"]["runs"]) == doc["options"]["runs"]
    assert {f["key"] for f in seq["floors"]} == {"tcp", "ws"}
    for floor in seq["floors"]:
        assert positive(floor)
        assert floor["x_floor"] > 0
    assert seq["target"]["op"] == "<="
    assert isinstance(seq["target"]["met"], bool)

    kill = doc["results"]["kill"]
    assert kill["unit"] == "ms"
    assert positive(kill["bigactor"])
    assert positive(kill["floors"][0])
    assert kill["all_machine_lost"], kill["raised"]
    sync = doc["results"]["sequential_sync"]  # the same call to a plain ``def`` method
    assert positive(sync["bigactor"])
    assert "sync method" in sync["title"]
    assert set(doc["results"]) == {"sequential", "sequential_sync", "kill"}


def test_unknown_section_is_refused() -> None:
    """A misspelt section name fails at once, naming the choices."""
    argv = [sys.executable, "-m", "benchmarks", "--only", "sequentail"]
    run = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert run.returncode == 2
    assert "sequentail" in run.stderr
    assert "cold_start" in run.stderr
