"""Each machine's native thread pools (OpenBLAS, OpenMP, MKL, ...) are sized to its CPUs, not its
host's, unless the program set the variables. Real workers; the threads numpy's OpenBLAS
starts are counted in ``/proc``. This module does not import numpy: the workers import it."""

from __future__ import annotations

import os

import pytest

import bigactor
from bigactor._cpus import THREAD_VARIABLES, thread_defaults

pytestmark = pytest.mark.slow  # real worker processes


class Threads:
    def variables(self) -> dict[str, str | None]:
        return {name: os.environ.get(name) for name in THREAD_VARIABLES}

    def started_by_numpy(self) -> int:
        """How many threads importing numpy (and its OpenBLAS) starts in this process."""
        before = len(os.listdir("/proc/self/task"))
        import numpy

        numpy.ones((64, 64)) @ numpy.ones((64, 64))
        return len(os.listdir("/proc/self/task")) - before


@pytest.fixture(autouse=True)
def _driver_sets_none(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)


async def test_a_local_machine_runs_native_code_on_one_thread() -> None:
    """A local machine (maxprocs 1) gets every variable set to 1, and numpy starts no thread."""
    async with bigactor.open_cluster() as cluster:
        t = await cluster.spawn(Threads)
        assert await t.variables() == dict.fromkeys(THREAD_VARIABLES, "1")
        assert await t.started_by_numpy() == 0


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="OpenBLAS starts no thread on one CPU")
async def test_environ_and_the_drivers_environment_win(monkeypatch: pytest.MonkeyPatch) -> None:
    """An Environ param overrides the default, and so does a variable the driver's environment
    sets; with two threads allowed, OpenBLAS starts its second."""
    monkeypatch.setenv("MKL_NUM_THREADS", "7")
    async with bigactor.open_cluster() as cluster:
        t = await cluster.options(env={"OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"}).spawn(Threads)
        seen = await t.variables()
        assert seen["OPENBLAS_NUM_THREADS"] == seen["OMP_NUM_THREADS"] == "2"
        assert seen["MKL_NUM_THREADS"] == "7"
        assert seen["NUMEXPR_NUM_THREADS"] == "1"
        assert await t.started_by_numpy() == 1


def test_defaults_follow_maxprocs_and_skip_what_is_set() -> None:
    """A machine of 8 CPUs gets 8; a variable set already is not in the defaults."""
    assert thread_defaults(8, {}) == dict.fromkeys(THREAD_VARIABLES, "8")
    assert "OMP_NUM_THREADS" not in thread_defaults(8, {"OMP_NUM_THREADS": "3"})
