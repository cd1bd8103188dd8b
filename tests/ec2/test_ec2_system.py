"""The EC2 system end to end, on the fake cloud: a user's program run as ``python prog.py`` with
``BIGACTOR_SYSTEM=ec2`` and ``BIGACTOR_EC2_*`` settings, its instances booted from their real
user data (venv and pip from the cloud's package server, enrollment, code bundle, mutual TLS).

The system is configured, never patched. What the fake cloud needs is said through options a
user has too: the subnet, security group and AMI; the cloud's package index (plain HTTP, so the
system adds ``--trusted-host``); ``final_action=""`` (the fake instance ends when its user data
does, as a real one ends by ``poweroff``); a cache directory on the host shared by the
instances (as a cache volume or a baked AMI would persist it), so that the venv is made once
per set of pins and the bundle cache can be seen; and a boot log in each instance's own /run.

The programs are tests/ec2/programs/prog.py (actors in ``__main__``) and shapes.py beside it
(an actor class in a module of the program's directory), copied with a file unique to the
session so that the first launch never finds its bundle cached from an earlier session.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bigactor.systems.ec2 import load_types

from .conftest import TIMINGS
from .driver import Program
from .harness import FakeCloud

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

PROGRAMS = Path(__file__).with_name("programs")
#: venvs (keyed by the pins) and bundles (keyed by their digest), kept between sessions
CACHE = Path(os.environ.get("EC2TEST_CACHE", "/var/cache/bigactor-ec2-tests"))
#: the keepalive the programs run with: short, so that a dead driver's instances end soon
KEEPALIVE = {"period": 4.0, "timeout": 20.0, "rpc_timeout": 4.0}


class Driver(Program):
    """A running ``python prog.py ...`` in the program's directory (see ``Program``)."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path, log: Path) -> None:
        super().__init__("prog.py", argv, env, cwd, log)


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The program's directory: prog.py, shapes.py and a file unique to this session."""
    root = tmp_path_factory.mktemp("program")
    for name in ("prog.py", "shapes.py"):
        shutil.copy(PROGRAMS / name, root / name)
    (root / "session.py").write_text(f"SESSION = {secrets.token_hex(8)!r}\n")
    return root


@pytest.fixture(scope="module")
def driver_env(fake_cloud: FakeCloud, worker_pins: list[str]) -> dict[str, str]:
    """The driver's environment: the cloud's (``environment``) and the system's options."""
    CACHE.mkdir(parents=True, exist_ok=True)
    # tests/ec2/run's own BIGACTOR_EC2_* variables would read as options of the system
    # (EC2TEST_WHEELHOUSE is one): the driver gets none but its options.
    env = {k: v for k, v in os.environ.items() if not k.startswith("BIGACTOR_")}
    keepalive = ",".join(f"{k}={v}" for k, v in KEEPALIVE.items())
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "BIGACTOR_SYSTEM": "ec2",
            "BIGACTOR_EC2_REGION": fake_cloud.region,
            "BIGACTOR_EC2_SUBNET_ID": fake_cloud.subnet_id,
            "BIGACTOR_EC2_SECURITY_GROUP_IDS": fake_cloud.security_group_id,
            "BIGACTOR_EC2_AMI": x86_64_image(fake_cloud),
            "BIGACTOR_EC2_INDEX_URL": fake_cloud.index_url,
            "BIGACTOR_EC2_FINAL_ACTION": "",
            "BIGACTOR_EC2_CACHE": str(CACHE),
            "BIGACTOR_EC2_BOOT_LOG": "/run/bigactor-boot.log",
            "BIGACTOR_EC2_KEEPALIVE": keepalive,
            "BIGACTOR_EC2_BOOT_TIMEOUT": "150",
            "BIGACTOR_EC2_POLL_INTERVAL": "1",
            "BIGACTOR_EC2_TERMINATE_TIMEOUT": "60",
            "BIGACTOR_EC2_PROGRESS": "no",
        }
    )
    return env


@pytest.fixture
def run(program: Path, driver_env: dict[str, str], tmp_path: Path) -> Iterator[Any]:
    drivers: list[Driver] = []

    def run(*argv: str, **env: str) -> Driver:
        d = Driver(list(argv), {**driver_env, **env}, program, tmp_path / f"driver-{len(drivers)}.log")
        drivers.append(d)
        return d

    yield run
    for d in drivers:
        if d.process.poll() is None:
            d.process.kill()
        d.finish(10)


def x86_64_image(fake_cloud: FakeCloud) -> str:
    """An AMI of moto's that an m5.large boots (the cloud's ``image_id`` may be arm64)."""
    images = fake_cloud.ec2.describe_images(
        Owners=["amazon"], Filters=[{"Name": "architecture", "Values": ["x86_64"]}]
    )["Images"]
    return min(image["ImageId"] for image in images)


def cluster_ids(fake_cloud: FakeCloud, instance_ids: list[str]) -> dict[str, str]:
    reply = fake_cloud.ec2.describe_instances(InstanceIds=instance_ids)
    return {i["InstanceId"]: i["State"]["Name"] for r in reply["Reservations"] for i in r["Instances"]}


def wait_terminated(fake_cloud: FakeCloud, instance_ids: list[str], timeout: float) -> float:
    """Seconds until EC2 says every instance is terminated and its processes are gone."""
    t0 = time.monotonic()
    while True:
        states = cluster_ids(fake_cloud, instance_ids)
        if all(s == "terminated" for s in states.values()):
            break
        assert time.monotonic() - t0 < timeout, f"not terminated after {timeout} s: {states}"
        time.sleep(0.1)
    booted = fake_cloud.instances()
    for iid in instance_ids:
        if iid in booted:
            fake_cloud.wait_exited(iid, timeout=15)
    return time.monotonic() - t0


def stage_seconds(boot_log: str) -> dict[str, float]:
    """{stage: seconds} from the boot log's "stage X done in Y s" lines."""
    out = {}
    for line in boot_log.splitlines():
        if " done in " in line and "stage " in line:
            stage = line.split("stage ", 1)[1].split(" ", 1)[0]
            out[stage] = float(line.rsplit(" done in ", 1)[1].split()[0])
    return out


def probe(address: str, *, context: ssl.SSLContext | None, payload: bytes) -> str:
    """Dial ``address`` (``tls:host:port``) from the hub: TLS with ``context`` (or plaintext),
    send ``payload``, and say what came back."""
    host, port = address.removeprefix("tls:").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        sock: socket.socket = raw
        try:
            if context is not None:
                try:
                    sock = context.wrap_socket(raw, server_hostname=host)
                except (ssl.SSLError, OSError) as exc:
                    return f"handshake refused: {exc}"
            try:
                sock.sendall(payload)
                data = sock.recv(4096)
            except (ssl.SSLError, OSError) as exc:
                return f"refused after the handshake: {exc}"
            return f"closed with {data!r}" if not data or b"HTTP" not in data else f"ANSWERED {data!r}"
        finally:
            sock.close()


def test_three_instances_run_actors_call_each_other_and_end_cleanly(fake_cloud: FakeCloud, run: Any) -> None:
    """Three instances boot and run actors from __main__ and from a module beside the program;
    an actor calls another on a different instance through a handle; Environ reaches the
    worker; the worker imports only what was shipped or pinned; a second start finds the bundle
    cached; unauthenticated peers are refused; a terminated instance fails its pending call
    with MachineLost naming the cause; closing terminates every instance."""
    import trustme

    driver = run("main")
    started = driver.wait("started", timeout=240)
    instances = started["instances"]
    assert len(started["machines"]) == 3
    assert set(instances) == set(started["machines"])
    for addr, inst in instances.items():
        assert addr == f"tls:{inst['hostname']}:8443"
        assert inst["details"]["market"] == "on-demand"
        assert inst["details"]["type"] == "m5.large"
        assert inst["details"]["zone"] == fake_cloud.availability_zone
        assert (inst["maxprocs"], inst["memory"]) == (2, 8 << 30)
        assert "stage enrollment" in inst["boot_log"]
    # This session's bundle is new: the first instance to be shipped it received it. The three
    # share the host's cache here, so one that asks after another stored it finds it cached.
    assert False in {inst["bundle_cached"] for inst in instances.values()}
    TIMINGS["3 instances: RunInstances until all running"] = started["timings"][0]["launch"]
    TIMINGS["3 instances: running until all enrolled"] = started["timings"][0]["boot"]
    TIMINGS["3 instances: program start until RUNNING"] = started["seconds"]

    results = driver.wait("results")
    hosts = results["hosts"]
    assert len(set(hosts)) == 3
    assert all(h.startswith("ip-10-200-1-") for h in hosts)
    assert results["area"] == 9
    # The helper module is imported from the bundle on the instance, not the repository.
    assert results["square_file"].startswith(CACHE.as_posix())
    assert results["other"] == [hosts[2], 15]  # machine 2 called the actor on machine 0
    assert results["after"] == 15
    assert results["color"] == "blue"
    imports = results["imports"]
    assert imports["shapes"] == "imported"
    assert imports["trio"] == "imported"
    # On the host (Debian's python3-apt) but not in the driver's environment:
    assert imports["apt"] == "ModuleNotFoundError: No module named 'apt'"
    # In the driver's environment, but the program never imported it, so it is not pinned:
    assert imports["numpy"] == "ModuleNotFoundError: No module named 'numpy'"

    second = driver.wait("second")
    [new] = set(second["instances"]) - set(instances)
    assert second["instances"][new]["bundle_cached"] is True
    assert "is cached" in second["instances"][new]["boot_log"]  # the venv too

    event = driver.wait("probe")
    victim, survivor = event["victim"], event["survivor"]
    foreign = trustme.CA().issue_cert("driver.bigactor.example")
    stranger = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    stranger.check_hostname, stranger.verify_mode = False, ssl.CERT_NONE
    impostor = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    impostor.check_hostname, impostor.verify_mode = False, ssl.CERT_NONE
    foreign.configure_cert(impostor)
    upgrade = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
    # A pickle that would leave a file behind if anything ever unpickled it.
    bomb = b"cos\nsystem\n(S'touch /run/decoded'\ntR."
    outcomes = {
        "no certificate": probe(survivor, context=stranger, payload=upgrade + bomb),
        "foreign CA": probe(survivor, context=impostor, payload=upgrade + bomb),
        "plaintext": probe(survivor, context=None, payload=upgrade + bomb),
    }
    for what, outcome in outcomes.items():
        assert "ANSWERED" not in outcome, (what, outcome)
        assert outcome.startswith(("handshake refused", "refused after the handshake", "closed with b''")), (
            what,
            outcome,
        )
    survivor_id = instances[survivor]["instance_id"]
    assert fake_cloud.exec_in(survivor_id, ["test", "-e", "/run/decoded"]).returncode == 1

    victim_id = second["instances"][victim]["instance_id"]
    t0 = time.monotonic()
    fake_cloud.terminate(victim_id)
    driver.say("go")
    lost = driver.wait("lost", timeout=60)
    TIMINGS["terminated instance -> pending call raises MachineLost"] = time.monotonic() - t0
    assert victim in lost["error"]
    assert f"instance {victim_id} terminated through the EC2 API" in lost["cause"]
    assert driver.wait("survivor")["value"] == 16  # the peers' refusals harmed nobody
    closed = driver.wait("closed")
    TIMINGS["leaving open_cluster (4 instances terminated)"] = closed["seconds"]
    assert driver.finish() == 0, driver.stderr()[-4000:]
    everyone = [i["instance_id"] for i in second["instances"].values()]
    assert set(cluster_ids(fake_cloud, everyone).values()) == {"terminated"}
    wait_terminated(fake_cloud, everyone, timeout=15)
    assert "Traceback" not in driver.stderr(), driver.stderr()[-4000:]


def test_spot_instances_end_within_the_keepalive_timeout_of_a_killed_driver(
    fake_cloud: FakeCloud, run: Any
) -> None:
    """Spot instances say so in their details; after the driver is SIGKILLed, each worker's
    watchdog exits and its instance terminates within the keepalive timeout."""
    driver = run("orphans", BIGACTOR_EC2_SPOT="1")
    started = driver.wait("started", timeout=240)
    assert started["value"] == 2
    ids = [inst["instance_id"] for inst in started["instances"].values()]
    for inst in started["instances"].values():
        assert inst["details"]["market"] == "spot"
        # Without max_price, the spot cap is the on-demand price, from the type table.
        assert inst["price_per_hour"] == load_types().lookup("m5.large").price(fake_cloud.region)
        assert inst["details"]["price"].endswith("/h (at most: the spot cap)")
    t0 = time.monotonic()
    driver.process.send_signal(signal.SIGKILL)
    driver.finish()
    seconds = wait_terminated(fake_cloud, ids, timeout=KEEPALIVE["timeout"] + 20)
    TIMINGS["driver SIGKILL -> every instance terminated (keepalive timeout 20 s)"] = time.monotonic() - t0
    assert time.monotonic() - t0 <= KEEPALIVE["timeout"] + 3, seconds
    for iid in ids:
        console = fake_cloud.console_output(iid)
        assert "watchdog expired" in console or "exited with status" in console, console[-2000:]


def test_a_boot_that_fails_names_its_stage_and_terminates_its_instance(
    fake_cloud: FakeCloud, run: Any
) -> None:
    """An instance whose user data fails (its setup commands fail) fails its machine with
    MachineStartError naming the stage and time and quoting the console, and is terminated."""
    driver = run("bootfail", BIGACTOR_EC2_SETUP_COMMANDS="sleep 5; echo no luck; exit 3")
    failed = driver.wait("failed", timeout=120)
    assert failed["state"] == "STOPPED"
    assert failed["error"].startswith("MachineStartError(")
    message = failed["message"]
    [inst] = failed["instances"].values()
    iid = inst["instance_id"]
    assert f"instance {iid}: boot failed" in message
    assert "after the instance ran, at stage enrollment" in message
    # moto's GetConsoleOutput is canned: what the system can show is that it asked.
    assert "console output (GetConsoleOutput" in message
    assert failed["seconds"] < 60
    console = fake_cloud.console_output(iid)
    assert "stage setup failed" in console
    assert driver.finish() == 0, driver.stderr()[-4000:]
    assert cluster_ids(fake_cloud, [iid])[iid] == "terminated"


@pytest.mark.skipif(not os.environ.get("EC2TEST_MEASURE"), reason="set EC2TEST_MEASURE=N to measure N")
def test_measure_boot(fake_cloud: FakeCloud, run: Any) -> None:
    """Not a check: how long N instances take from RunInstances to answering, and where."""
    n = int(os.environ["EC2TEST_MEASURE"])
    extra = {}
    if os.environ.get("EC2TEST_MEASURE_COLD"):
        cold = CACHE.with_name(f"{CACHE.name}-cold-{secrets.token_hex(4)}")
        extra["BIGACTOR_EC2_CACHE"] = str(cold)
    driver = run("measure", str(n), **extra)
    measured = driver.wait("measured", timeout=280)
    timing = measured["timings"][0]
    stages: dict[str, list[float]] = {}
    for inst in measured["instances"].values():
        for stage, seconds in stage_seconds(inst["boot_log"]).items():
            stages.setdefault(stage, []).append(seconds)
    print(
        json.dumps(
            {
                "n": n,
                "timing": timing,
                "program": {k: measured[k] for k in ("start", "running", "answered")},
                "stages": {k: [min(v), sum(v) / len(v), max(v)] for k, v in stages.items()},
            },
            indent=1,
        )
    )
    TIMINGS[f"{n} instances: RunInstances until running"] = timing["launch"]
    TIMINGS[f"{n} instances: running until all enrolled"] = timing["boot"]
    TIMINGS[f"{n} instances: program start until all answered"] = measured["answered"]
    driver.finish()
    if extra:
        shutil.rmtree(extra["BIGACTOR_EC2_CACHE"], ignore_errors=True)


async def test_bad_options_fail_before_anything_is_launched(fake_cloud: FakeCloud) -> None:
    """An unknown instance type fails at construction, an AMI EC2 does not know at setup:
    either way, with an error naming it, and no instance was launched."""
    import bigactor
    from bigactor.systems.ec2 import EC2Error, EC2System

    before = set(fake_cloud.instances())
    with pytest.raises(ValueError, match=r"unknown EC2 instance type 'm5\.hugee'"):
        EC2System(instance_type="m5.hugee", region=fake_cloud.region)
    assert bigactor.systems.EC2 is EC2System
    with pytest.raises(EC2Error, match="ami-00000000"):
        async with bigactor.open_cluster(
            "ec2", region=fake_cloud.region, subnet_id=fake_cloud.subnet_id, ami="ami-00000000"
        ):
            pytest.fail("the cluster opened")
    reply = fake_cloud.ec2.describe_instances(Filters=[{"Name": "tag:bigactor", "Values": ["true"]}])
    assert [
        i for r in reply["Reservations"] for i in r["Instances"] if i["State"]["Name"] != "terminated"
    ] == []
    assert set(fake_cloud.instances()) == before
