"""The fork server: a template worker that has already imported bigactor, trio and cloudpickle, and
forks a new worker on request in a few milliseconds (a fresh interpreter takes ~0.3 s here).

Run as ``python -m bigactor.supervisor._forkserver FD`` by the local system, with FD one end of
a ``SOCK_SEQPACKET`` socket pair. Each request is a JSON message ``{"id", "env", "cwd"}`` with
three descriptors attached (SCM_RIGHTS): the worker's listening socket, the read end of its
lifeline pipe, and the write end of its output pipe. The server answers ``{"id", "pid"}``, and
``{"exit": pid, "code": returncode}`` when it reaps a worker (a negative code is a signal, as in
``subprocess``). It never runs trio itself and starts no thread, so forking is safe; it exits
when the driver's end of the socket closes.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import random
import selectors
import signal
import socket
import sys
from typing import Any, NoReturn

from .._title import helper_title, set_title


def _child(ctrl: socket.socket, wake: int, request: dict[str, Any], fds: list[int]) -> NoReturn:
    code = 1
    try:
        listen_fd, lifeline_fd, out_fd, debug_fd = fds
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        ctrl.close()
        os.close(wake)
        os.setsid()
        os.dup2(out_fd, 1)
        os.dup2(out_fd, 2)
        os.close(out_fd)
        os.dup2(debug_fd, 0)  # the driver's debug socket (see _breakpoint)
        os.close(debug_fd)
        # What PYTHONUNBUFFERED gives a fresh worker: every line reaches the driver at once.
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True)
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        random.seed()
        from .__main__ import run_worker

        run_worker(listen_fd, lifeline_fd)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def serve(ctrl: socket.socket) -> None:
    """Fork workers as the driver asks, report their exits; return when the driver is gone."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    selector = selectors.DefaultSelector()
    selector.register(ctrl, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    while True:
        for key, _ in selector.select():
            if key.fileobj is ctrl:
                message, fds, _, _ = socket.recv_fds(ctrl, 1 << 20, 4)
                if not message:
                    return
                request = json.loads(message)
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    _child(ctrl, wake_r, request, fds)
                for fd in fds:
                    os.close(fd)
                ctrl.send(json.dumps({"id": request["id"], "pid": pid}).encode())
            else:
                os.read(wake_r, 4096)
                while True:
                    try:
                        pid, status = os.waitpid(-1, os.WNOHANG)
                    except ChildProcessError:
                        break
                    if pid == 0:
                        break
                    code = os.waitstatus_to_exitcode(status)
                    ctrl.send(json.dumps({"exit": pid, "code": code}).encode())


def main() -> None:
    ctrl = socket.socket(fileno=int(sys.argv[1]))
    # The point of the template: pay these imports once, not once per worker.
    import cloudpickle  # noqa: F401
    import psutil  # noqa: F401
    import trio  # noqa: F401

    from .. import _cluster  # noqa: F401
    from . import __main__, _heap, _serve, _supervisor  # noqa: F401

    # What every worker's first answer (Supervisor.info) needs, worked out once here: the
    # platform string runs `uname -p` in a subprocess, and the digest reads bigactor's sources.
    platform.platform()
    _supervisor.code_digest()
    _heap.settle()  # inherited by every worker it forks
    set_title(helper_title("fork server", os.getppid()))

    with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the driver is gone
        serve(ctrl)


if __name__ == "__main__":
    main()
