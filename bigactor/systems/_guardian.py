"""The guardian: a small process that kills a local cluster's workers when its driver dies.

A worker's own lifeline (end-of-file on a pipe only the driver writes) is read by a Trio task,
so it cannot act while the worker's loop is blocked: an async method that sleeps with
``time.sleep``, a regex that holds the GIL, a SIGSTOPped process. The kill has to come from
outside the worker. The guardian is that outside: the driver starts one per local system, in a
session of its own, and holds the other end of a ``SOCK_SEQPACKET`` socket pair with it. Over
it the driver names each worker as it starts, by a pidfd passed with ``SCM_RIGHTS`` (so a
recycled pid can never be hit), and the directory of the workers' sockets. When the driver's
end closes — a clean exit or SIGKILL alike — the guardian SIGKILLs every worker still alive,
removes the directory, and exits. A worker that exits on its own is forgotten by itself (its
pidfd turns readable), so the guardian's table holds only live workers.

Why not the kernel's parent-death signal: ``PR_SET_PDEATHSIG`` fires when the *thread* that
started the process exits (trio starts processes from worker threads that exit when idle), and
a chain through the fork server would kill every worker when only the fork server died. The
guardian is nobody's parent; the fork server dying leaves it, and the workers, untouched.

This file runs as ``python -I -S _guardian.py FD``: standard library only, so it starts in a
few milliseconds. Messages, each one datagram::

    W <pid>               watch this worker; its pidfd rides along (SCM_RIGHTS)
    P <pid> <start time>  watch by pid where pidfds do not exist; the start time (clock ticks
                          since boot, /proc/<pid>/stat field 22) guards against pid reuse
    D <path>              remove this directory when the driver dies
"""

from __future__ import annotations

import array
import contextlib
import os
import selectors
import shutil
import signal
import socket
import sys


def stat_fields(pid: int) -> list[bytes] | None:
    """The fields of ``/proc/<pid>/stat`` from the third on (state, ppid, ...), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    return stat[stat.rfind(b")") + 2 :].split()


def start_time(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (Linux ``/proc``), or None."""
    fields = stat_fields(pid)
    return int(fields[19]) if fields else None


def _kill_pid(pid: int, started: int) -> None:
    if started and start_time(pid) != started:
        return  # gone, and the pid may belong to someone else now
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)


def serve(ctrl: socket.socket) -> None:
    """Watch what the driver names until its end closes; then kill it all and clean up."""
    selector = selectors.DefaultSelector()
    selector.register(ctrl, selectors.EVENT_READ)
    pidfds: dict[int, int] = {}  # pidfd -> pid
    pids: dict[int, int] = {}  # pid -> start time (no pidfds here)
    dirs: list[str] = []
    fd_size = array.array("i").itemsize
    try:
        while True:
            for key, _ in selector.select():
                if key.fileobj is not ctrl:
                    # A worker ended by itself: forget it.
                    selector.unregister(key.fd)
                    os.close(key.fd)
                    del pidfds[key.fd]
                    continue
                try:
                    message, ancillary, _, _ = ctrl.recvmsg(4096, socket.CMSG_SPACE(fd_size))
                except ConnectionResetError:
                    message, ancillary = b"", []
                fds = array.array("i")
                for level, kind, data in ancillary:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        fds.frombytes(data[: len(data) - len(data) % fd_size])
                if not message:
                    return  # the driver is gone
                verb, _, rest = message.decode().partition(" ")
                if verb == "W" and fds:
                    pidfds[fds[0]] = int(rest)
                    selector.register(fds[0], selectors.EVENT_READ)
                elif verb == "P":
                    pid_text, _, started_text = rest.partition(" ")
                    pids[int(pid_text)] = int(started_text or 0)
                elif verb == "D":
                    dirs.append(rest)
                for fd in fds[1:] if verb == "W" else fds:
                    os.close(fd)
    finally:
        for pidfd in pidfds:
            with contextlib.suppress(OSError):  # already gone
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        for pid, started in pids.items():
            _kill_pid(pid, started)
        for path in dirs:
            shutil.rmtree(path, ignore_errors=True)


def main() -> None:
    # Ctrl-C in the driver's terminal is the driver's to handle; the guardian acts on its end.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    ctrl = socket.socket(fileno=int(sys.argv[1]))
    serve(ctrl)


if __name__ == "__main__":
    main()
