"""Network partitions and replayed handshakes, for real, on the fake cloud.

One driver program (tests/ec2/programs/partitions.py, ``BIGACTOR_SYSTEM=ec2``) starts one
cluster of ten instances with a `Ledger` actor on each; the test cuts and heals the instances'
links from the hub (`FakeCloud.cut`: the hub side of the veth down, a blackhole qdisc on
either side, or a flapping link) while the program calls them, and reads what the program saw
as JSON lines. Every scenario has an instance of its own, so they run at once (the cluster's
keepalive is per system, one for all of them); one instance is a bystander that is called
throughout and is the target of the replayed handshake.

The keepalive is short (``period=2,timeout=8,rpc_timeout=2``: a keepalive every 1 s, each
attempt may take 2 s, given up 8.5 s after the first unanswered one), so a lapse comes in
seconds. With it the worker's watchdog gives up on its driver ``unattended`` = 8 - 2 = 6 s
after the last keepalive it answered (plus up to one 2 s tick): a partition healed "before the
timeout" is healed after 2.5 s here, well inside both (TCP's retransmission backoff delays the
first bytes after a heal too).

Instances run with ``final_action`` "sleep 300" rather than the harness's model of
``poweroff`` (the user data ends, the cloud terminates the instance): a worker whose watchdog
expires then leaves its instance running, as on EC2 with an empty ``final_action``. So what
the driver learns of a cut instance it learns from the silence alone (keepalives), not from
EC2's report that the instance shut itself down: the ``terminated`` path is tested in
test_ec2_system.py.
"""

from __future__ import annotations

import collections
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from .conftest import TIMINGS
from .driver import Program
from .harness import Cut, FakeCloud
from .test_ec2_system import CACHE, x86_64_image

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

PROGRAM = Path(__file__).with_name("programs") / "partitions.py"
#: the cluster's keepalive (see the module docstring)
KEEPALIVE = {"period": 2.0, "timeout": 8.0, "rpc_timeout": 2.0}
#: how long a partition lasts when it is healed "before the timeout"
SHORT_CUT = 2.5
#: how long the flapping link flaps, and its period (down, up, down, ... each this long)
FLAP_SECONDS, FLAP_PERIOD = 12.0, 1.0
#: scheduling slack on a loaded 2-core machine, for the upper bounds of real-time windows
SLACK = 1.0
#: the instances' roles: index in the cluster -> what is done to it
ROLES = [
    "bystander",
    "lost down",
    "lost loss",
    "lost loss-inbound",
    "lost loss-outbound",
    "healed down",
    "healed loss",
    "healed loss-inbound",
    "healed loss-outbound",
    "flap",
]


def start_program(fake_cloud: FakeCloud, root: Path, log: Path, n: int) -> Program:
    """Start the partitions program on ``n`` instances, with the system's options."""
    CACHE.mkdir(parents=True, exist_ok=True)
    root.mkdir()
    shutil.copy(PROGRAM, root / PROGRAM.name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BIGACTOR_")}
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "BIGACTOR_SYSTEM": "ec2",
            "BIGACTOR_EC2_REGION": fake_cloud.region,
            "BIGACTOR_EC2_SUBNET_ID": fake_cloud.subnet_id,
            "BIGACTOR_EC2_SECURITY_GROUP_IDS": fake_cloud.security_group_id,
            "BIGACTOR_EC2_AMI": x86_64_image(fake_cloud),
            "BIGACTOR_EC2_INDEX_URL": fake_cloud.index_url,
            "BIGACTOR_EC2_FINAL_ACTION": "sleep 300",
            "BIGACTOR_EC2_CACHE": str(CACHE),
            "BIGACTOR_EC2_BOOT_LOG": "/run/bigactor-boot.log",
            "BIGACTOR_EC2_KEEPALIVE": ",".join(f"{k}={v}" for k, v in KEEPALIVE.items()),
            "BIGACTOR_EC2_BOOT_TIMEOUT": "150",
            "BIGACTOR_EC2_POLL_INTERVAL": "1",
            "BIGACTOR_EC2_TERMINATE_TIMEOUT": "60",
            "BIGACTOR_EC2_PROGRESS": "no",
        }
    )
    return Program(PROGRAM.name, [str(n)], env, root, log)


def lapse_schedule(period: float, timeout: float, rpc_timeout: float) -> float:
    """Seconds from the first unanswered keepalive to MachineLost, by the driver's schedule
    (``Machine._keepalive_once``): every attempt takes ``rpc_timeout``, then waits 1 s, x1.5,
    at most 5 s, until the next wait would end past ``timeout``."""
    now, wait = 0.0, 1.0
    while True:
        now += rpc_timeout
        if now + wait > timeout:
            return now
        now += wait
        wait = min(wait * 1.5, 5.0)


class Scenarios:
    """What the test does to each instance, one thread per instance; results by role."""

    def __init__(self, cloud: FakeCloud, program: Program, machines: list[dict[str, str]]) -> None:
        self.cloud = cloud
        self.program = program
        self.machines = machines
        self.results: dict[str, dict[str, Any]] = {}
        self.errors: dict[str, BaseException] = {}

    def run(self, jobs: dict[str, Callable[[int], dict[str, Any]]]) -> None:
        def one(role: str, job: Callable[[int], dict[str, Any]]) -> None:
            try:
                self.results[role] = job(ROLES.index(role))
            except BaseException as exc:
                self.errors[role] = exc
            finally:
                iid = self.machines[ROLES.index(role)]["instance_id"]
                self.cloud.heal(iid)  # a no-op unless the job failed midway

        threads = [threading.Thread(target=one, args=(r, j), name=r) for r, j in jobs.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join(200)
        if self.errors:
            role, exc = next(iter(self.errors.items()))
            raise AssertionError(f"scenario {role!r} failed: {exc}") from exc

    def cut(self, m: int, how: Cut, **kwargs: float) -> float:
        """Cut instance ``m``; return when (monotonic), taken after the cut is in place."""
        self.cloud.cut(self.machines[m]["instance_id"], how, **kwargs)  # type: ignore[arg-type]
        return time.monotonic()

    def heal(self, m: int) -> float:
        self.cloud.heal(self.machines[m]["instance_id"])
        return time.monotonic()

    def lost(self, how: Cut) -> Callable[[int], dict[str, Any]]:
        """Cut for good: a call pending on the instance, calls made during the cut, a call
        made after the machine is lost."""

        def job(m: int) -> dict[str, Any]:
            p = self.program
            tag = f"lost-{how}"
            p.send("pending", tag=f"{tag}-pending", m=m)
            p.wait("arrived", f"{tag}-pending", timeout=30)
            t_cut = self.cut(m, how)
            p.send("calls", tag=f"{tag}-during", m=m, ids=[f"{tag}-{i}" for i in range(3)], hold=0,
                   arrive=False)  # fmt: skip
            ended = p.wait("ended", f"{tag}-pending", timeout=KEEPALIVE["timeout"] + 30)
            p.send("now", tag=f"{tag}-after", m=m)
            after = p.wait("now", f"{tag}-after", timeout=30)
            during = p.wait("done", f"{tag}-during", timeout=30)
            return {"t_cut": t_cut, "ended": ended, "after": after, "during": during}

        return job

    def healed(
        self, how: Cut, seconds: float = SHORT_CUT, **kwargs: float
    ) -> Callable[[int], dict[str, Any]]:
        """Cut, then heal after ``seconds``: calls whose replies were held up by the cut, and
        calls made during it; afterwards every id the actor saw and the machine's state."""

        def job(m: int) -> dict[str, Any]:
            p = self.program
            tag = f"healed-{how}"
            before = [f"{tag}-before-{i}" for i in range(10)]
            during = [f"{tag}-during-{i}" for i in range(10)]
            # Each call holds 1 s: its reply is due while the link is cut.
            p.send("calls", tag=f"{tag}-before", m=m, ids=before, hold=1.0)
            p.wait("arrived", f"{tag}-before", timeout=30)
            t_cut = self.cut(m, how, **kwargs)
            batches = [f"{tag}-before"]
            if how == "flap":
                # Calls all along: some leave while the link is up, some while it is down.
                during, k = [], 0
                while time.monotonic() < t_cut + seconds:
                    batch = [f"{tag}-during-{k}-{i}" for i in range(5)]
                    p.send("calls", tag=f"{tag}-during-{k}", m=m, ids=batch, hold=0, arrive=False)
                    batches.append(f"{tag}-during-{k}")
                    during += batch
                    k += 1
                    time.sleep(0.5)
            else:
                p.send("calls", tag=f"{tag}-during", m=m, ids=during, hold=0, arrive=False)
                batches.append(f"{tag}-during")
            time.sleep(max(0.0, t_cut + seconds - time.monotonic()))
            t_heal = self.heal(m)
            done = [p.wait("done", b, timeout=60) for b in batches]
            p.send("seen", tag=f"{tag}-seen", m=m)
            seen = p.wait("seen", f"{tag}-seen", timeout=30)["ids"]
            p.send("state", tag=f"{tag}-state", m=m)
            state = p.wait("state", f"{tag}-state", timeout=30)
            outcomes = {k: v for d in done for k, v in d["outcomes"].items()}
            return {
                "t_cut": t_cut,
                "t_heal": t_heal,
                "ids": before + during,
                "outcomes": outcomes,
                "seen": seen,
                "state": state,
            }

        return job

    def bystander(self, seconds: float) -> Callable[[int], dict[str, Any]]:
        def job(m: int) -> dict[str, Any]:
            self.program.send("serve", tag="bystander", m=m, seconds=seconds)
            return self.program.wait("served", "bystander", timeout=seconds + 30)

        return job


@attrs.frozen
class Run:
    """The cluster after every partition scenario ran: what the program saw, by role."""

    program: Program
    machines: list[dict[str, str]]
    results: dict[str, dict[str, Any]]

    def addr(self, role: str) -> str:
        return self.machines[ROLES.index(role)]["addr"]


@pytest.fixture(scope="module")
def partitioned(
    fake_cloud: FakeCloud, worker_pins: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Run]:
    """One cluster of ``len(ROLES)`` instances on which every partition scenario has run, all
    at once, each on its own instance; the program leaves its cluster cleanly at the end."""
    tmp = tmp_path_factory.mktemp("partitions")
    p = start_program(fake_cloud, tmp / "program", tmp / "program.log", len(ROLES))
    try:
        ready = p.wait("ready", timeout=240)
        TIMINGS[f"{len(ROLES)} instances: program start until all RUNNING"] = ready["seconds"]
        ka = ready["keepalive"]
        assert (ka["period"], ka["timeout"], ka["rpc_timeout"]) == tuple(KEEPALIVE.values())
        assert ka["unattended"] > SHORT_CUT + KEEPALIVE["period"] / 2 + 2  # see the module docstring
        scenarios = Scenarios(fake_cloud, p, ready["machines"])
        cuts: tuple[Cut, ...] = ("down", "loss", "loss-inbound", "loss-outbound")
        scenarios.run(
            {
                "bystander": scenarios.bystander(KEEPALIVE["timeout"] + 6),
                **{f"lost {how}": scenarios.lost(how) for how in cuts},
                **{f"healed {how}": scenarios.healed(how) for how in cuts},
                "flap": scenarios.healed("flap", FLAP_SECONDS, period=FLAP_PERIOD),
            }
        )
        yield Run(p, ready["machines"], scenarios.results)
        p.send("quit")
        p.wait("closed", timeout=120)
        assert p.finish() == 0, p.stderr()[-4000:]
    finally:
        if p.process.poll() is None:
            p.process.kill()
        p.finish(10)


@pytest.mark.parametrize("how", ["down", "loss", "loss-inbound", "loss-outbound"])
def test_a_cut_link_loses_its_machine_after_the_keepalive_timeout_and_new_calls_fail_fast(
    partitioned: Run, how: str
) -> None:
    """A link cut for good (down, total loss, loss of either direction) fails the call pending
    on it with MachineLost after the keepalive timeout, not before and not much after, saying
    why; calls made during the cut fail with it; a new call fails at once."""
    r = partitioned.results[f"lost {how}"]
    ended, after, during = r["ended"], r["after"], r["during"]
    # The first unanswered keepalive leaves at most period/2 after the cut (one in flight at
    # the cut left a moment before it), and the driver's schedule gives up `lapse` later.
    lapse = lapse_schedule(**KEEPALIVE)
    assert lapse >= KEEPALIVE["timeout"]  # so the window below starts after the timeout
    window = (lapse - 0.1, lapse + KEEPALIVE["period"] / 2 + SLACK)
    seconds = ended["t"] - r["t_cut"]
    TIMINGS[f"cut ({how}) -> pending call raises MachineLost (timeout {KEEPALIVE['timeout']} s)"] = seconds
    TIMINGS[f"cut ({how}): a new call on the lost machine fails in"] = after["seconds"]
    assert ended["error"] == "MachineLost", ended
    assert window[0] <= seconds <= window[1], (seconds, window, ended)
    message = ended["message"]
    assert partitioned.addr(f"lost {how}") in message
    assert f"keepalive failed after {lapse:.1f} s" in message, message
    assert f"(timeout={KEEPALIVE['timeout']} s, rpc timeout={KEEPALIVE['rpc_timeout']} s)" in message
    assert "no reply within the rpc timeout" in message
    assert ended["state"] == "STOPPED"
    assert {o["error"] for o in during["outcomes"].values()} == {"MachineLost"}, during
    assert all(abs(o["t"] - ended["t"]) < 0.5 for o in during["outcomes"].values()), during
    assert after["error"] == "MachineLost", after
    assert "keepalive failed after" in after["message"]
    assert after["seconds"] < 0.1, after  # not after another timeout


@pytest.mark.parametrize(
    "role", ["healed down", "healed loss", "healed loss-inbound", "healed loss-outbound", "flap"]
)
def test_a_cut_healed_in_time_and_a_flapping_link_lose_no_call_and_repeat_none(
    partitioned: Run, role: str
) -> None:
    """A cut healed well before the keepalive timeout, and a link flapping (1 s down, 1 s up)
    for longer than it, lose nothing: every call, whether its reply was due during the cut or
    it was made during the cut, returns once with its own value; the actor saw each call
    once; the machine is RUNNING."""
    r = partitioned.results[role]
    outcomes, ids = r["outcomes"], r["ids"]
    errors = {k: v for k, v in outcomes.items() if "error" in v}
    assert not errors, errors
    assert sorted(outcomes) == sorted(ids)
    assert all(outcomes[i]["value"] == i for i in ids)
    counts = collections.Counter(r["seen"])
    assert sorted(counts) == sorted(ids), set(ids) ^ set(counts)
    assert set(counts.values()) == {1}, {k: n for k, n in counts.items() if n > 1}
    assert r["state"]["state"] == "RUNNING", r["state"]
    if role == "flap":
        # The link did flap under the keepalives: some took most of a down phase to answer.
        assert max(r["state"]["keepalive_replies"]) > 0.3, r["state"]
    last = max(o["t"] for o in outcomes.values())
    TIMINGS[f"{role}: {len(ids)} calls, the last returned after the heal in"] = last - r["t_heal"]


def test_other_machines_serve_throughout_the_partitions(partitioned: Run) -> None:
    """A machine whose link is not cut answers a call every 0.1 s, quickly, through all of it."""
    served = partitioned.results["bystander"]
    TIMINGS["bystander during the partitions: slowest call"] = served["slowest"]
    assert served["errors"] == [], served
    assert served["count"] > 50, served
    assert served["slowest"] < 1.0, served


def test_a_replayed_handshake_and_a_plaintext_upgrade_are_refused_and_nothing_runs(
    fake_cloud: FakeCloud, partitioned: Run
) -> None:
    """The bytes of a genuine driver connection (TLS with the driver's certificate, the
    cluster key's handshake, a call), recorded by a relay and sent again as they were, are
    refused by TLS: the call they carry never runs again. A plaintext websocket upgrade to the
    TLS port is refused too, unanswered. Both workers serve on."""
    p = partitioned.program
    p.send("replay", tag="replay-probe", m=ROLES.index("bystander"))
    replayed = p.wait("replayed", "replay-probe", timeout=60)
    assert replayed["genuine"] == "replay-probe"  # the relay carried a working connection
    assert replayed["head"] == "160301"  # a TLS handshake record: the ClientHello
    replay = replayed["replay"]
    # The worker answers the replayed ClientHello with a fresh handshake, cannot decrypt the
    # client's old Finished and closes, well before its 10 s handshake timeout.
    assert replay["how"] == "closed" or replay["how"].startswith("reset"), replay
    assert replay["seconds"] < 5, replay
    assert not replay["http"]
    p.send("plaintext", tag="plaintext", m=ROLES.index("healed down"))
    plaintext = p.wait("plaintext", "plaintext", timeout=60)
    assert plaintext["how"] == "closed" or plaintext["how"].startswith("reset"), plaintext
    assert not plaintext["http"], plaintext
    assert plaintext["seconds"] < 5, plaintext
    TIMINGS["replayed driver handshake: refused in"] = replay["seconds"]
    TIMINGS["plaintext websocket upgrade to the TLS port: refused in"] = plaintext["seconds"]
    for role, tag in (("bystander", "replay"), ("healed down", "plaintext")):
        p.send("seen", tag=f"{tag}-seen", m=ROLES.index(role))
        seen = p.wait("seen", f"{tag}-seen", timeout=30)["ids"]
        assert seen.count("replay-probe") == (role == "bystander"), seen[-5:]
    # Each worker says why (its output reaches the driver's stderr over its connection).
    for role, why in (("bystander", "DECRYPTION_FAILED_OR_BAD_RECORD_MAC"), ("healed down", "HTTP_REQUEST")):
        line = f"{partitioned.addr(role)}: rejected a connection: TLS handshake failed: [SSL: {why}]"
        deadline = time.monotonic() + 10
        while line not in p.stderr():
            assert time.monotonic() < deadline, (line, p.stderr()[-3000:])
            time.sleep(0.1)
