"""Helpers of the remote-boot tests (no tests here): wheelhouses, boots, agents.

A remote host installs the driver's pins with pip. The tests give it a local wheelhouse and no
network: the pinned distributions repacked as wheels from what this environment has installed
(their RECORD lists their files), and a tiny wheel built with ``pip wheel`` from a project
made on the spot.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import hashlib
import importlib.metadata
import io
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bigactor._pki import ClusterCA
from bigactor.systems._remote import _agent
from bigactor.systems._remote._pins import canonical

PYTHON = sys._base_executable  # type: ignore[attr-defined]  # the venv's own interpreter
TINY = "bigactor-tiny-test"


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def repack_wheel(name: str, out: Path) -> Path:
    """A wheel of the installed distribution ``name``, from the files its RECORD lists."""
    dist = importlib.metadata.distribution(name)
    info = next(f for f in dist.files or () if f.parts[0].endswith(".dist-info"))
    info_dir = info.parts[0]
    tags = [
        line.split(":", 1)[1].strip()
        for line in dist.read_text("WHEEL").splitlines()  # type: ignore[union-attr]
        if line.startswith("Tag:")
    ]
    pys, abis, plats = (sorted({t.split("-")[i] for t in tags}) for i in range(3))
    tag = f"{'.'.join(pys)}-{'.'.join(abis)}-{'.'.join(plats)}"
    wheel = out / f"{canonical(name).replace('-', '_')}-{dist.version}-{tag}.whl"
    rows = []
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        for f in dist.files or ():
            path = f.as_posix()
            if path.startswith("..") or "__pycache__" in f.parts or path.endswith(".pyc"):
                continue  # scripts outside site-packages, compiled files
            if f.parts[0] == info_dir and f.name in ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json"):
                continue
            data = Path(str(dist.locate_file(f))).read_bytes()
            z.writestr(path, data)
            rows.append((path, _record_hash(data), str(len(data))))
        rows.append((f"{info_dir}/RECORD", "", ""))
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows(rows)
        z.writestr(f"{info_dir}/RECORD", text.getvalue())
    return wheel


#: an in-tree PEP 517 backend (the environment's setuptools may lack bdist_wheel offline)
_BACKEND = """\
import base64, hashlib, os, zipfile

NAME, VERSION = "bigactor_tiny_test", "1.0"
FILES = {
    "bigactor_tiny_test/__init__.py": b"ANSWER = 42\\n",
    "bigactor_tiny_test-1.0.dist-info/METADATA": (
        b"Metadata-Version: 2.1\\nName: bigactor-tiny-test\\nVersion: 1.0\\n"
    ),
    "bigactor_tiny_test-1.0.dist-info/WHEEL": (
        b"Wheel-Version: 1.0\\nGenerator: tiny\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"
    ),
}


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    name = "bigactor_tiny_test-1.0-py3-none-any.whl"
    record = []
    with zipfile.ZipFile(os.path.join(wheel_directory, name), "w") as z:
        for path, data in FILES.items():
            z.writestr(path, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{path},sha256={digest},{len(data)}")
        record.append("bigactor_tiny_test-1.0.dist-info/RECORD,,")
        z.writestr("bigactor_tiny_test-1.0.dist-info/RECORD", "\\n".join(record) + "\\n")
    return name
"""


def tiny_wheel(out: Path, work: Path) -> Path:
    """Build ``bigactor-tiny-test==1.0`` (one module) with ``pip wheel`` of a temporary
    project, offline."""
    project = work / "tiny"
    project.mkdir(parents=True)
    (project / "tiny_backend.py").write_text(_BACKEND)
    (project / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""\
            [build-system]
            requires = []
            build-backend = "tiny_backend"
            backend-path = ["."]
            [project]
            name = "{TINY}"
            version = "1.0"
            """
        )
    )
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-index", "--no-build-isolation",
         "--disable-pip-version-check", "-q", "-w", str(out), str(project)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return next(out.glob("bigactor_tiny_test-1.0-*.whl"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Boot:
    """The user-data script running as a local process (its own process group)."""

    def __init__(self, script: bytes, work: Path) -> None:
        path = work / f"user-data-{time.monotonic_ns()}.sh"
        path.write_bytes(script)
        self.output: list[str] = []
        self.proc = subprocess.Popen(
            ["/bin/sh", str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.output.append(line)

    def wait(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def text(self) -> str:
        return "".join(self.output)

    def kill(self) -> None:
        """Kill the boot and everything it started (the agent, the worker)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._reader.join(5)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


class AgentThread:
    """A boot agent in this process, on a thread, with a handoff that records what it got."""

    def __init__(self, ca: ClusterCA, token: bytes, cache: Path, *, port: int = 0, **settings: Any) -> None:
        self.handoff: dict[str, Any] | None = None
        self.failure: _agent.StageFailed | None = None
        log = _agent.BootLog(str(cache / "boot.log"), time.time())
        self.log = log
        self.settings = {
            "token": token.hex(),
            "ca": ca.cert_pem.decode(),
            "port": port or free_port(),
            "host": "127.0.0.1",
            "cache": str(cache),
            "log": log.path,
            **settings,
        }
        self.port: int = self.settings["port"]
        self.addr = f"tls:127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> AgentThread:
        """Start the agent and return once it listens."""
        self.thread.start()
        wait_for(
            lambda: "agent listening" in self.boot_log() or not self.thread.is_alive(),
            30,
            "the agent to listen",
        )
        return self

    def _handoff(self, result: dict[str, Any]) -> None:
        self.handoff = result
        os.close(result["listen_fd"])

    def _run(self) -> None:
        try:
            _agent.run(self.settings, self.log, self._handoff)
        except _agent.StageFailed as exc:
            self.failure = exc

    def join(self, timeout: float = 30) -> None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the agent did not finish"

    def boot_log(self) -> str:
        path = Path(self.log.path)
        return path.read_text() if path.exists() else ""


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
