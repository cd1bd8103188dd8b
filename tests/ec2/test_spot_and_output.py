"""A spot interruption and a machine's output, end to end on the fake cloud.

The driver is tests/ec2/programs/spot_output.py, run as a user runs a program (``python
prog.py ...`` with ``BIGACTOR_SYSTEM=ec2`` and the ``BIGACTOR_EC2_*`` options of
test_ec2_system.py); the test reads its JSON events on stdout and its stderr from a file. Its
times are ``time.monotonic()``, one clock for the test and the program on this host.

A spot interruption is the harness's ``interrupt_spot``: the notice appears in the instance's
metadata service, and the instance is terminated through the EC2 API when the notice runs out.
"""

from __future__ import annotations

import re
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from .conftest import TIMINGS
from .harness import FakeCloud
from .test_ec2_system import cluster_ids, driver_env, run, wait_terminated

__all__ = ["driver_env", "run"]  # fixtures of test_ec2_system's, used here too

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

PROGRAM = Path(__file__).with_name("programs") / "spot_output.py"
#: seconds between the interruption notice and the instance's termination (AWS gives 120)
NOTICE = 6.0
#: how often the worker asks its metadata service for a notice (``_remote._worker.IMDS_PERIOD``)
IMDS_PERIOD = 2.0
#: how often the driver asks DescribeInstances (``BIGACTOR_EC2_POLL_INTERVAL`` of driver_env)
POLL = 1.0
#: scheduling slack on a loaded 2-core machine, for the upper bounds of real-time windows
SLACK = 1.5
#: lines of each kind the output program's actor writes per method (programs/spot_output.py)
LINES = 1500


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The program's directory. ``Driver`` runs ``prog.py``: the program is copied under that
    name, alone, so that its bundle holds nothing else."""
    root = tmp_path_factory.mktemp("spot-output")
    shutil.copy(PROGRAM, root / "prog.py")
    return root


def utc_seconds(t: float) -> str:
    """``HH:MM:SS`` of the wall-clock time ``t``, as the worker's notice names it."""
    return datetime.fromtimestamp(t, UTC).strftime("%H:%M:%S")


def test_spot_interruption_drains_the_machine_then_its_termination_fails_calls_naming_the_notice(
    fake_cloud: FakeCloud, run: Any
) -> None:
    """An interruption notice makes the machine draining within a poll of the metadata service
    and runs on_draining once; the machine serves on until its instance is terminated, then
    pending and new calls raise MachineLost naming the notice; the other machine is untouched
    and leaving the cluster terminates both."""
    driver = run("spot", BIGACTOR_EC2_SPOT="1")
    started = driver.wait("started", timeout=240)
    victim = started["victim"]
    ids = started["instances"]
    assert set(started["markets"].values()) == {"spot"}
    assert started["draining"] == [False, False]

    wall_before = time.time()
    fake_cloud.interrupt_spot(ids[victim], notice_s=NOTICE)
    t_notice = time.monotonic()
    wall_after = time.time()
    # The harness writes the notice's time to the second, as IMDS does.
    whens = {utc_seconds(wall_before + NOTICE), utc_seconds(wall_after + NOTICE)}

    draining = driver.wait("draining", timeout=30)
    latency = draining["t"] - t_notice
    TIMINGS["spot notice in IMDS -> the worker gives notice (wall clock)"] = (
        draining["notice_times"][0] - wall_after
    )
    TIMINGS["spot notice in IMDS -> machine.draining on the driver"] = latency
    assert latency <= IMDS_PERIOD + SLACK, latency
    assert draining["draining"] is True
    assert draining["state"] == "RUNNING"  # draining is not a state: the machine serves on
    assert draining["survivor_draining"] is False
    [[kind, message, text]] = draining["notices"]
    assert kind == "interruption"
    assert any(message == f"spot interruption: instance action terminate at {w} UTC" for w in whens), message

    called = driver.wait("on_draining", timeout=10)
    assert (called["addr"], called["kind"], called["message"]) == (victim, kind, message)
    assert called["draining"] is True

    # The harness terminates the instance when the notice runs out; EC2 says so at once.
    while fake_cloud.state(ids[victim]) == "running":
        assert time.monotonic() - t_notice < NOTICE + 10, "the harness never terminated the instance"
        time.sleep(0.05)
    t_terminated = time.monotonic()
    assert NOTICE - 0.5 <= t_terminated - t_notice <= NOTICE + SLACK

    lost = driver.wait("lost", timeout=60)
    failed, pending, new_call = lost["failed"], lost["pending"], lost["new_call"]
    TIMINGS["spot instance terminated -> calls on it raise MachineLost"] = failed["t"] - t_terminated
    TIMINGS["spot instance terminated -> pending call raises MachineLost"] = pending["t"] - t_terminated
    # It served calls (one every 0.05 s) from its notice until its instance was gone.
    served = lost["served"]
    assert len(served) >= (t_terminated - draining["t"]) / 0.05 / 4, served
    assert served[0] - draining["t"] < SLACK
    assert t_terminated - served[-1] < SLACK
    assert failed["type"] == "MachineLost"
    # In most runs the worker's end breaks its connection before EC2 is asked, and the next
    # call redials a host that is gone: the machine's stop must end that dial too (before the
    # fix it waited out the 10 s handshake timeout, in 4 runs of 6).
    assert failed["t"] - t_terminated <= POLL + SLACK
    assert pending["t"] - t_terminated <= POLL + SLACK
    assert "result" not in pending
    for error in (failed["error"], pending["error"], new_call["error"], lost["machine_error"]):
        assert error is not None
        assert victim in error, error
        assert f"instance {ids[victim]} terminated" in error, error
        assert f"(after its {text})" in error, error
        assert "interruption notice at" in error, error
        assert message in error, error
    assert lost["state"] == "STOPPED"

    calm = driver.wait("survivor", timeout=30)
    assert calm["errors"] == []
    assert calm["state"] == "RUNNING"
    assert (calm["draining"], calm["notices"], calm["error"]) == (False, 0, None)
    assert calm["value"] == calm["calls"] > (t_terminated - t_notice) / 0.2 / 2
    assert calm["last_call"] > failed["t"]  # it answered after the victim was lost
    assert [c["addr"] for c in driver.wait("on_draining_calls")["calls"]] == [victim]

    closed = driver.wait("closed", timeout=120)
    TIMINGS["leaving open_cluster (1 live spot instance)"] = closed["seconds"]
    assert driver.finish() == 0, driver.stderr()[-4000:]
    assert set(cluster_ids(fake_cloud, list(ids.values())).values()) == {"terminated"}
    wait_terminated(fake_cloud, list(ids.values()), timeout=15)
    stderr = driver.stderr()
    # The worker's own log line came over its connection, and the driver logged the notice.
    assert re.search(rf"^{re.escape(victim)}: .*interruption notice: {re.escape(message)}$", stderr, re.M), (
        stderr[-4000:]
    )
    assert f"{victim}: {text}" in stderr
    assert "Traceback" not in stderr, stderr[-4000:]


def test_an_actors_output_reaches_the_drivers_stderr_over_the_connection_in_order(
    fake_cloud: FakeCloud, run: Any
) -> None:
    """stdout, stderr and logging lines of an actor on an instance, thousands of them and one
    printed just before the cluster closes (and one left without its newline), all reach the
    driver's stderr in order with the machine's ``addr: `` prefix, over the connection."""
    driver = run("output")
    started = driver.wait("started", timeout=240)
    addr, iid = started["addr"], started["instance_id"]
    assert driver.wait("said", timeout=120)["value"] == "said"
    closed = driver.wait("closed", timeout=60)
    TIMINGS["leaving open_cluster right after the last line (1 instance)"] = closed["seconds"]
    assert driver.finish() == 0, driver.stderr()[-4000:]

    expected = [
        line
        for tag in ("sync", "async")
        for i in range(LINES)
        for line in (f"{tag} out {i}", f"{tag} err {i}", f"WARNING talker: {tag} log {i}")
    ]
    expected += ["the last line before the cluster closes", "and a line left open"]
    prefix = f"{addr}: "
    stderr = driver.stderr()
    ours = re.compile(
        r"(?:WARNING talker: )?(?:sync|async) (?:out|err|log) \d+|the last line .*|and a line .*"
    )
    got = [
        line.removeprefix(prefix)
        for line in stderr.splitlines()
        if line.startswith(prefix) and ours.fullmatch(line.removeprefix(prefix))
    ]
    assert len(got) == len(expected), (len(got), len(expected), stderr[-3000:])
    assert got == expected
    # Nothing of it came another way: every such line of the driver's stderr is prefixed.
    assert not [line for line in stderr.splitlines() if ours.search(line) and not line.startswith(prefix)]
    assert "dropped" not in stderr, stderr[-3000:]
    # The worker captured its fds 1 and 2: the instance's console never saw the lines.
    assert "sync out 0" not in fake_cloud.console_output(iid)
    assert cluster_ids(fake_cloud, [iid])[iid] == "terminated"
    assert "Traceback" not in stderr, stderr[-4000:]
