"""Entry point of a worker process: ``python -m bigactor.supervisor``.

The local system starts this with two inherited descriptors:

* ``--listen-fd``: a listening socket the driver bound (so no port or path race);
* ``--lifeline-fd``: the read end of a pipe whose write end only the driver holds. The first
  line is the worker's configuration (``bigactor._contract.WorkerConfig.to_json``: cluster key,
  address, ``sys.path``, ``sys.argv``, watchdog, log level); end-of-file afterwards means the
  driver is gone, and the worker exits at once.

The machine itself is :func:`bigactor.supervisor.serve_worker` over the plain transport.
"""

from __future__ import annotations

import logging
import os
import socket
import sys

from .._contract import WorkerConfig


def _read_config(fd: int) -> WorkerConfig:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = os.read(fd, 65536)
        if not chunk:
            sys.exit("bigactor worker: the driver went away before sending the configuration")
        buf += chunk
    try:
        return WorkerConfig.from_json(buf)
    except ValueError as exc:
        sys.exit(f"bigactor worker: {exc}")


def _exit(code: int) -> None:
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


async def _serve(config: WorkerConfig, listen_fd: int, lifeline_fd: int) -> None:
    import trio

    from .. import _rpc
    from ._serve import serve_worker

    async def lifeline() -> None:
        stream = trio.lowlevel.FdStream(lifeline_fd)
        while await stream.receive_some(4096):
            pass
        # The driver is gone (even SIGKILLed): no orphan outlives it.
        _exit(1)

    sock = trio.socket.from_stdlib_socket(socket.socket(fileno=listen_fd))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lifeline)
        await serve_worker(
            config,
            trio.SocketListener(sock),
            transport=_rpc.Transport(),
            exit=_exit,
            process_title=True,
            breakpoints=True,
        )


def run_worker(listen_fd: int, lifeline_fd: int) -> None:
    """Read the configuration from the lifeline and serve until the worker exits."""
    config = _read_config(lifeline_fd)
    if config.sys_path:
        sys.path[:] = config.sys_path
    sys.argv[:] = config.argv or [""]
    logging.basicConfig(level=config.log_level, format="%(levelname)s %(name)s: %(message)s")
    import trio

    from . import _heap
    from ._serve import serve_worker  # noqa: F401 - imported before the heap settles

    _heap.settle()
    trio.run(_serve, config, listen_fd, lifeline_fd)


def main() -> None:
    import argparse  # here: forked workers never parse a command line

    parser = argparse.ArgumentParser(prog="python -m bigactor.supervisor")
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--lifeline-fd", type=int, required=True)
    args = parser.parse_args()
    run_worker(args.listen_fd, args.lifeline_fd)


if __name__ == "__main__":
    main()
