"""Entry point of a worker process: ``python -m bigactor.supervisor``.

The local system starts this with two inherited descriptors:

* ``--listen-fd``: a listening socket the driver bound (so no port or path race);
* ``--lifeline-fd``: the read end of a pipe whose write end only the driver holds. The first
  line is the worker's JSON configuration (cluster key, address, ``sys.path``, ``sys.argv``,
  watchdog); end-of-file afterwards means the driver is gone, and the worker exits at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
from typing import Any


def _read_config(fd: int) -> dict[str, Any]:
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = os.read(fd, 65536)
        if not chunk:
            sys.exit("bigactor worker: the driver went away before sending the configuration")
        buf += chunk
    config: dict[str, Any] = json.loads(buf)
    return config


def _exit(code: int) -> None:
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


async def _serve(config: dict[str, Any], listen_fd: int, lifeline_fd: int) -> None:
    import trio

    from .._actor import cluster_var
    from .._cluster import Cluster
    from .._rpc import Link
    from ._supervisor import WatchdogConfig, Worker

    key = bytes.fromhex(config["key"])
    addr = config["addr"]

    async def lifeline() -> None:
        stream = trio.lowlevel.FdStream(lifeline_fd)
        while await stream.receive_some(4096):
            pass
        # The driver is gone (even SIGKILLed): no orphan outlives it.
        _exit(1)

    sock = trio.socket.from_stdlib_socket(socket.socket(fileno=listen_fd))
    listener = trio.SocketListener(sock)
    async with trio.open_nursery() as nursery:
        driver = Link()
        cluster = Cluster(nursery, key, driver=driver)
        cluster_var.set(cluster)
        worker = Worker(
            addr,
            key,
            nursery,
            exit=_exit,
            watchdog=WatchdogConfig(**config["watchdog"]),
            cluster=cluster,
            driver=driver,
        )
        nursery.start_soon(lifeline)
        await worker.serve(listener)


def run_worker(listen_fd: int, lifeline_fd: int) -> None:
    """Read the configuration from the lifeline and serve until the worker exits."""
    config = _read_config(lifeline_fd)
    sys.path[:] = config["sys_path"]
    sys.argv[:] = config["argv"] or [""]
    logging.basicConfig(
        level=config.get("log_level", logging.WARNING), format="%(levelname)s %(name)s: %(message)s"
    )
    import trio

    trio.run(_serve, config, listen_fd, lifeline_fd)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bigactor.supervisor")
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--lifeline-fd", type=int, required=True)
    args = parser.parse_args()
    run_worker(args.listen_fd, args.lifeline_fd)


if __name__ == "__main__":
    main()
