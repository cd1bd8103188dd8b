"""The soak of ``tests/soak.py``, 60 seconds of it (``make soak`` runs ten minutes)."""

from __future__ import annotations

import sys

import pytest
import trio

pytestmark = pytest.mark.slow


@pytest.mark.timeout(240)
async def test_sixty_second_soak_of_64_machines_and_2000_callers_with_random_kills() -> None:
    """Every call right or a defined error, descriptors and RSS flat, no worker left behind."""
    done = await trio.run_process(
        [sys.executable, "-m", "tests.soak", "--seconds", "60", "--machines", "64",
         "--callers", "2000", "--report", "15"],
        capture_stdout=True, capture_stderr=True, check=False,
    )  # fmt: skip
    out = done.stdout.decode()
    assert done.returncode == 0, out[-4000:] + done.stderr.decode()[-4000:]
    assert '"failure_count": 0' in out
    assert '"kills": 0' not in out  # machines really died during the run
