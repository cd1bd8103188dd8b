"""The process floors: what starting a process and noticing its death cost on the bare stack.

* ``spawn_pass``: ``n`` x ``sys.executable -c pass`` at once, from spawn to the last exit.
* ``connect_back``: ``n`` fresh interpreters at once, each importing trio and cloudpickle (what a
  worker needs before it can serve) and connecting back over TCP; the time until
  every one of them has said hello. Each reports its RSS then, the floor of an idle worker.
* ``fork_back``: one fresh interpreter imports trio and cloudpickle, then forks ``n`` children that
  connect back: the bare cost of starting workers from a preloaded template (a forkserver).
* ``kill_to_eof``: a child connected over TCP is killed with SIGKILL; the time until the
  parent's trio socket sees end-of-file.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import trio

_CONNECT_BACK = """\
import socket, sys
import trio, cloudpickle
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
rss = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS:"))
s.sendall(rss.to_bytes(8, "big"))
s.recv(1)
"""

_FORK_BACK = """\
import os, socket, sys
import trio, cloudpickle
for _ in range(int(sys.argv[2])):
    if os.fork() == 0:
        s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
        s.sendall(b"r")
        s.recv(1)
        os._exit(0)
"""

_WAIT_FOR_DEATH = """\
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
s.sendall(b"r")
s.recv(1)
"""


async def spawn_pass(n: int = 1) -> float:
    """Seconds for ``n`` x ``sys.executable -c pass``, started at once, to start and exit."""
    t0 = time.perf_counter()
    processes = [await trio.lowlevel.open_process([sys.executable, "-c", "pass"]) for _ in range(n)]
    for process in processes:
        await process.wait()
    return time.perf_counter() - t0


async def _read_exactly(stream: trio.SocketStream, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = await stream.receive_some(n - len(data))
        if not chunk:
            raise EOFError("child closed before saying hello")
        data += chunk
    return data


async def connect_back(n: int) -> tuple[float, list[int]]:
    """Start ``n`` importing children at once; (seconds until all connected back, RSS bytes)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    rss: list[int] = []
    streams: list[trio.SocketStream] = []
    processes: list[trio.Process] = []
    try:
        t0 = time.perf_counter()
        with trio.fail_after(60):
            for _ in range(n):
                argv = [sys.executable, "-c", _CONNECT_BACK, str(port)]
                processes.append(await trio.lowlevel.open_process(argv, stdin=subprocess.DEVNULL))
            for _ in range(n):
                stream = await listeners[0].accept()
                streams.append(stream)
                rss.append(int.from_bytes(await _read_exactly(stream, 8), "big") * 1024)
        elapsed = time.perf_counter() - t0
    finally:
        for stream in streams:
            await stream.aclose()
        await listeners[0].aclose()
        for process in processes:
            with trio.move_on_after(10):
                await process.wait()
            if process.returncode is None:
                process.kill()
                await process.wait()
    return elapsed, rss


async def fork_back(n: int) -> float:
    """Seconds until ``n`` children forked from a fresh trio+cloudpickle template have connected back."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    streams: list[trio.SocketStream] = []
    argv = [sys.executable, "-c", _FORK_BACK, str(port), str(n)]
    try:
        t0 = time.perf_counter()
        with trio.fail_after(60):
            template = await trio.lowlevel.open_process(argv, stdin=subprocess.DEVNULL)
            for _ in range(n):
                stream = await listeners[0].accept()
                streams.append(stream)
                await _read_exactly(stream, 1)
        elapsed = time.perf_counter() - t0
        await template.wait()
    finally:
        for stream in streams:
            await stream.aclose()  # the children read EOF and exit
        await listeners[0].aclose()
    return elapsed


async def kill_to_eof() -> float:
    """Seconds from SIGKILL of a connected child until the parent's socket reads end-of-file."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    argv = [sys.executable, "-c", _WAIT_FOR_DEATH, str(port)]
    process = await trio.lowlevel.open_process(argv, stdin=subprocess.DEVNULL)
    try:
        with trio.fail_after(30):
            stream = await listeners[0].accept()
            await _read_exactly(stream, 1)
            t0 = time.perf_counter()
            os.kill(process.pid, signal.SIGKILL)
            try:
                while await stream.receive_some(1024):
                    pass
            except trio.BrokenResourceError:
                pass  # a reset instead of a clean EOF: still the death seen
            elapsed = time.perf_counter() - t0
            await stream.aclose()
    finally:
        await listeners[0].aclose()
        if process.returncode is None:
            process.kill()
        await process.wait()
    return elapsed
