"""Versions in lock-step, Python's by its minor release: a worker on a host with another patch
release of the same Python (Debian's 3.11.2 beside a 3.11.7 driver) serves; another minor
release fails, naming both sides' full versions."""

from __future__ import annotations

import os
import platform
import shutil
import socket
import sys
import tempfile
import textwrap

import pytest
import trio

from bigactor import _rpc
from bigactor._cluster import Cluster
from bigactor._contract import WorkerConfig
from bigactor._errors import MachineLost
from bigactor._rpc import _auth


def _other(patch: bool) -> str:
    major, minor, micro = platform.python_version_tuple()[:3]
    if patch:
        return f"{major}.{minor}.{int(''.join(c for c in micro if c.isdigit()) or 0) + 17}"
    return f"{major}.{int(minor) + 1}.0"


def test_another_patch_release_of_python_matches() -> None:
    """3.X.Y and 3.X.Z are the same Python for bytecode and pickles: no mismatch."""
    _auth.check_versions("tls:10.0.0.1:7000", dict(_auth.versions(), python=_other(patch=True)))


def test_another_minor_release_of_python_names_both_full_versions() -> None:
    """3.X against 3.X+1 fails, with both full versions in the message."""
    theirs = _other(patch=False)
    with pytest.raises(_auth.VersionMismatch) as info:
        _auth.check_versions("tls:10.0.0.1:7000", dict(_auth.versions(), python=theirs))
    assert f"python: driver {platform.python_version()}, worker {theirs}" in str(info.value)


def test_info_and_the_handshake_report_the_full_version() -> None:
    """What is compared is the minor release; what is reported stays the full version."""
    assert _auth.versions()["python"] == platform.python_version()


WORKER = textwrap.dedent(
    """
    import platform, socket, sys
    platform.python_version = lambda: sys.argv[3]  # a host with another release of Python
    import trio
    from bigactor import _rpc
    from bigactor._contract import WorkerConfig
    from bigactor.supervisor import serve_worker

    async def main():
        sock = trio.socket.from_stdlib_socket(socket.socket(fileno=int(sys.argv[1])))
        config = WorkerConfig.from_json(sys.argv[2])
        await serve_worker(config, trio.SocketListener(sock), transport=_rpc.Transport(), exit=sys.exit)

    trio.run(main)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("patch", [True, False], ids=["patch-release", "minor-release"])
async def test_a_worker_process_of_another_python_release(patch: bool) -> None:
    """A real worker process reporting another patch release of Python serves calls; one
    reporting another minor release is refused at the handshake, naming both versions."""
    theirs = _other(patch)
    directory = tempfile.mkdtemp(prefix="bigactor-test-")
    path = os.path.join(directory, "w.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()
    config = WorkerConfig(key=os.urandom(32), addr=f"unix:{path}")
    args = [sys.executable, "-c", WORKER, str(listener.fileno()), config.to_json().decode(), theirs]
    proc = await trio.lowlevel.open_process(args, pass_fds=[listener.fileno()])
    try:
        async with trio.open_nursery() as nursery:
            cluster = Cluster(nursery, config.key, transport=_rpc.Transport())
            with trio.fail_after(30):
                if patch:
                    machine = await cluster.dial(config.addr)
                    assert (await machine.info()).python == theirs  # reported in full
                    assert await machine.call("Supervisor.getpid") == proc.pid
                else:
                    with pytest.raises(MachineLost) as info:
                        await cluster.dial(config.addr)
                    text = str(info.value)
                    assert f"python: driver {platform.python_version()}, worker {theirs}" in text
            nursery.cancel_scope.cancel()
    finally:
        proc.kill()
        with trio.CancelScope(shield=True):
            await proc.wait()
        listener.close()
        shutil.rmtree(directory, ignore_errors=True)
