"""The guardian process's own loop, run in this process: what it kills and what it forgets."""

from __future__ import annotations

import array
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

from bigactor.systems import _guardian


def _watch(sock: socket.socket, proc: subprocess.Popen[bytes]) -> None:
    pidfd = os.pidfd_open(proc.pid)
    try:
        sock.sendmsg(
            [f"W {proc.pid}".encode()], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [pidfd]))]
        )
    finally:
        os.close(pidfd)  # the guardian holds its own copy


def test_guardian_kills_what_it_watches_and_removes_the_directory_when_the_driver_goes(
    tmp_path: Path,
) -> None:
    """End of the driver's socket: every watched process is SIGKILLed (by pidfd, and by pid
    with its start time), the directory removed; a process that ended first is forgotten."""
    sleepers = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) for _ in range(3)]
    early = subprocess.Popen([sys.executable, "-c", "pass"])
    directory = tmp_path / "sockets"
    directory.mkdir()
    driver, guardian = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    thread = threading.Thread(target=_guardian.serve, args=(guardian,))
    thread.start()
    try:
        _watch(driver, sleepers[0])
        _watch(driver, sleepers[1])
        _watch(driver, early)
        started = _guardian.start_time(sleepers[2].pid)
        driver.send(f"P {sleepers[2].pid} {started}".encode())
        driver.send(f"D {directory}".encode())
        early.wait(10)
    finally:
        driver.close()  # the driver is gone
        thread.join(10)
        guardian.close()
    assert not thread.is_alive()
    for proc in sleepers:
        assert proc.wait(10) == -9  # SIGKILL
    assert not directory.exists()


def test_a_pid_whose_start_time_changed_is_not_killed() -> None:
    """A pid watched without a pidfd is killed only if it is still the same process."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = _guardian.start_time(proc.pid)
        assert started is not None
        _guardian._kill_pid(proc.pid, started + 1)  # another process's start time: spared
        assert proc.poll() is None
        _guardian._kill_pid(proc.pid, started)
        assert proc.wait(10) == -9
    finally:
        proc.kill()
        proc.wait()
