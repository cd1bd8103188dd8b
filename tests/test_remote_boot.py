"""The user-data script, run for real: as a local process on loopback, installing the pins
with pip from a local wheelhouse (no network), then enrolled, shipped its bundle and serving as a
worker over mutual TLS."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from test_remote_support import PYTHON, TINY, Boot, free_port, repack_wheel, tiny_wheel

from bigactor import _codec
from bigactor._cluster import Cluster
from bigactor._contract import WatchdogConfig, WorkerConfig
from bigactor._pki import ClusterCA, Identity
from bigactor._rpc._tls import TLSTransport
from bigactor.systems._remote import (
    MAX_USER_DATA,
    BootSpec,
    Bundle,
    EnrollPolicy,
    build_bundle,
    compute_pins,
    enroll_and_ship,
    new_token,
    render_user_data,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

#: the first boot makes a venv and installs every pin: allow for a slow, shared machine
FIRST_BOOT = EnrollPolicy(dial=240.0, step=30.0)


@pytest.fixture(scope="module")
def ca() -> ClusterCA:
    return ClusterCA.create("remote boot tests")


@pytest.fixture(scope="module")
def driver(ca: ClusterCA) -> Identity:
    return ca.identity("driver", client=True, server=False)


@pytest.fixture(scope="module")
def pins() -> tuple[str, ...]:
    """What a worker needs (bigactor's closure, the agent's cryptography) and a tiny extra."""
    return (*compute_pins(modules=[]), f"{TINY}==1.0")


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory, pins: tuple[str, ...]) -> Path:
    out = tmp_path_factory.mktemp("wheelhouse")
    for pin in pins:
        name = pin.partition("==")[0]
        if name != TINY:
            repack_wheel(name, out)
    tiny_wheel(out, tmp_path_factory.mktemp("tiny"))
    return out


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One host's cache, shared by the boots of this module (as on a reused host)."""
    return tmp_path_factory.mktemp("host-cache")


@pytest.fixture(scope="module")
def program(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The program's own directory, importable on the driver (as a script's directory is)."""
    root = tmp_path_factory.mktemp("program")
    (root / "remote_program.py").write_text(
        textwrap.dedent(
            """\
            class Where:
                def path(self):
                    return __file__

                def tiny(self):
                    import bigactor_tiny_test  # installed on the host only

                    return bigactor_tiny_test.ANSWER
            """
        )
    )
    sys.path.insert(0, str(root))
    try:
        yield root
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("remote_program", None)


def spec_for(
    ca: ClusterCA, pins: tuple[str, ...], wheelhouse: Path, cache: Path, log: Path, **kw: object
) -> BootSpec:
    options: dict[str, object] = {
        "ca_pem": ca.cert_pem,
        "token": new_token(),
        "pins": pins,
        "find_links": str(wheelhouse),
        "python": PYTHON,
        "port": free_port(),
        "host": "127.0.0.1",
        "cache": str(cache),
        "log": str(log),
        "enroll_timeout": 300.0,
    }
    options.update(kw)
    return BootSpec(**options)  # type: ignore[arg-type]


def config_for(addr: str, bundle: Bundle, key: bytes) -> WorkerConfig:
    return WorkerConfig(
        key=key, addr=addr, sys_path=bundle.sys_path, argv=("remote_program",), watchdog=WatchdogConfig()
    )


async def test_user_data_boots_a_worker_that_serves_over_mutual_tls(
    ca: ClusterCA,
    driver: Identity,
    pins: tuple[str, ...],
    wheelhouse: Path,
    cache: Path,
    program: Path,
    tmp_path: Path,
) -> None:
    """The whole chain: python found, pins installed from the wheelhouse, the agent enrolled,
    the bundle shipped, and a worker running bigactor *from the bundle* answers calls."""
    bundle = build_bundle(sys_path=[str(program)], modules={})
    spec = spec_for(ca, pins, wheelhouse, cache, tmp_path / "boot.log")
    addr = f"tls:127.0.0.1:{spec.port}"
    key = os.urandom(32)
    boot = Boot(render_user_data(spec), tmp_path)
    try:
        worker = await enroll_and_ship(
            addr, ca, spec.token, bundle, config_for(addr, bundle, key), identity=driver, policy=FIRST_BOOT
        )
        for stage in ("python", "packages", "agent", "enrollment", "bundle", "config"):
            assert re.search(rf"stage {stage} done in \d+\.\d\d s", worker.boot_log), (stage, worker.boot_log)
        assert not worker.bundle_cached
        import remote_program

        async with trio.open_nursery() as nursery:
            cluster = Cluster(nursery, key, transport=TLSTransport(driver, ca.cert_pem))
            with trio.fail_after(60):
                machine = await cluster.dial(addr)
                await machine.call("Supervisor.register", "where", _codec.dumps(remote_program.Where()))
                where = await machine.call("where.path")
                tiny = await machine.call("where.tiny")
                pid = await machine.call("Supervisor.getpid")
            nursery.cancel_scope.cancel()
        assert where == str(cache / "bundles" / bundle.digest / "1" / "remote_program.py")
        assert tiny == 42  # from the pinned tiny wheel, installed by pip on the "host"
        assert pid != os.getpid()
        assert pid in _children(boot.proc.pid)
    finally:
        boot.kill()
    log = (tmp_path / "boot.log").read_text()
    assert "stage worker ..." in log
    assert spec.token.hex() not in log + boot.text()


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


async def test_a_reused_host_reuses_its_venv_and_receives_no_bundle(
    ca: ClusterCA,
    driver: Identity,
    pins: tuple[str, ...],
    wheelhouse: Path,
    cache: Path,
    tmp_path: Path,
) -> None:
    """Two boots on one host (its cache): the second makes no venv and gets the bundle from
    its cache, so nothing is sent."""
    program = tmp_path / "program"
    program.mkdir()
    (program / "reused_program.py").write_text(f"SALT = {os.urandom(8).hex()!r}\n")  # a new digest
    bundle = build_bundle(sys_path=[str(program)], modules={})
    cached = []
    for _ in range(2):
        spec = spec_for(ca, pins, wheelhouse, cache, tmp_path / "boot.log")  # one log, two boots
        addr = f"tls:127.0.0.1:{spec.port}"
        boot = Boot(render_user_data(spec), tmp_path)
        try:
            worker = await enroll_and_ship(
                addr, ca, spec.token, bundle, config_for(addr, bundle, os.urandom(32)), identity=driver,
                policy=FIRST_BOOT,
            )  # fmt: skip
        finally:
            boot.kill()
        cached.append(worker.bundle_cached)
    assert cached == [False, True]
    assert "is cached" in worker.boot_log  # the venv, on the second boot
    assert f"bundle {bundle.digest[:12]} is cached" in worker.boot_log
    assert "venv" in worker.boot_log
    assert " made" not in worker.boot_log
    assert worker.boot_log.count("boot of") == 1  # the driver is shown this boot's lines only
    assert (tmp_path / "boot.log").read_text().count("boot of") == 2


def _run(script: bytes, tmp_path: Path, timeout: float = 120) -> tuple[int, str]:
    boot = Boot(script, tmp_path)
    try:
        return boot.wait(timeout), boot.text()
    finally:
        boot.kill()


def test_a_missing_python_fails_the_python_stage(
    ca: ClusterCA, pins: tuple[str, ...], wheelhouse: Path, tmp_path: Path
) -> None:
    """The stage that fails names itself and its time, and the final action runs."""
    spec = spec_for(
        ca, pins, wheelhouse, tmp_path, tmp_path / "boot.log", python="/nonexistent/python3",
        final="echo final action ran",
    )  # fmt: skip
    code, out = _run(render_user_data(spec), tmp_path)
    assert code == 1
    assert re.search(
        r"bigactor boot: \[ *\d+\.\d\d s\] stage python failed after \d+\.\d\d s: "
        r"the configured python /nonexistent/python3 is not found",
        out,
    ), out
    assert out.rstrip().endswith("final action ran")
    assert "stage python failed" in (tmp_path / "boot.log").read_text()


def test_a_python_of_another_version_fails_the_python_stage(
    ca: ClusterCA, pins: tuple[str, ...], wheelhouse: Path, tmp_path: Path
) -> None:
    """Workers run the driver's minor version of Python, or do not boot."""
    spec = spec_for(ca, pins, wheelhouse, tmp_path, tmp_path / "boot.log", python_version="3.99")
    code, out = _run(render_user_data(spec), tmp_path)
    assert code == 1
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    assert "stage python failed after" in out
    assert f"is Python {version}, the driver 3.99" in out


def test_the_driver_version_is_found_without_configuration(
    ca: ClusterCA, pins: tuple[str, ...], wheelhouse: Path, tmp_path: Path
) -> None:
    """With no python configured, ``python3.X`` of the driver's version is found on PATH; the
    boot goes on to the packages stage (which fails here: a pin the wheelhouse lacks)."""
    spec = spec_for(
        ca, ("bigactor-absent-test==9.9",), wheelhouse, tmp_path, tmp_path / "boot.log", python=None
    )
    script = render_user_data(spec)
    path = tmp_path / "boot.sh"
    path.write_bytes(script)
    env = {**os.environ, "PATH": f"{Path(PYTHON).parent}:/usr/bin:/bin"}
    proc = subprocess.run(["/bin/sh", str(path)], capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 1, proc.stdout
    assert "stage python done" in proc.stdout
    assert re.search(r"stage packages failed after \d+\.\d\d s: pip could not install", proc.stdout), (
        proc.stdout
    )
    assert "bigactor-absent-test==9.9" in proc.stdout  # pip's own words, on the console
    assert not list(tmp_path.glob("venv-*")), "a half-made venv was left in the cache"


def test_typical_user_data_fits_ec2s_limit(ca: ClusterCA) -> None:
    """This driver's pins, the CA certificate and the agent fit in 16 KiB, with room to spare."""
    spec = BootSpec(
        ca_pem=ca.cert_pem, token=new_token(), pins=compute_pins(modules=["numpy"]),
        index_url="https://pypi.org/simple", final="poweroff",
    )  # fmt: skip
    data = render_user_data(spec)
    assert data.startswith(b"#!/bin/sh\n")
    assert len(data) < MAX_USER_DATA - 2048, len(data)
    assert b"PRIVATE KEY" not in data
    crowded = BootSpec(
        ca_pem=ca.cert_pem, token=new_token(), pins=[f"package-{i}==1.0" for i in range(400)],
        index_url="https://pypi.org/simple",
    )  # fmt: skip
    with pytest.raises(ValueError, match="over EC2's limit of 16384"):
        render_user_data(crowded)
