"""A fake EC2 cloud on this machine: moto serves the API, Linux namespaces are the instances.

`FakeCloud` lets the EC2 system be tested for real, with no AWS account and no packet leaving the
machine:

* moto's EC2 (and IAM) server runs in this process on 127.0.0.1. `FakeCloud.env` points boto3 at
  it (``AWS_ENDPOINT_URL_EC2``, fake credentials, a region), so the code under test is configured,
  not patched. The cloud creates a VPC, a subnet (10.200.1.0/24 by default) and a security group:
  launched into that subnet, instances get private IPs .4, .5, ... in order and no public IP.
* A watcher thread polls DescribeInstances. Each instance moto reports ``running`` is booted as
  fresh network, mount, UTS and PID namespaces with a veth on a bridge (gateway .1). Its eth0 has
  the very PrivateIpAddress moto reported and routes only to the subnet and to the metadata
  service; there is no default route. It runs the instance's exact user data, as root, as a shell
  script; its stdout and stderr are the console (`FakeCloud.console_output`; moto's
  GetConsoleOutput is canned).
* The user data is the instance's life: when it exits, the instance shuts itself down, and the
  cloud applies the instance's InstanceInitiatedShutdownBehavior (terminate, or stop, AWS's
  default). An instance moto reports shutting-down, terminated, stopping or stopped is killed;
  starting a stopped instance again is not modelled. Only shell-script user data (``#!``) runs,
  gzip-compressed or not; an instance launched with none idles.
* Each instance sees a machine without the driver's code: private tmpfs over /tmp, /var/tmp,
  /root, /home, /opt, /run, /dev/shm, the repository and the driver's virtual environment, and
  every site-packages of the base Python hidden. What is left is a bare Python of the driver's
  version as ``python3`` on PATH, with venv and ensurepip. Packages come from the cloud's package
  server (`FakeCloud.index_url`, `FakeCloud.find_links_url`), which serves the wheelhouse that
  ``tests/ec2/run`` builds.
* An instance metadata service on 169.254.169.254:80 speaks IMDSv2 (token required) and tells
  each caller, known by its source address, its own identity and any spot interruption notice.
* Faults: `FakeCloud.interrupt_spot`, `FakeCloud.terminate`, `FakeCloud.cut` (link down, total
  loss, loss in one direction, flapping) and `FakeCloud.heal`.

All of it must run inside a "hub" network namespace with no route out (``tests/ec2/run`` makes one
with ``unshare --net``); `check_hub` refuses anything else, judging by the routing table, never by
sending a packet. A bug that dials a real address then fails with ENETUNREACH.

Cleanup: `FakeCloud.close` kills every instance and waits until no process, namespace or veth of
the cloud is left. If the test process is killed with SIGKILL, the kernel cleans up: instances are
spawned by the long-lived watcher thread with a parent-death signal (SIGKILL), ``unshare
--kill-child`` takes the instance's PID namespace down with it, and the hub network namespace, with
the bridge, dies with its last process. Only the work directory (consoles) stays.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import html
import http.server
import ipaddress
import itertools
import json
import logging
import os
import platform
import re
import secrets
import shlex
import shutil
import signal
import site
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import attrs

log = logging.getLogger("bigactor.tests.ec2")

IMDS_ADDRESS = "169.254.169.254"
# A bridge without a fixed MAC takes the lowest MAC among its ports; when that port goes away
# with its instance, the gateway's MAC changes under the other instances, their ARP entries go
# stale and their packets are dropped for about 30 s. A pinned address never changes.
BRIDGE_MAC = "02:bb:00:00:00:01"
# moto's default account.
ACCOUNT_ID = "123456789012"
# What cloud-init gives a user-data script.
INSTANCE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Where, inside an instance, the harness keeps the user data (on the instance's own /run tmpfs).
INSTANCE_DIR = "/run/fake-cloud"
REPOSITORY = Path(__file__).resolve().parents[2]

Cut = Literal["down", "loss", "loss-inbound", "loss-outbound", "flap"]
CUTS: tuple[Cut, ...] = ("down", "loss", "loss-inbound", "loss-outbound", "flap")


class HubError(RuntimeError):
    """The process is not in an isolated hub network namespace, so the cloud refuses to start."""


class FakeCloudError(RuntimeError):
    """The fake cloud failed: an instance did not boot, a wait ran out, or cleanup left residue."""


def check_hub(own_links: Iterable[str] = ()) -> None:
    """Raise HubError unless this process is in a network namespace with no way out.

    The checks read the routing table and the list of links; nothing is sent. The namespace must
    have no default route (IPv4 or IPv6, any table) and no link but lo and ``own_links``. When
    ``tests/ec2/run`` passes the outer namespace's inode in EC2TEST_OUTER_NETNS, this one
    must differ from it. (The init process's namespace cannot be read in every sandbox, so it is
    not the reference.)
    """
    outer = os.environ.get("EC2TEST_OUTER_NETNS")
    if outer and os.stat("/proc/self/ns/net").st_ino == int(outer):
        raise HubError("still in the outer network namespace: run the EC2 tests through tests/ec2/run")
    for family in ("-4", "-6"):
        routes = _ip(family, "route", "show", "table", "all", "default").strip()
        if routes:
            raise HubError(
                f"this network namespace has a default route ({routes.splitlines()[0]!r}); "
                "the fake cloud runs only in a hub namespace with no uplink: use tests/ec2/run"
            )
    foreign = sorted(set(_links()) - {"lo", *own_links})
    if foreign:
        raise HubError(
            f"this network namespace has links {foreign}; the fake cloud runs only in a hub "
            "namespace of its own (unshare --net): use tests/ec2/run"
        )


def _ip(*argv: str, input: str | None = None) -> str:
    return _cmd("ip", *argv, input=input)


def _cmd(*argv: str, input: str | None = None, check: bool = True) -> str:
    done = subprocess.run(argv, input=input, capture_output=True, text=True)
    if check and done.returncode:
        raise FakeCloudError(f"{shlex.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def _links() -> list[str]:
    # /proc/self/net is this process's network namespace; /sys/class/net is the namespace of
    # whoever mounted /sys, which in a hub made by `unshare --net` alone is the outer one.
    lines = Path("/proc/self/net/dev").read_text().splitlines()[2:]
    return [line.split(":", 1)[0].strip() for line in lines]


def _netns(pid: int) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def _alive(pid: int) -> bool:
    """Whether the process exists and is not a zombie (a zombie holds no namespace)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def processes_in_netns(inodes: Iterable[int]) -> dict[int, int]:
    """Return {pid: netns inode} of the live processes in any of the given network namespaces."""
    wanted = set(inodes)
    found = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            inode = _netns(int(entry.name))
            if inode in wanted and _alive(int(entry.name)):
                found[int(entry.name)] = inode
    return found


def _mac(ip: str) -> str:
    """Return the MAC address of the instance with this IPv4 address: 02:ec and the address."""
    return "02:ec:" + ":".join(f"{int(b):02x}" for b in ip.split("."))


def _now_iso(offset: float = 0.0) -> str:
    return datetime.fromtimestamp(time.time() + offset, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@attrs.frozen
class InstanceInfo:
    """What the harness knows of one booted instance (a snapshot)."""

    instance_id: str
    private_ip: str
    hostname: str
    #: The hub side of the instance's veth pair.
    veth: str
    #: The instance's PID 1 (a shell), as seen from the hub; ``None`` if the boot failed early.
    pid: int | None
    #: The ``unshare`` process that holds the instance's namespaces (PID 1's parent).
    launcher_pid: int | None
    #: The inode of the instance's network namespace.
    netns: int | None
    #: ``time.time()`` when the user data was handed to the instance.
    booted_at: float | None
    #: The user data's exit status once the instance's process has ended (-9: killed).
    exit_status: int | None


@attrs.define(kw_only=True)
class _Instance:
    instance_id: str
    private_ip: str
    veth: str
    console: Path
    user_data: bytes
    shutdown_behavior: str
    metadata: dict[str, str]
    launch_time: str
    process: subprocess.Popen[bytes] | None = None
    pid: int | None = None
    netns: int | None = None
    booted_at: float | None = None
    exit_status: int | None = None
    shutdown_requested: bool = False
    reaped: bool = False
    spot_action: dict[str, str] | None = None
    terminate_at: float | None = None
    cut: Cut | None = None
    flap_period: float = 1.0
    flap_next: float = 0.0
    flap_down: bool = False

    @property
    def hostname(self) -> str:
        return "ip-" + self.private_ip.replace(".", "-")

    def info(self) -> InstanceInfo:
        return InstanceInfo(
            instance_id=self.instance_id,
            private_ip=self.private_ip,
            hostname=self.hostname,
            veth=self.veth,
            pid=self.pid,
            launcher_pid=self.process.pid if self.process else None,
            netns=self.netns,
            booted_at=self.booted_at,
            exit_status=self.exit_status,
        )


def _python_layout() -> tuple[Path, Path, list[Path]]:
    """Return the base Python's prefix, its executable and every site directory to hide."""
    prefix = Path(sys.base_prefix).resolve()
    executable = Path(getattr(sys, "_base_executable", sys.executable)).resolve()
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    base = {"base": sys.base_prefix, "platbase": sys.base_exec_prefix}
    sites = {Path(sysconfig.get_paths(vars=base)[key]) for key in ("purelib", "platlib")}
    sites.add(Path(site.getusersitepackages()))
    # A distribution's Python of the same version reads these (Debian's dist-packages).
    for root in ("/usr/lib", "/usr/local/lib"):
        sites.update({Path(root, version, "site-packages"), Path(root, version, "dist-packages")})
    sites.add(Path("/usr/lib/python3/dist-packages"))
    return prefix, executable, sorted(p.resolve() for p in sites if p.is_dir())


def _outermost(paths: Iterable[Path]) -> list[Path]:
    """Drop the paths that lie inside another: a tmpfs over the outer one hides them already."""
    kept: list[Path] = []
    for path in sorted({p.resolve() for p in paths if p.exists()}, key=lambda p: len(p.parts)):
        if not any(path.is_relative_to(k) for k in kept):
            kept.append(path)
    return kept


def _under(path: Path, roots: Iterable[Path]) -> bool:
    return any(path.is_relative_to(r) for r in roots)


def boot_script(hostname: str, hide: Sequence[Path]) -> str:
    """Return the shell script that an instance's PID 1 runs.

    It makes the instance's mount namespace (private tmpfs over ``hide`` and the usual writable
    places, the base Python kept read-only with its site directories hidden), sets the hostname,
    then waits for ``go`` on stdin (the harness has configured the network), saves the rest of
    stdin as the user data and runs it. The shell stays PID 1 and waits for the user data: PID 1
    of a PID namespace ignores every signal whose action is the default, so a user data running
    as PID 1 could not be stopped by SIGTERM.
    """
    prefix, executable, sites = _python_layout()
    modes = {"/tmp": "1777", "/var/tmp": "1777", "/dev/shm": "1777", "/root": "0700"}
    writable = _outermost(
        [Path(p) for p in ("/tmp", "/var/tmp", "/dev/shm", "/root", "/home", "/opt")] + list(hide)
    )
    q = shlex.quote
    staged = f"{INSTANCE_DIR}/python"
    lines = [
        "set -eu",
        # A sysfs of this network namespace, so that /sys/class/net shows eth0, not the host's.
        "mount -t sysfs sysfs /sys",
        f"mount -t tmpfs -o mode=0755 fake-cloud-run /run && mkdir -p {INSTANCE_DIR}",
    ]
    restore = _under(prefix, writable)
    if restore:
        # The base Python lives under a path about to be hidden: keep a view of it aside first.
        lines += [f"mkdir -p {staged}", f"mount --bind {q(str(prefix))} {staged}"]
    lines += [f"mount -t tmpfs -o mode={modes.get(str(p), '0755')} fake-cloud {q(str(p))}" for p in writable]
    if restore:
        lines += [
            f"mkdir -p {q(str(prefix))}",
            f"mount --move {staged} {q(str(prefix))}",
            f"mount -o remount,bind,ro {q(str(prefix))}",
            f"rmdir {staged}",
        ]
    lines += [f"mount -t tmpfs -o ro,mode=0755 fake-cloud-site {q(str(p))}" for p in sites]
    found = shutil.which("python3", path=INSTANCE_PATH)
    if found is None or Path(found).resolve() != executable:
        # Make the driver's Python the instance's python3, as an AMI's own would be. Not a symlink:
        # Python looks for its standard library beside the path it was started by, and a venv
        # made from /usr/local/bin/python3 would find another Python's in /usr/lib.
        version = f"python{sys.version_info.major}.{sys.version_info.minor}"
        lines += [
            "mount -t tmpfs -o mode=0755 fake-cloud-bin /usr/local/bin",
            f"printf '#!/bin/sh\\nexec %s \"$@\"\\n' {q(q(str(executable)))} > /usr/local/bin/{version}",
            f"chmod 0755 /usr/local/bin/{version}",
            f"ln -s {version} /usr/local/bin/python3",
        ]
    lines += [
        f"hostname {q(hostname)}",
        "read -r go",
        '[ "$go" = go ] || exit 112',
        f"cat > {INSTANCE_DIR}/user-data",
        f"chmod 0700 {INSTANCE_DIR}/user-data",
        "cd /",
        "set +e",
        f"{INSTANCE_DIR}/user-data < /dev/null",
        "exit $?",
    ]
    return "\n".join(lines) + "\n"


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    cloud: FakeCloud


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def reply(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class _ImdsHandler(_Handler):
    """IMDSv2: a PUT hands out a token bound to the caller's address; every GET needs it."""

    def do_PUT(self) -> None:
        if self.path != "/latest/api/token":
            return self.reply(404, b"Not Found")
        try:
            ttl = int(self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", ""))
        except ValueError:
            ttl = 0
        if not 1 <= ttl <= 21600:
            return self.reply(400, b"Bad Request")
        token = self.server.cloud._imds_token(self.client_address[0], ttl)
        self.reply(200, token.encode())

    def do_GET(self) -> None:
        cloud = self.server.cloud
        caller = self.client_address[0]
        if not cloud._imds_token_valid(self.headers.get("X-aws-ec2-metadata-token", ""), caller):
            return self.reply(401, b"Unauthorized")
        found = cloud._imds_lookup(caller, self.path.split("?", 1)[0])
        if found is None:
            return self.reply(404, b"Not Found")
        self.reply(200, found)


class _PackageHandler(_Handler):
    """A PEP 503 simple index under /simple/ and a flat find-links page under /wheels/."""

    def do_GET(self) -> None:
        wheels: dict[str, tuple[Path, str, str]] = self.server.cloud._wheels
        path = self.path.split("?", 1)[0]
        if path == "/simple/":
            names = sorted({project for _, project, _ in wheels.values()})
            return self.page("Simple index", [(f"/simple/{n}/", n) for n in names])
        if m := re.fullmatch(r"/simple/([^/]+)/?", path):
            project = re.sub(r"[-_.]+", "-", m.group(1)).lower()
            links = [
                (f"/wheels/{name}#sha256={digest}", name)
                for name, (_, proj, digest) in sorted(wheels.items())
                if proj == project
            ]
            return self.page(f"Links for {project}", links) if links else self.reply(404, b"Not Found")
        if path == "/wheels/":
            links = [(f"/wheels/{n}#sha256={d}", n) for n, (_, _, d) in sorted(wheels.items())]
            return self.page("Wheels", links)
        if (m := re.fullmatch(r"/wheels/([^/]+)", path)) and m.group(1) in wheels:
            file = wheels[m.group(1)][0]
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(file.stat().st_size))
            self.end_headers()
            with file.open("rb") as f:
                shutil.copyfileobj(f, self.wfile)
            return None
        return self.reply(404, b"Not Found")

    do_HEAD = do_GET

    def page(self, title: str, links: list[tuple[str, str]]) -> None:
        body = "".join(f'<a href="{html.escape(h)}">{html.escape(t)}</a><br>\n' for h, t in links)
        text = f"<!DOCTYPE html>\n<html><head><title>{title}</title></head><body>\n{body}</body></html>\n"
        self.reply(200, text.encode(), "text/html")


def _scan_wheels(dirs: Iterable[Path]) -> dict[str, tuple[Path, str, str]]:
    """Return {file name: (path, normalized project, sha256)} of the wheels in the directories."""
    import hashlib

    wheels = {}
    for directory in dirs:
        for file in sorted(Path(directory).glob("*.whl")):
            project = re.sub(r"[-_.]+", "-", file.name.split("-", 1)[0]).lower()
            digest = hashlib.sha256(file.read_bytes()).hexdigest()
            wheels.setdefault(file.name, (file, project, digest))
    return wheels


class FakeCloud:
    """A fake EC2 region on this machine; see the module docstring for the model.

    Use it as a context manager, or call `start` and `close`. One cloud per hub network namespace
    (the metadata service's address and the bridge are the hub's), and one per process (moto
    keeps its state in the process).
    """

    def __init__(
        self,
        *,
        wheelhouse: Sequence[Path] = (),
        workdir: Path | None = None,
        region: str = "us-west-2",
        cidr: str = "10.200.1.0/24",
        bridge: str = "ec2br0",
        hide: Sequence[Path] = (),
        poll_interval: float = 0.3,
    ) -> None:
        self.region = region
        self.availability_zone = f"{region}a"
        self.network = ipaddress.ip_network(cidr)
        self.gateway = str(self.network.network_address + 1)
        self.bridge = bridge
        self.poll_interval = poll_interval
        self.wheelhouse = [Path(p) for p in wheelhouse]
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="bigactor-ec2-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._hide = [REPOSITORY, Path(sys.prefix), *hide]
        self._lock = threading.Lock()
        self._instances: dict[str, _Instance] = {}
        self._by_ip: dict[str, _Instance] = {}
        self._tokens: dict[str, tuple[str, float]] = {}
        self._veth_numbers = itertools.count()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._watch_error: BaseException | None = None
        self._servers: list[_Server] = []
        self._moto: Any = None
        self._wheels: dict[str, tuple[Path, str, str]] = {}
        self._started = self._closed = self._hub_configured = False
        self._strays: set[str] = set()
        #: Seconds `start` took (moto's import and first call, the bridge, the servers).
        self.setup_seconds = 0.0

    # ----------------------------------------------------------------- lifecycle

    def __enter__(self) -> FakeCloud:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Check the hub, start moto, create the network in moto and in the hub, start serving."""
        if self._started:
            raise FakeCloudError("the fake cloud was started already")
        self._started = True
        t0 = time.monotonic()
        try:
            check_hub()
        except HubError:
            self._closed = True
            if self._own_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
            raise
        try:
            self._start_moto()
            self._create_network()
            self._start_servers()
            self._watcher = threading.Thread(target=self._watch, name="fake-cloud-watcher", daemon=True)
            self._watcher.start()
        except BaseException:
            self.close()
            raise
        self.setup_seconds = time.monotonic() - t0
        log.info("fake cloud up in %.1f s: %s, subnet %s", self.setup_seconds, self.endpoint_url, self.cidr)

    def _start_moto(self) -> None:
        # moto's server logs one access line per request even when told not to be verbose.
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        import boto3
        from moto.server import ThreadedMotoServer

        self._moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._moto.start()
        host, port = self._moto.get_host_and_port()
        self.endpoint_url = f"http://{host}:{port}"
        session = boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name=self.region
        )
        self._session = session
        self.ec2 = session.client("ec2", endpoint_url=self.endpoint_url)
        self.iam = session.client("iam", endpoint_url=self.endpoint_url)
        # Clients are not shared between threads: the watcher gets its own.
        self._watch_ec2 = session.client("ec2", endpoint_url=self.endpoint_url)

    def _create_network(self) -> None:
        vpc = self.ec2.create_vpc(CidrBlock=str(self.network))["Vpc"]["VpcId"]
        subnet = self.ec2.create_subnet(
            VpcId=vpc, CidrBlock=str(self.network), AvailabilityZone=self.availability_zone
        )["Subnet"]["SubnetId"]
        group = self.ec2.create_security_group(
            GroupName="bigactor-fake-cloud", Description="bigactor EC2 tests", VpcId=vpc
        )["GroupId"]
        images = self.ec2.describe_images(Owners=["amazon"])["Images"]
        self.vpc_id, self.subnet_id, self.security_group_id = vpc, subnet, group
        self.image_id = min(image["ImageId"] for image in images)
        prefix = self.network.prefixlen
        self._hub_configured = True
        _ip(
            "-batch",
            "-",
            input=(
                f"link add {self.bridge} type bridge\n"
                f"link set {self.bridge} address {BRIDGE_MAC}\n"
                f"addr add {self.gateway}/{prefix} dev {self.bridge}\n"
                f"link set {self.bridge} up\n"
                f"addr add {IMDS_ADDRESS}/32 dev lo\n"
            ),
        )

    def _start_servers(self) -> None:
        imds = _Server((IMDS_ADDRESS, 80), _ImdsHandler)
        self._wheels = _scan_wheels(self.wheelhouse)
        packages = _Server((self.gateway, 0), _PackageHandler)
        for server in (imds, packages):
            server.cloud = self
            self._servers.append(server)
            threading.Thread(target=server.serve_forever, name="fake-cloud-http", daemon=True).start()
        port = packages.server_address[1]
        # Plain HTTP, so pip needs ``--trusted-host`` with the gateway's address (pip_args).
        self.index_url = f"http://{self.gateway}:{port}/simple/"
        self.find_links_url = f"http://{self.gateway}:{port}/wheels/"
        self.pip_args = ["--index-url", self.index_url, "--trusted-host", self.gateway]

    def close(self) -> None:
        """Terminate every instance, tear down the network and servers, and wait until nothing is left.

        Idempotent. Raises FakeCloudError if a process, namespace or link of the cloud is still
        there after 10 s, and re-raises an error that stopped the watcher thread.
        """
        if self._closed:
            return
        self._closed = True
        with self._lock:
            instances = list(self._instances.values())
        running = [i.instance_id for i in instances if i.exit_status is None]
        if running and self._moto is not None:
            with contextlib.suppress(Exception):
                self.ec2.terminate_instances(InstanceIds=running)
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=30)
        for inst in instances:
            self._kill(inst)
        links = set(_links())
        gone = "".join(f"link del {i.veth}\n" for i in instances if i.veth in links)
        if self._hub_configured:
            # Only what start made: the hub passed check_hub, so the bridge is ours.
            if self.bridge in links:
                gone += f"link del {self.bridge}\n"
            _cmd("ip", "addr", "del", f"{IMDS_ADDRESS}/32", "dev", "lo", check=False)
        if gone:
            _cmd("ip", "-force", "-batch", "-", input=gone, check=False)
        for server in self._servers:
            server.shutdown()
            server.server_close()
        if self._moto is not None:
            self._moto.stop()
        deadline = time.monotonic() + 10
        while residue := self.residue():
            if time.monotonic() > deadline:
                raise FakeCloudError(f"the fake cloud left {residue}")
            time.sleep(0.05)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        if self._watch_error is not None:
            raise FakeCloudError("the fake cloud's watcher thread failed") from self._watch_error

    def residue(self) -> list[str]:
        """Describe what of this cloud is still there: processes, namespaces, links (empty: nothing)."""
        with self._lock:
            instances = list(self._instances.values())
        left = []
        links = set(_links())
        left += [f"link {name}" for name in sorted(links & {self.bridge, *(i.veth for i in instances)})]
        pids = {i.process.pid for i in instances if i.process} | {i.pid for i in instances if i.pid}
        left += [f"process {pid}" for pid in sorted(pids) if _alive(pid)]
        inodes = {i.netns for i in instances if i.netns}
        left += [f"netns {n} (pid {p})" for p, n in sorted(processes_in_netns(inodes).items())]
        return left

    # ----------------------------------------------------------------- the code under test's view

    @property
    def cidr(self) -> str:
        return str(self.network)

    @property
    def env(self) -> dict[str, str]:
        """The environment that points boto3 (and the AWS CLI) at this cloud."""
        no_file = str(self.workdir / "no-aws-config")
        return {
            "AWS_ENDPOINT_URL_EC2": self.endpoint_url,
            "AWS_ENDPOINT_URL_IAM": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            # No credentials or endpoints from a real configuration, nor from a real IMDS.
            "AWS_CONFIG_FILE": no_file,
            "AWS_SHARED_CREDENTIALS_FILE": no_file,
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    #: Variables to remove from the environment of the code under test (see `env`).
    env_unset = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_DEFAULT_PROFILE")

    def create_instance_profile(self, name: str) -> str:
        """Create an IAM instance profile (RunInstances needs it to exist) and return its ARN."""
        return str(self.iam.create_instance_profile(InstanceProfileName=name)["InstanceProfile"]["Arn"])

    def launch(
        self,
        user_data: bytes | str,
        count: int = 1,
        *,
        spot: bool = False,
        instance_type: str = "t3.micro",
        shutdown_behavior: str = "terminate",
    ) -> list[str]:
        """Run ``count`` instances in the cloud's subnet with the user data; return their IDs."""
        args: dict[str, Any] = {}
        if spot:
            args["InstanceMarketOptions"] = {"MarketType": "spot"}
        reply = self.ec2.run_instances(
            ImageId=self.image_id,
            InstanceType=instance_type,
            MinCount=count,
            MaxCount=count,
            SubnetId=self.subnet_id,
            SecurityGroupIds=[self.security_group_id],
            UserData=user_data,
            InstanceInitiatedShutdownBehavior=shutdown_behavior,
            **args,
        )
        return [i["InstanceId"] for i in reply["Instances"]]

    # ----------------------------------------------------------------- inspection

    def instances(self) -> dict[str, InstanceInfo]:
        """Return a snapshot of every instance the cloud has booted, by ID."""
        with self._lock:
            return {iid: inst.info() for iid, inst in self._instances.items()}

    def info(self, instance_id: str) -> InstanceInfo:
        """Return a snapshot of one booted instance (KeyError if the cloud has not booted it)."""
        with self._lock:
            return self._instances[instance_id].info()

    def console_output(self, instance_id: str) -> str:
        """Return everything the instance wrote to stdout and stderr so far."""
        with self._lock:
            console = self._instances[instance_id].console
        return console.read_bytes().decode("utf-8", "replace")

    def state(self, instance_id: str) -> str:
        """Return the instance's state as moto reports it."""
        reply = self.ec2.describe_instances(InstanceIds=[instance_id])
        return str(reply["Reservations"][0]["Instances"][0]["State"]["Name"])

    def wait_booted(self, instance_ids: Iterable[str], timeout: float = 30) -> list[InstanceInfo]:
        """Wait until the user data of each instance has been started; return their snapshots."""
        ids = list(instance_ids)

        def ready() -> list[InstanceInfo] | None:
            with self._lock:
                insts = [self._instances.get(i) for i in ids]
                if all(i is not None and i.booted_at is not None for i in insts):
                    return [i.info() for i in insts if i is not None]
            return None

        return self._wait(ready, timeout, f"instances {ids} to boot")

    def wait_console(self, instance_id: str, text: str, timeout: float = 30) -> str:
        """Wait until the instance's console contains ``text``; return the console."""

        def ready() -> str | None:
            with self._lock:
                inst = self._instances.get(instance_id)
            if inst is None:
                return None
            # Read the status first: output written before the exit is then on the console.
            exited = inst.exit_status is not None or (
                inst.process is not None and inst.process.poll() is not None
            )
            if text in (out := self.console_output(instance_id)):
                return out
            if exited:
                raise FakeCloudError(f"{instance_id} exited without writing {text!r}{self._consoles()}")
            return None

        return self._wait(ready, timeout, f"{text!r} on the console of {instance_id}")

    def wait_exited(self, instance_id: str, timeout: float = 30) -> int:
        """Wait until the instance's processes are gone; return the user data's exit status."""

        def ready() -> int | None:
            with self._lock:
                inst = self._instances.get(instance_id)
            if inst is None or inst.exit_status is None:
                return None
            if (inst.pid and _alive(inst.pid)) or (inst.netns and processes_in_netns([inst.netns])):
                return None
            return inst.exit_status

        return self._wait(ready, timeout, f"{instance_id} to exit")

    def wait_state(self, instance_id: str, state: str, timeout: float = 30) -> None:
        """Wait until moto reports the instance in ``state``."""
        self._wait(lambda: self.state(instance_id) == state or None, timeout, f"{instance_id} {state}")

    def _wait(self, ready: Any, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while (result := ready()) is None:
            if self._watch_error is not None:
                raise FakeCloudError("the fake cloud's watcher thread failed") from self._watch_error
            if time.monotonic() > deadline:
                raise FakeCloudError(f"waited {timeout} s for {what}{self._consoles()}")
            time.sleep(0.05)
        return result

    def _consoles(self) -> str:
        parts = []
        for iid, info in self.instances().items():
            tail = self.console_output(iid)[-2000:]
            parts.append(f"\n--- {iid} {info.private_ip} exit={info.exit_status} console:\n{tail}")
        return "".join(parts)

    def exec_in(
        self, instance_id: str, argv: Sequence[str], *, timeout: float = 30, input: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        """Run a command inside the instance (all its namespaces, root, its PATH), like a remote shell."""
        pid = self.info(instance_id).pid
        if pid is None:
            raise FakeCloudError(f"{instance_id} has no running process")
        return subprocess.run(
            ["nsenter", "-t", str(pid), "-n", "-m", "-u", "-p", "--", *argv],
            input=input,
            capture_output=True,
            timeout=timeout,
            env=self._instance_env(),
            cwd="/",
        )

    # ----------------------------------------------------------------- faults

    def terminate(self, instance_id: str) -> None:
        """Terminate the instance in moto; the watcher kills it within a poll interval."""
        self.ec2.terminate_instances(InstanceIds=[instance_id])

    def interrupt_spot(self, instance_id: str, notice_s: float) -> None:
        """Post a spot interruption notice in the instance's IMDS, and terminate it ``notice_s`` later.

        AWS gives two minutes' notice; a test gives a few seconds.
        """
        with self._lock:
            inst = self._instances[instance_id]
            inst.spot_action = {"action": "terminate", "time": _now_iso(notice_s)}
            inst.terminate_at = time.monotonic() + notice_s

    def cut(self, instance_id: str, how: Cut = "down", *, period: float = 1.0) -> None:
        """Partition the instance from the hub and the other instances, until `heal`.

        ``how``: ``"down"`` sets the hub side of its veth down; ``"loss"`` drops every packet both
        ways; ``"loss-inbound"`` drops only packets to the instance and ``"loss-outbound"`` only
        packets from it; ``"flap"`` sets the link down and up every ``period`` seconds, starting
        down. Loss is a ``blackhole`` queueing discipline on the sending side's device (this
        kernel has no netem, and a drop of 100 % needs none).
        """
        if how not in CUTS:
            raise ValueError(f"cut must be one of {CUTS}, not {how!r}")
        self.heal(instance_id)
        with self._lock:
            inst = self._instances[instance_id]
        if how in ("down", "flap"):
            _ip("link", "set", inst.veth, "down")
        if how in ("loss", "loss-inbound"):
            _cmd("tc", "qdisc", "replace", "dev", inst.veth, "root", "blackhole")
        if how in ("loss", "loss-outbound"):
            self._in_netns(inst, "tc", "qdisc", "replace", "dev", "eth0", "root", "blackhole")
        with self._lock:
            inst.cut = how
            inst.flap_period = period
            inst.flap_down = True
            inst.flap_next = time.monotonic() + period

    def heal(self, instance_id: str) -> None:
        """Undo `cut`: the link is up and no packet is dropped (a no-op if it was not cut)."""
        with self._lock:
            inst = self._instances[instance_id]
            how, inst.cut = inst.cut, None
        if how is None:
            return
        if how in ("down", "flap"):
            _cmd("ip", "link", "set", inst.veth, "up", check=False)
        if how in ("loss", "loss-inbound"):
            _cmd("tc", "qdisc", "del", "dev", inst.veth, "root", check=False)
        if how in ("loss", "loss-outbound"):
            self._in_netns(inst, "tc", "qdisc", "del", "dev", "eth0", "root", check=False)

    def _in_netns(self, inst: _Instance, *argv: str, input: str | None = None, check: bool = True) -> str:
        return _cmd("nsenter", "-t", str(inst.pid), "-n", "--", *argv, input=input, check=check)

    # ----------------------------------------------------------------- the watcher thread

    def _watch(self) -> None:
        """Poll moto and make the namespaces follow it; the thread that spawns every instance.

        Instances die with this thread (their parent-death signal fires when the thread that
        spawned them ends), which is what cleans up after a killed test process.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        failures = 0
        try:
            while not self._stop.is_set():
                try:
                    self._tick()
                    failures = 0
                except (BotoCoreError, ClientError) as exc:
                    # moto on a loaded machine can drop a call; a dead moto fails every call.
                    failures += 1
                    log.warning("fake cloud: EC2 call failed (%d in a row): %s", failures, exc)
                    if failures >= 20:
                        raise
                self._stop.wait(self.poll_interval)
        except BaseException as exc:
            log.exception("fake cloud watcher failed")
            self._watch_error = exc
            with self._lock:
                instances = list(self._instances.values())
            for inst in instances:
                self._kill(inst)

    def _tick(self) -> None:
        now = time.monotonic()
        with self._lock:
            instances = list(self._instances.values())
        due = []
        for inst in instances:
            if inst.terminate_at is not None and now >= inst.terminate_at:
                due.append(inst)
            if inst.cut == "flap" and now >= inst.flap_next:
                inst.flap_down = not inst.flap_down
                inst.flap_next = now + inst.flap_period
                _cmd("ip", "link", "set", inst.veth, "down" if inst.flap_down else "up", check=False)
        if due:
            self._watch_ec2.terminate_instances(InstanceIds=[i.instance_id for i in due])
            for inst in due:
                inst.terminate_at = None
        states: dict[str, dict[str, Any]] = {}
        for page in self._watch_ec2.get_paginator("describe_instances").paginate():
            for reservation in page["Reservations"]:
                for described in reservation["Instances"]:
                    iid = described["InstanceId"]
                    if described.get("SubnetId") == self.subnet_id:
                        states[iid] = described
                    elif iid not in self._strays:
                        # A launch without the cloud's SubnetId gets a public IP in AWS's space.
                        self._strays.add(iid)
                        log.warning(
                            "fake cloud: %s is not in subnet %s and will never boot (public IP %s)",
                            iid,
                            self.subnet_id,
                            described.get("PublicIpAddress"),
                        )
        new = []
        for iid, described in states.items():
            state = described["State"]["Name"]
            inst = self._instances.get(iid)
            if inst is None:
                if state == "running":
                    new.append(described)
            elif state in ("shutting-down", "terminated", "stopping", "stopped"):
                self._kill(inst)
            elif inst.process is not None and inst.process.poll() is not None and not inst.shutdown_requested:
                # The user data ended: the instance shut itself down.
                self._kill(inst)
                if inst.shutdown_behavior == "stop":
                    self._watch_ec2.stop_instances(InstanceIds=[iid])
                else:
                    self._watch_ec2.terminate_instances(InstanceIds=[iid])
                inst.shutdown_requested = True
        if new:
            self._boot(new)

    def _instance_env(self) -> dict[str, str]:
        return {"PATH": INSTANCE_PATH, "HOME": "/root", "LANG": "C.UTF-8", "USER": "root", "LOGNAME": "root"}

    def _boot(self, described: list[dict[str, Any]]) -> None:
        """Boot instances: spawn their namespaces, wire their network, hand them their user data."""
        # First every API call, so that a failed call leaves nothing half-booted to retry.
        attributes = []
        for d in described:
            attr = self._watch_ec2.describe_instance_attribute
            raw = attr(InstanceId=d["InstanceId"], Attribute="userData").get("UserData", {}).get("Value", "")
            behavior = attr(InstanceId=d["InstanceId"], Attribute="instanceInitiatedShutdownBehavior")
            attributes.append((raw, behavior))
        booting = []
        for d, (raw, behavior) in zip(described, attributes, strict=True):
            iid = d["InstanceId"]
            inst = _Instance(
                instance_id=iid,
                private_ip=d["PrivateIpAddress"],
                veth=f"vh{next(self._veth_numbers)}",
                console=self.workdir / f"{iid}.console",
                user_data=base64.b64decode(raw),
                shutdown_behavior=behavior["InstanceInitiatedShutdownBehavior"]["Value"],
                launch_time=d["LaunchTime"].strftime("%Y-%m-%dT%H:%M:%SZ"),
                metadata={
                    "instance-id": iid,
                    "instance-type": d["InstanceType"],
                    "image-id": d["ImageId"],
                    "availability-zone": d["Placement"]["AvailabilityZone"],
                    "instance-life-cycle": d.get("InstanceLifecycle", "on-demand"),
                },
            )
            script = boot_script(inst.hostname, self._hide)
            with inst.console.open("ab") as console:
                inst.process = subprocess.Popen(
                    # setpriv's parent-death signal survives its exec of unshare: the instance is
                    # killed when this thread ends, even by SIGKILL of the whole process.
                    [
                        *("setpriv", "--pdeathsig", "KILL", "--"),
                        *("unshare", "--net", "--mount", "--uts", "--pid", "--fork", "--kill-child"),
                        *("--mount-proc", "--", "/bin/sh", "-c", script, "boot"),
                    ],
                    stdin=subprocess.PIPE,
                    stdout=console,
                    stderr=subprocess.STDOUT,
                    env=self._instance_env(),
                    cwd="/",
                )
            with self._lock:
                self._instances[iid] = inst
                self._by_ip[inst.private_ip] = inst
            booting.append(inst)
        own = os.stat("/proc/self/ns/net").st_ino
        deadline = time.monotonic() + 10
        for inst in booting:
            assert inst.process is not None
            while inst.pid is None and inst.process.poll() is None and time.monotonic() < deadline:
                children = Path(f"/proc/{inst.process.pid}/task/{inst.process.pid}/children")
                with contextlib.suppress(OSError):
                    if pids := children.read_text().split():
                        netns = _netns(int(pids[0]))
                        if netns is not None and netns != own:
                            inst.pid, inst.netns = int(pids[0]), netns
                            break
                time.sleep(0.005)
        ready = [i for i in booting if i.pid is not None]
        for inst in (i for i in booting if i.pid is None):
            log.error("%s did not start: %s", inst.instance_id, self.console_output(inst.instance_id))
            self._kill(inst)
        if not ready:
            return
        prefix = self.network.prefixlen
        # A VPC answers ARP itself and never loses an answer, so neighbours are static both ways:
        # the instance knows the gateway's (pinned) MAC and the hub knows the instance's, which is
        # made from its IP. A cut then drops exactly the packets it says, and a heal is immediate.
        _ip(
            "-batch",
            "-",
            input="".join(
                f"link add {i.veth} type veth peer name eth0 address {_mac(i.private_ip)} netns {i.pid}\n"
                f"link set {i.veth} master {self.bridge}\n"
                f"link set {i.veth} up\n"
                f"neigh replace {i.private_ip} lladdr {_mac(i.private_ip)} dev {self.bridge} nud permanent\n"
                for i in ready
            ),
        )
        for inst in ready:
            self._in_netns(
                inst,
                "ip",
                "-batch",
                "-",
                input=(
                    "link set lo up\n"
                    f"addr add {inst.private_ip}/{prefix} dev eth0\n"
                    "link set eth0 up\n"
                    f"route add {IMDS_ADDRESS}/32 via {self.gateway} dev eth0\n"
                    f"neigh replace {self.gateway} lladdr {BRIDGE_MAC} dev eth0 nud permanent\n"
                ),
            )
            assert inst.process is not None
            assert inst.process.stdin is not None
            user_data = inst.user_data
            if user_data[:2] == b"\x1f\x8b":
                # cloud-init runs gzip-compressed user data decompressed; so does the cloud.
                user_data = gzip.decompress(user_data)
            if not user_data.strip():
                # No user data: the instance boots and idles, as an AMI would.
                user_data = b"#!/bin/sh\nexec sleep infinity\n"
            elif not user_data.startswith(b"#!"):
                user_data = (
                    b"#!/bin/sh\necho 'fake cloud: only shell-script user data (#!...) runs here; "
                    b"cloud-config and MIME multipart do not' >&2\nexit 1\n"
                )
            with contextlib.suppress(BrokenPipeError):
                inst.process.stdin.write(b"go\n" + user_data)
            with contextlib.suppress(BrokenPipeError):
                inst.process.stdin.close()
            inst.booted_at = time.time()
            log.info("booted %s at %s", inst.instance_id, inst.private_ip)

    def _kill(self, inst: _Instance) -> None:
        """Kill the instance's unshare process; --kill-child takes its PID namespace down with it."""
        process = inst.process
        if process is None or inst.reaped:
            return
        inst.reaped = True
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGKILL)
        status = process.wait()
        if process.stdin is not None and not process.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                process.stdin.close()
        with self._lock:
            if inst.exit_status is None:
                inst.exit_status = status
        if inst.pid is not None:
            _cmd("ip", "neigh", "del", inst.private_ip, "dev", self.bridge, check=False)

    # ----------------------------------------------------------------- the metadata service

    def _imds_token(self, caller: str, ttl: int) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens[token] = (caller, time.monotonic() + ttl)
        return token

    def _imds_token_valid(self, token: str, caller: str) -> bool:
        with self._lock:
            owner, expiry = self._tokens.get(token, ("", 0.0))
        return owner == caller and time.monotonic() < expiry

    def _imds_lookup(self, caller: str, path: str) -> bytes | None:
        with self._lock:
            inst = self._by_ip.get(caller)
        if inst is None:
            return None
        meta = inst.metadata
        if path == "/latest/user-data":
            return inst.user_data or None
        if path == "/latest/dynamic/instance-identity/document":
            machine = platform.machine()
            document = {
                "accountId": ACCOUNT_ID,
                "architecture": {"aarch64": "arm64"}.get(machine, machine),
                "availabilityZone": meta["availability-zone"],
                "imageId": meta["image-id"],
                "instanceId": inst.instance_id,
                "instanceType": meta["instance-type"],
                "pendingTime": inst.launch_time,
                "privateIp": inst.private_ip,
                "region": self.region,
                "version": "2017-09-30",
            }
            return json.dumps(document, indent=2).encode()
        values = {
            "instance-id": inst.instance_id,
            "instance-type": meta["instance-type"],
            "ami-id": meta["image-id"],
            "local-ipv4": inst.private_ip,
            "local-hostname": f"{inst.hostname}.{self.region}.compute.internal",
            "hostname": f"{inst.hostname}.{self.region}.compute.internal",
            "instance-life-cycle": meta["instance-life-cycle"],
            "placement/availability-zone": meta["availability-zone"],
            "placement/region": self.region,
        }
        if inst.spot_action is not None:
            values["spot/instance-action"] = json.dumps(inst.spot_action)
            values["spot/termination-time"] = inst.spot_action["time"]
        key = path.removeprefix("/latest/meta-data/")
        if key == path:
            return None
        if key in values:
            return values[key].encode()
        # A directory listing, as IMDS gives: the children of the path, directories with a '/'.
        prefix = key if key in ("", "/") or key.endswith("/") else key + "/"
        prefix = prefix.lstrip("/")
        children = {
            rest.split("/", 1)[0] + ("/" if "/" in rest else "")
            for k in values
            if k.startswith(prefix) and (rest := k[len(prefix) :])
        }
        return "\n".join(sorted(children)).encode() if children else None


@contextlib.contextmanager
def environment(cloud: FakeCloud) -> Iterator[None]:
    """Point this process's environment (and its children's) at the cloud for the block."""
    saved = dict(os.environ)
    for name in cloud.env_unset:
        os.environ.pop(name, None)
    os.environ.update(cloud.env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
