"""Fixtures of the EC2 suite, which runs in a hub network namespace made by tests/ec2/run.

A plain ``pytest`` run (the project's testpaths include tests/) does not collect the tests here:
outside the hub there is no fake cloud. Its header says so.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .harness import FakeCloud, environment

IN_HUB = os.environ.get("EC2TEST_HUB") == "1"
#: Measurements the tests record, printed at the end of the run: {what: seconds}.
TIMINGS: dict[str, float] = {}


if not IN_HUB:
    collect_ignore_glob = ["test_*.py"]


def pytest_report_header(config: pytest.Config) -> str | None:
    if IN_HUB:
        return None
    return "tests/ec2: not collected outside a hub network namespace; run them with tests/ec2/run"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TIMINGS:
        terminalreporter.section("EC2 harness timings")
        for what, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{what}: {seconds:.2f} s")


@pytest.fixture(scope="session")
def wheelhouse() -> Path | None:
    """The wheelhouse tests/ec2/run built (EC2TEST_WHEELHOUSE), or None if it could not."""
    path = os.environ.get("EC2TEST_WHEELHOUSE")
    return Path(path) if path and Path(path, "requirements.txt").is_file() else None


@pytest.fixture(scope="session")
def worker_pins(wheelhouse: Path | None) -> list[str]:
    """The pinned requirements of a worker (``name==version``), all in the wheelhouse."""
    if wheelhouse is None:
        pytest.skip("no wheelhouse: tests/ec2/run could not build it (see its output)")
    return (wheelhouse / "requirements.txt").read_text().split()


@pytest.fixture(scope="session")
def fake_cloud(wheelhouse: Path | None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeCloud]:
    """One fake cloud for the session, with this process's environment pointed at it."""
    wheels = [wheelhouse] if wheelhouse else []
    with FakeCloud(wheelhouse=wheels, workdir=tmp_path_factory.mktemp("fake-cloud")) as cloud:
        TIMINGS["hub setup (moto, network, servers)"] = cloud.setup_seconds
        with environment(cloud):
            yield cloud


@pytest.fixture
def launch(fake_cloud: FakeCloud) -> Iterator[Callable[..., list[str]]]:
    """`FakeCloud.launch`, whose instances are terminated when the test ends."""
    launched: list[str] = []

    def launch(user_data: bytes | str, count: int = 1, **kwargs: object) -> list[str]:
        ids = fake_cloud.launch(user_data, count, **kwargs)  # type: ignore[arg-type]
        launched.extend(ids)
        return ids

    yield launch
    if launched:
        fake_cloud.ec2.terminate_instances(InstanceIds=launched)
        booted = fake_cloud.instances()
        for iid in launched:
            if iid in booted:
                fake_cloud.wait_exited(iid, timeout=10)
