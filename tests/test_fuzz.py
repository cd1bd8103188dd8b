"""The fuzz targets of ``tests/fuzz_targets.py``: their seeds and past findings replayed here,
and a short coverage-guided run of each. The long run: ``python -m tests.fuzz`` (see there)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from fuzz_targets import OUTCOMES, TARGETS

ROOT = Path(__file__).resolve().parent.parent

#: Inputs that once made a target raise an error not the library's own, each with what it
#: raised; replayed by every run of the suite.
FOUND: dict[str, list[bytes]] = {
    "frames": [
        # An OOB-flagged frame whose payload is too short for a buffer count: struct.error from
        # _codec.oob_lengths (now CodecError, still a ValueError for the connection's reader).
        bytes.fromhex("050606000000000000000100000078"),
    ],
    "codec": [
        # Out-of-band buffers that do not match their announcement: ValueError from
        # _codec.decode (now CodecError naming both).
        bytes.fromhex(
            "044800010000000a0000000000000080059529000000000000008c0f6269676163746f722e5f636f646563"
            "948c0b5f62797465735f66726f6d9493949798859452942e0a0030313233343536373839"
        ),
        # Bytes that are not a pickle: UnpicklingError from _codec.decode (now CodecError).
        b"\x00" + b"\x05\x00garbage",
    ],
}


@pytest.mark.parametrize("name", list(TARGETS))
async def test_seeds_and_past_findings_raise_only_library_errors(name: str) -> None:
    """Every seed and past finding of the target ends in the library's own errors or none, and
    the seeds reach the end of what they exercise."""
    target = TARGETS[name]
    OUTCOMES.clear()
    for data in target.seeds():
        await target.run_one(data)
    completed = OUTCOMES["no error"] + OUTCOMES["WebSocketClosed"]  # a websocket ends closed
    assert completed > 0, dict(OUTCOMES)
    if name == "codec":
        assert dict(OUTCOMES) == {"no error": len(target.seeds())}
    for data in FOUND.get(name, []):
        await target.run_one(data)


@pytest.mark.skipif(
    importlib.util.find_spec("atheris") is None,
    reason="atheris is not installed (it has wheels for Linux x86-64 only)",
)
@pytest.mark.parametrize("name", list(TARGETS))
def test_short_fuzz_run_finds_nothing(name: str, tmp_path: Path) -> None:
    """A short run of the coverage-guided fuzzer on the target finds nothing."""
    inputs = TARGETS[name].short
    command = [sys.executable, "-m", "tests.fuzz", f"--inputs={inputs}", f"--artifacts={tmp_path}", name]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=100, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{name}: {inputs:,} inputs in" in result.stdout
