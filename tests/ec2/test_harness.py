"""Tests of the fake cloud itself, with small shell user data and no bigactor.

They run in real time, on real processes and namespaces, and assert bounds.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import pytest

from .conftest import TIMINGS
from .harness import REPOSITORY, FakeCloud, HubError, _links, check_hub, processes_in_netns

pytestmark = pytest.mark.slow

Launch = Callable[..., list[str]]

# Serves its hostname at /id on its own eth0 address, port 8000, and prints each UDP datagram that
# reaches port 9000. The comment's bytes are not ASCII, so that the digest checks them exactly.
WEB_SERVER = """\
#!/bin/sh
# Ünïcödé: the user data must arrive byte for byte.
echo "start $(date +%s.%N)"
echo "sha256 $(sha256sum "$0" | cut -d' ' -f1)"
ip=$(ip -4 -o addr show dev eth0 | sed -n 's/.* inet \\([0-9.]*\\)\\/.*/\\1/p')
mkdir -p /tmp/www && hostname > /tmp/www/id && cd /tmp/www
python3 -u -c '
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 9000))
while True:
    print("udp", s.recv(100).decode(), flush=True)
' &
exec python3 -u -m http.server --bind "$ip" 8000
"""


def moto_ips(cloud: FakeCloud, ids: list[str]) -> dict[str, str]:
    """Return {instance ID: PrivateIpAddress} as moto reports them."""
    reply = cloud.ec2.describe_instances(InstanceIds=ids)
    return {i["InstanceId"]: i["PrivateIpAddress"] for r in reply["Reservations"] for i in r["Instances"]}


def connects(ip: str, port: int = 8000, timeout: float = 0.5) -> bool:
    """Whether a TCP connection from the hub to ip:port succeeds within the timeout."""
    try:
        with socket.create_connection((ip, port), timeout=timeout):
            return True
    except OSError:
        return False


def eventually(check: Callable[[], bool], timeout: float) -> bool:
    """Whether check() becomes true within the timeout, polling."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def start_times(cloud: FakeCloud, ids: list[str], timeout: float) -> list[float]:
    """Wait for each instance's ``start <time>`` console line and return the times."""
    starts = []
    for iid in ids:
        console = cloud.wait_console(iid, "start ", timeout)
        match = re.search(r"^start ([0-9.]+)$", console, re.M)
        assert match, console
        starts.append(float(match.group(1)))
    return starts


def console_values(console: str) -> dict[str, str]:
    """The ``key=value`` lines of a console."""
    return dict(line.split("=", 1) for line in console.splitlines() if re.match(r"^\w+=", line))


def test_instances_boot_at_their_moto_ip_and_run_their_exact_user_data(
    fake_cloud: FakeCloud, launch: Launch
) -> None:
    """Three instances run the exact user-data bytes and serve HTTP at the IPs moto reports."""
    user_data = WEB_SERVER.encode()
    t0 = time.time()
    ids = launch(user_data, 3)
    starts = start_times(fake_cloud, ids, timeout=30)
    TIMINGS["RunInstances to user data start, 3 instances, slowest"] = max(starts) - t0
    ips = moto_ips(fake_cloud, ids)
    assert len(set(ips.values())) == 3
    for iid, ip in ips.items():
        assert ipaddress.ip_address(ip) in fake_cloud.network
        console = fake_cloud.console_output(iid)
        assert f"sha256 {hashlib.sha256(user_data).hexdigest()}" in console
        assert fake_cloud.info(iid).private_ip == ip
        assert eventually(lambda ip=ip: connects(ip), 15), fake_cloud.console_output(iid)
        with urllib.request.urlopen(f"http://{ip}:8000/id", timeout=5) as reply:
            assert reply.read().decode().strip() == "ip-" + ip.replace(".", "-")


def test_instance_sees_a_bare_python_and_nothing_of_the_driver(fake_cloud: FakeCloud, launch: Launch) -> None:
    """The instance has the driver's Python version, no packages, no repository, venv or home."""
    marker = f"fake-cloud-{secrets.token_hex(4)}"
    # The base Python stays visible, read-only; under /root that is the only entry of /root.
    prefix = Path(sys.base_prefix).resolve()
    python_dir = prefix.relative_to("/root").parts[0] if prefix.is_relative_to("/root") else ""
    base_site = Path(sys.base_prefix, "lib", f"python{sys.version_info[0]}.{sys.version_info[1]}")
    user_data = f"""#!/bin/sh
echo trio=$(python3 -c 'import trio' 2>/dev/null && echo importable || echo missing)
echo pip=$(python3 -m pip --version >/dev/null 2>&1 && echo importable || echo missing)
echo version=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
echo site=$(python3 -c 'import os, site
print(sum(len(os.listdir(p)) for p in site.getsitepackages() if os.path.isdir(p)))')
echo repo=$(ls -A {REPOSITORY} | wc -l)
echo venv=$(test -e {sys.prefix}/bin/python && echo present || echo absent)
echo root=$(ls -A /root | grep -v -x -F "{python_dir}" | wc -l)
echo home=$(ls -A /home | wc -l)
echo install=$(touch {base_site}/site-packages/x 2>/dev/null && echo writable || echo refused)
echo default_route=$(ip route show default | wc -l)
echo outside=$(ip route get 192.0.2.1 >/dev/null 2>&1 && echo routed || echo unreachable)
echo mine > /tmp/{marker} && echo mine > /opt/{marker}
echo done=yes
exec sleep 600
"""
    (iid,) = launch(user_data)
    values = console_values(fake_cloud.wait_console(iid, "done=yes", 30))
    assert values == {
        "trio": "missing",
        "pip": "missing",
        "version": f"{sys.version_info[0]}.{sys.version_info[1]}",
        "site": "0",
        "repo": "0",
        "venv": "absent",
        "root": "0",
        "home": "0",
        "install": "refused",
        "default_route": "0",
        "outside": "unreachable",
        "done": "yes",
    }
    assert not Path("/tmp", marker).exists()
    assert not Path("/opt", marker).exists()
    # And the driver's view is unchanged: its Python still imports trio.
    assert (REPOSITORY / "pyproject.toml").is_file()


@pytest.mark.timeout(240)
def test_instance_pip_installs_the_worker_packages_from_the_package_server(
    fake_cloud: FakeCloud, launch: Launch, worker_pins: list[str]
) -> None:
    """A fresh venv in an instance installs every pinned worker package from the hub's index."""
    pins = " ".join(worker_pins)
    user_data = f"""#!/bin/sh
set -e
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_TRUSTED_HOST={fake_cloud.gateway}
t0=$(date +%s.%N)
python3 -m venv /opt/worker
t1=$(date +%s.%N)
/opt/worker/bin/pip install --quiet --index-url {fake_cloud.index_url} {pins}
t2=$(date +%s.%N)
echo "venv_seconds=$(echo "$t1 - $t0" | python3 -c 'print(round(eval(input()), 2))')"
echo "pip_seconds=$(echo "$t2 - $t1" | python3 -c 'print(round(eval(input()), 2))')"
/opt/worker/bin/python -c '
import importlib.metadata, sys
import trio, cryptography.x509, cloudpickle, psutil, h11, attrs
for pin in sys.argv[1:]:
    name, version = pin.split("==")
    print("installed", name, importlib.metadata.version(name) == version)
' {pins}
/opt/worker/bin/pip install --quiet --no-index --find-links {fake_cloud.find_links_url} \\
    --force-reinstall --no-deps sniffio
echo find_links=ok
exec sleep 600
"""
    (iid,) = launch(user_data)
    console = fake_cloud.wait_console(iid, "find_links=ok", 200)
    for pin in worker_pins:
        assert f"installed {pin.split('==')[0]} True" in console, console
    values = console_values(console)
    TIMINGS["python3 -m venv (ensurepip) in an instance"] = float(values["venv_seconds"])
    TIMINGS["pip install of the worker packages in an instance"] = float(values["pip_seconds"])


def test_imds_requires_a_token_and_tells_each_instance_its_identity(
    fake_cloud: FakeCloud, launch: Launch
) -> None:
    """IMDSv2 refuses GETs without a token and answers each instance about itself."""
    user_data = """#!/usr/bin/env python3
import hashlib, json, urllib.error, urllib.request
BASE = "http://169.254.169.254/latest/"

def call(path, method="GET", headers={}):
    try:
        with urllib.request.urlopen(urllib.request.Request(BASE + path, method=method, headers=headers)) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""

out = {"no_token": call("meta-data/instance-id")[0]}
out["no_ttl"] = call("api/token", "PUT")[0]
token = call("api/token", "PUT", {"X-aws-ec2-metadata-token-ttl-seconds": "60"})[1].decode()
auth = {"X-aws-ec2-metadata-token": token}
out["bad_token"] = call("meta-data/instance-id", headers={"X-aws-ec2-metadata-token": "x" + token})[0]
for key in ["instance-id", "local-ipv4", "instance-type", "placement/availability-zone",
            "placement/region", "instance-life-cycle", "local-hostname"]:
    out[key] = call("meta-data/" + key, headers=auth)[1].decode()
out["spot"] = call("meta-data/spot/instance-action", headers=auth)[0]
out["user-data"] = hashlib.sha256(call("user-data", headers=auth)[1]).hexdigest()
out["document"] = json.loads(call("dynamic/instance-identity/document", headers=auth)[1])
print("imds", json.dumps(out), flush=True)
import time; time.sleep(600)
"""
    ids = launch(user_data, 2, instance_type="m5.large")
    reply = fake_cloud.ec2.describe_instances(InstanceIds=ids)
    described = {i["InstanceId"]: i for r in reply["Reservations"] for i in r["Instances"]}
    for iid in ids:
        console = fake_cloud.wait_console(iid, "imds ", 30)
        got = json.loads(console.split("imds ", 1)[1].splitlines()[0])
        ip = described[iid]["PrivateIpAddress"]
        assert got["no_token"] == 401
        assert got["no_ttl"] == 400
        assert got["bad_token"] == 401
        assert got["instance-id"] == iid
        assert got["local-ipv4"] == ip
        assert got["instance-type"] == "m5.large"
        assert got["placement/availability-zone"] == described[iid]["Placement"]["AvailabilityZone"]
        assert got["placement/region"] == fake_cloud.region
        assert got["instance-life-cycle"] == "on-demand"
        assert got["local-hostname"].startswith("ip-" + ip.replace(".", "-") + ".")
        assert got["spot"] == 404
        assert got["user-data"] == hashlib.sha256(user_data.encode()).hexdigest()
        assert got["document"]["instanceId"] == iid
        assert got["document"]["privateIp"] == ip
        assert got["document"]["region"] == fake_cloud.region


@pytest.mark.parametrize(("behavior", "final"), [("terminate", "terminated"), ("stop", "stopped")])
def test_instance_whose_user_data_exits_shuts_down(
    fake_cloud: FakeCloud, launch: Launch, behavior: str, final: str
) -> None:
    """When the user data exits, moto's instance follows its InstanceInitiatedShutdownBehavior."""
    (iid,) = launch("#!/bin/sh\necho bye\nexit 3\n", shutdown_behavior=behavior)
    assert fake_cloud.wait_exited(iid, 30) == 3
    fake_cloud.wait_state(iid, final, 10)
    assert fake_cloud.console_output(iid) == "bye\n"


def test_terminate_instances_kills_the_namespace(fake_cloud: FakeCloud, launch: Launch) -> None:
    """TerminateInstances through boto3's own configuration kills every process and the veth."""
    (iid,) = launch("#!/bin/sh\nsleep 600 &\nexec sleep 600\n")
    (info,) = fake_cloud.wait_booted([iid])
    assert info.netns is not None
    assert eventually(lambda: len(processes_in_netns([info.netns])) >= 3, 10)
    # As the system under test would: a client configured by the environment alone.
    boto3.client("ec2").terminate_instances(InstanceIds=[iid])
    assert fake_cloud.wait_exited(iid, 10) == -signal.SIGKILL
    assert fake_cloud.state(iid) == "terminated"
    assert processes_in_netns([info.netns]) == {}
    assert eventually(lambda: info.veth not in _links(), 10)


def test_spot_interruption_posts_a_notice_then_terminates(fake_cloud: FakeCloud, launch: Launch) -> None:
    """interrupt_spot shows the notice in the instance's IMDS, then terminates after the notice."""
    user_data = """#!/usr/bin/env python3
import time, urllib.error, urllib.request
BASE = "http://169.254.169.254/latest/"
token = urllib.request.urlopen(urllib.request.Request(
    BASE + "api/token", method="PUT", headers={"X-aws-ec2-metadata-token-ttl-seconds": "600"})).read()
life = urllib.request.urlopen(urllib.request.Request(
    BASE + "meta-data/instance-life-cycle", headers={"X-aws-ec2-metadata-token": token})).read()
print("lifecycle", life.decode(), flush=True)
while True:
    try:
        req = urllib.request.Request(
            BASE + "meta-data/spot/instance-action", headers={"X-aws-ec2-metadata-token": token})
        print("notice", urllib.request.urlopen(req).read().decode(), flush=True)
    except urllib.error.HTTPError as e:
        assert e.code == 404
    time.sleep(0.2)
"""
    (iid,) = launch(user_data, spot=True)
    assert "lifecycle spot" in fake_cloud.wait_console(iid, "lifecycle ", 30)
    t0 = time.monotonic()
    fake_cloud.interrupt_spot(iid, notice_s=2.0)
    console = fake_cloud.wait_console(iid, "notice ", 5)
    notice = json.loads(console.split("notice ", 1)[1].splitlines()[0])
    assert notice["action"] == "terminate"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", notice["time"])
    assert fake_cloud.state(iid) == "running"
    fake_cloud.wait_exited(iid, 10)
    assert 2.0 <= time.monotonic() - t0 < 6.0
    assert fake_cloud.state(iid) == "terminated"


@pytest.fixture(scope="module")
def web(fake_cloud: FakeCloud) -> Iterator[tuple[str, str]]:
    """One instance running WEB_SERVER, for the partition tests: (instance ID, IP)."""
    (iid,) = fake_cloud.launch(WEB_SERVER)
    (info,) = fake_cloud.wait_booted([iid])
    fake_cloud.wait_console(iid, "Serving HTTP", 30)
    yield iid, info.private_ip
    fake_cloud.terminate(iid)
    fake_cloud.wait_exited(iid, 10)


def reaches_instance(cloud: FakeCloud, iid: str, ip: str) -> bool:
    """Whether a UDP datagram from the hub reaches the instance (it prints what it gets)."""
    token = secrets.token_hex(4)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(token.encode(), (ip, 9000))
    return eventually(lambda: f"udp {token}" in cloud.console_output(iid), 1.0)


def reaches_hub(cloud: FakeCloud, iid: str) -> bool:
    """Whether a UDP datagram from the instance reaches the hub."""
    token = secrets.token_hex(4)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((cloud.gateway, 0))
        s.settimeout(1.0)
        port = s.getsockname()[1]
        send = f"import socket; socket.socket(2, 2).sendto(b'{token}', ('{cloud.gateway}', {port}))"
        assert cloud.exec_in(iid, ["python3", "-c", send]).returncode == 0
        try:
            return s.recv(100).decode() == token
        except TimeoutError:
            return False


@pytest.mark.parametrize(
    ("how", "inbound", "outbound"),
    [
        ("down", False, False),
        ("loss", False, False),
        ("loss-inbound", False, True),
        ("loss-outbound", True, False),
    ],
)
def test_cut_drops_what_it_says_and_heal_restores(
    fake_cloud: FakeCloud, web: tuple[str, str], how: str, inbound: bool, outbound: bool
) -> None:
    """A cut drops traffic in the directions it names, and heal brings the instance back."""
    iid, ip = web
    assert connects(ip)
    fake_cloud.cut(iid, how)  # type: ignore[arg-type]
    try:
        assert not connects(ip)
        assert reaches_instance(fake_cloud, iid, ip) is inbound
        assert reaches_hub(fake_cloud, iid) is outbound
    finally:
        fake_cloud.heal(iid)
    assert eventually(lambda: connects(ip), 5)
    assert reaches_instance(fake_cloud, iid, ip)
    assert reaches_hub(fake_cloud, iid)


def test_flapping_link_comes_and_goes_until_healed(fake_cloud: FakeCloud, web: tuple[str, str]) -> None:
    """A flapping link lets connections through some of the time, and heal steadies it."""
    iid, ip = web
    fake_cloud.cut(iid, "flap", period=0.6)
    seen = set()
    try:
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline and len(seen) < 2:
            seen.add(connects(ip, timeout=0.2))
            time.sleep(0.1)
    finally:
        fake_cloud.heal(iid)
    assert seen == {True, False}
    assert eventually(lambda: connects(ip), 5)
    assert all(connects(ip) for _ in range(5))


@pytest.mark.timeout(180)
def test_sixteen_instances_boot(fake_cloud: FakeCloud, launch: Launch) -> None:
    """Sixteen instances of one RunInstances call all start their user data."""
    t0 = time.time()
    ids = launch('#!/bin/sh\necho "start $(date +%s.%N)"\nexec sleep 600\n', 16)
    starts = [s - t0 for s in start_times(fake_cloud, ids, timeout=60)]
    TIMINGS["RunInstances to user data start, 16 instances, fastest"] = min(starts)
    TIMINGS["RunInstances to user data start, 16 instances, median"] = statistics.median(starts)
    TIMINGS["RunInstances to user data start, 16 instances, slowest"] = max(starts)
    assert len({i.private_ip for i in fake_cloud.instances().values() if i.instance_id in ids}) == 16


def test_check_hub_refuses_a_namespace_with_a_default_route() -> None:
    """The guard refuses a namespace with a route out; it reads routes and sends nothing."""
    check_hub(own_links=[link for link in _links() if link != "lo"])
    # A bridge without ports discards whatever is sent to it; nothing is sent anyway.
    setup = (
        "ip link set lo up && ip link add d0 type bridge && ip link set d0 up && "
        'ip addr add 192.0.2.2/24 dev d0 && ip route add default via 192.0.2.1 && exec "$@"'
    )
    code = "import sys; from ec2.harness import check_hub; check_hub()"
    done = subprocess.run(
        ["unshare", "--net", "--", "sh", "-c", setup, "sh", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
        timeout=30,
    )
    assert done.returncode == 1
    assert f"{HubError.__name__}: this network namespace has a default route" in done.stderr


# A fake cloud in a process of its own, in a hub network namespace of its own: it boots three
# instances, writes what it made to a file, then closes the cloud or waits to be killed.
CHILD = """
import json, os, sys, time
from pathlib import Path
from ec2.harness import FakeCloud, _links
state_file, mode = Path(sys.argv[1]), sys.argv[2]
cloud = FakeCloud(workdir=state_file.parent / "cloud")
cloud.start()
infos = cloud.wait_booted(cloud.launch("#!/bin/sh\\nsleep 600 &\\nexec sleep 600\\n", 3))
state = {
    "hub": os.stat("/proc/self/ns/net").st_ino,
    "pids": [p for i in infos for p in (i.pid, i.launcher_pid)],
    "netns": [i.netns for i in infos],
}
Path(f"{state_file}.tmp").write_text(json.dumps(state))
os.rename(f"{state_file}.tmp", state_file)
if mode == "close":
    cloud.close()
    assert _links() == ["lo"], _links()
    print("closed clean")
else:
    time.sleep(600)
"""


def run_child(tmp_path: Path, mode: str) -> tuple[subprocess.Popen[str], dict[str, list[int] | int]]:
    """Start CHILD in its own hub and return it with the state it wrote once its instances ran."""
    state_file = tmp_path / "state.json"
    child = subprocess.Popen(
        [
            *("unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"),
            *(sys.executable, "-c", CHILD, str(state_file), mode),
        ],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if not eventually(lambda: state_file.exists() or child.poll() is not None, 60) or not state_file.exists():
        child.kill()
        pytest.fail(f"the child cloud did not boot: {child.communicate()[0]}")
    return child, json.loads(state_file.read_text())


def assert_nothing_left(state: dict[str, list[int] | int], timeout: float) -> None:
    """No process of the child's instances, and no process in any of its namespaces, remains."""
    pids = state["pids"]
    inodes = [state["hub"], *state["netns"]]  # type: ignore[misc]
    assert isinstance(pids, list)

    def clean() -> bool:
        alive = [p for p in pids if Path(f"/proc/{p}").exists() and _state(p) != "Z"]
        return not alive and not processes_in_netns(inodes)

    assert eventually(clean, timeout), (pids, processes_in_netns(inodes))


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_close_leaves_no_process_namespace_or_link(tmp_path: Path) -> None:
    """After close() no instance process, namespace, veth or bridge remains."""
    child, state = run_child(tmp_path, "close")
    out, _ = child.communicate(timeout=60)
    assert child.returncode == 0, out
    assert "closed clean" in out
    assert_nothing_left(state, timeout=1)


def test_sigkill_of_the_driver_leaves_nothing_running(tmp_path: Path) -> None:
    """kill -9 of the process that runs the cloud takes every instance and namespace with it."""
    child, state = run_child(tmp_path, "kill")
    assert processes_in_netns(state["netns"])  # type: ignore[arg-type]
    t0 = time.monotonic()
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=10)
    assert_nothing_left(state, timeout=5)
    TIMINGS["SIGKILL of the driver to nothing left"] = time.monotonic() - t0
