"""i. TLS over TCP: bigactor's wire over mutual TLS, beside blocking ``ssl`` sockets.

The EC2 system runs bigactor's connections over TCP with mutual TLS (``bigactor._rpc._tls``,
certificates from a per-cluster CA made here, in the driver). Until that system's transport
is part of a cluster, this section drives the wire itself between the driver and a child
process: ``_rpc.connect`` through a ``TLSTransport`` (TLS, websocket, HMAC handshake) and a
``Connection`` calling an ``echo`` actor that ``_rpc.serve_stream`` serves from an
``ActorTable`` (what a worker runs; only the ``Machine`` layer is left out). Beside it, in the
same run:

* the floor: blocking ``ssl`` sockets on both ends (the child echoes in a thread; the driver
  calls from a thread), 4-byte length-prefixed frames, each echoed once whole;
* the same wire over plain TCP, which shows what TLS itself costs.

Figures: sequential no-op call, pipelined calls (one task per call), and the echo of the
largest bulk size. Targets (the EC2 issue): ≤ 400 µs, ≥ 15,000 calls/s, ≥ 500 MB/s at 64 MiB.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import trio

from bigactor import _codec, _pki, _rpc
from bigactor._rpc import Connection, Kind
from bigactor._rpc._tls import TLSTransport

from ._context import Bench
from ._figures import Figure, make_figure, scaled
from ._floors import REPO
from ._stats import summarize_latency_runs, summarize_values
from ._tls_server import HEADER, FrameEcho, recv_exactly, tune
from ._workloads import echo_rate, make_payload, pipelined, sequential

LIFETIME = 600.0
WINDOW = 1000  # the blocking floor's calls in flight: sent in a row, then read in a row
TARGETS = {
    "tls_sequential": ("<=", 400.0),
    "tls_pipelined": (">=", 15_000.0),
    "tls_echo_64MiB": (">=", 500.0),
}


class Child:
    """A ``_tls_server`` process, certified by this driver's CA."""

    def __init__(self, process: trio.Process, ports: list[int]) -> None:
        self.process = process
        self.ports = ports

    @classmethod
    async def start(cls, kind: str, ca: _pki.ClusterCA, hmac_key: bytes) -> Child:
        """Start a ``kind`` server, certify the key it made, wait until it listens."""
        argv = [sys.executable, "-m", "benchmarks._tls_server", kind, "--lifetime", str(LIFETIME)]
        process = await trio.lowlevel.open_process(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=str(REPO)
        )
        assert process.stdin is not None
        assert process.stdout is not None
        lines = _Lines(process.stdout)
        try:
            with trio.fail_after(30):
                word, public = (await lines.next()).split()
                if word != "KEY":
                    raise RuntimeError(f"TLS {kind} server did not start: {word!r}")
                cert = ca.issue(bytes.fromhex(public), ips=["127.0.0.1"], client=True, server=True)
                setup = {"ca": ca.cert_pem.decode(), "cert": cert.decode(), "hmac": hmac_key.hex()}
                await process.stdin.send_all(json.dumps(setup).encode() + b"\n")
                word, *ports = (await lines.next()).split()
                if word != "LISTENING":
                    raise RuntimeError(f"TLS {kind} server did not listen: {word!r}")
        except BaseException:
            process.kill()
            await process.wait()
            raise
        return cls(process, [int(p) for p in ports])

    async def aclose(self) -> None:
        """Close its stdin (it exits by itself); kill it if it lingers."""
        if self.process.stdin is not None:
            await self.process.stdin.aclose()
        with trio.move_on_after(5):
            await self.process.wait()
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


class _Lines:
    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buf = b""

    async def next(self) -> str:
        while b"\n" not in self._buf:
            chunk = await self._stream.receive_some(4096)
            if not chunk:
                raise RuntimeError(f"TLS server exited: {self._buf!r}")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()


class WireClient:
    """Calls to the child's ``echo`` actor over one authenticated connection."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    @classmethod
    async def open(
        cls, nursery: trio.Nursery, addr: str, key: bytes, transport: _rpc.Transport
    ) -> WireClient:
        """Dial ``addr`` through ``transport``, upgrade, authenticate, run (``_rpc.connect``)."""
        conn, _ = await _rpc.connect(nursery, addr, key, transport=transport)
        return cls(conn)

    async def _call(self, target: str, arg: Any) -> Any:
        kind, flags, data = await self.conn.call(_codec.encode_call(target, (arg,), {}))
        if kind != Kind.REPLY:
            raise RuntimeError(f"{target} failed on the TLS benchmark server")
        return _codec.decode(data, flags)

    async def ping(self, i: int) -> int:
        """The no-op call."""
        result: int = await self._call("echo.ping", i)
        return result

    async def echo(self, payload: bytes) -> bytes:
        """Echo a ``bytes`` argument."""
        result: bytes = await self._call("echo.echo", payload)
        return result


class FloorClient:
    """The blocking ``ssl`` client of the floor; every method runs in a worker thread."""

    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        raw = socket.create_connection(("127.0.0.1", port))
        tune(raw)
        self.sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
        self.frames = FrameEcho(self.sock)
        self._reply = bytearray(0)

    def sequential(self, n: int, warmup: int) -> list[float]:
        """Seconds per round trip of a 16-byte frame, ``n`` timed after ``warmup``."""
        message = HEADER.pack(16) + bytes(16)
        samples = []
        clock = time.perf_counter
        for i in range(warmup + n):
            t0 = clock()
            self.sock.sendall(message)
            self.frames.read()
            if i >= warmup:
                samples.append(clock() - t0)
        return samples

    def pipelined(self, n: int) -> float:
        """Calls per second: windows of ``WINDOW`` frames written in a row, then read."""
        t0 = time.perf_counter()
        done = 0
        while done < n:
            k = min(WINDOW, n - done)
            for i in range(done, done + k):
                self.sock.sendall(HEADER.pack(16) + i.to_bytes(16, "big"))
            for i in range(done, done + k):
                if int.from_bytes(self.frames.read(), "big") != i:
                    raise RuntimeError("the TLS floor echoed out of order")
            done += k
        return n / (time.perf_counter() - t0)

    def echo(self, payload: bytes) -> bytearray:
        """Send ``payload`` as one frame, read it back into a preallocated buffer."""
        if len(self._reply) != len(payload):
            self._reply = bytearray(len(payload))
        self.frames.write(payload)
        header = bytearray(HEADER.size)
        recv_exactly(self.sock, memoryview(header))
        recv_exactly(self.sock, memoryview(self._reply))
        return self._reply

    def close(self) -> None:
        """Close the connection."""
        self.sock.close()


@contextlib.asynccontextmanager
async def tls_setup() -> AsyncIterator[tuple[WireClient, WireClient, FloorClient]]:
    """Both servers, a wire client over TLS and one over TCP, and the floor's client."""
    ca = _pki.ClusterCA.create("bigactor benchmark")
    driver = ca.identity(client=True, server=False)
    hmac_key = secrets.token_bytes(32)
    transport = TLSTransport(driver, ca.cert_pem)
    floor = await Child.start("floor", ca, hmac_key)
    wire = await Child.start("wire", ca, hmac_key)
    try:
        async with trio.open_nursery() as nursery:
            tls = await WireClient.open(nursery, f"tls:127.0.0.1:{wire.ports[0]}", hmac_key, transport)
            tcp = await WireClient.open(nursery, f"tcp:127.0.0.1:{wire.ports[1]}", hmac_key, _rpc.Transport())
            context = _pki.client_context(driver, ca.cert_pem)
            client = await trio.to_thread.run_sync(FloorClient, floor.ports[0], context)
            try:
                yield tls, tcp, client
            finally:
                client.close()
                for c in (tls, tcp):
                    await c.conn.aclose()
                nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True):
            await wire.aclose()
            await floor.aclose()


def _target(figure: Figure, key: str) -> Figure:
    if key in TARGETS:
        op, value = TARGETS[key]
        got = figure["bigactor"]["median"]
        figure["target"] = {
            "op": op,
            "value": value,
            "met": bool(got <= value if op == "<=" else got >= value),
        }
    return figure


async def tls_over_tcp(bench: Bench) -> dict[str, Any]:
    """i. Sequential, pipelined and bulk calls over mutual TLS, beside their floors."""
    o = bench.options
    out: dict[str, Any] = {}
    floors = ("ssl", "blocking ssl sockets, child process echoing (the floor)")
    plain = ("tcp", "the same wire over plain TCP (what TLS adds)")
    async with tls_setup() as (tls, tcp, floor):
        seq: dict[str, list[list[float]]] = {"ssl": [], "tcp": [], "tls": []}
        pipe: dict[str, list[float]] = {"ssl": [], "tcp": [], "tls": []}
        for _ in range(o.runs):
            seq["ssl"].append(await trio.to_thread.run_sync(floor.sequential, o.seq_calls, o.seq_warmup))
            seq["tcp"].append(await sequential(tcp.ping, o.seq_calls, o.seq_warmup))
            seq["tls"].append(await sequential(tls.ping, o.seq_calls, o.seq_warmup))
        for _ in range(o.runs):
            pipe["ssl"].append(await trio.to_thread.run_sync(floor.pipelined, o.pipe_calls))
            pipe["tcp"].append(await pipelined([tcp.ping], o.pipe_calls))
            pipe["tls"].append(await pipelined([tls.ping], o.pipe_calls))

        def us(runs: list[list[float]]) -> dict[str, Any]:
            return scaled(summarize_latency_runs(runs), 1e6)

        out["tls_sequential"] = _target(
            make_figure(
                "tls_sequential",
                "i. TLS: sequential round trip, no-op call (bigactor's wire, mutual TLS)",
                "µs",
                "lower",
                us(seq["tls"]),
                [(*floors, us(seq["ssl"])), (*plain, us(seq["tcp"]))],
            ),
            "tls_sequential",
        )
        out["tls_pipelined"] = _target(
            make_figure(
                "tls_pipelined",
                f"i. TLS: pipelined, {o.pipe_calls:,} concurrent calls (mutual TLS)",
                "calls/s",
                "higher",
                summarize_values(pipe["tls"]),
                [
                    (floors[0], f"blocking ssl sockets, {WINDOW} in flight", summarize_values(pipe["ssl"])),
                    (*plain, summarize_values(pipe["tcp"])),
                ],
            ),
            "tls_pipelined",
        )
        size = max(o.bulk_sizes)
        payload = make_payload(size)
        rates: dict[str, list[float]] = {"ssl": [], "tcp": [], "tls": []}

        async def floor_echo(p: bytes) -> Any:
            return await trio.to_thread.run_sync(floor.echo, p)

        for _ in range(o.runs):
            rates["ssl"].append((await echo_rate(floor_echo, payload))[1])
            rates["tcp"].append((await echo_rate(tcp.echo, payload))[1])
            rates["tls"].append((await echo_rate(tls.echo, payload))[1])
        del payload
        name = f"{size >> 20}MiB"
        out[f"tls_echo_{name}"] = _target(
            make_figure(
                f"tls_echo_{name}",
                f"i. TLS: echo, {name[:-3]} MiB bytes argument (mutual TLS)",
                "MB/s",
                "higher",
                summarize_values(rates["tls"]),
                [
                    (
                        floors[0],
                        "blocking ssl sockets, one frame, preallocated buffers",
                        summarize_values(rates["ssl"]),
                    ),
                    (*plain, summarize_values(rates["tcp"])),
                ],
            ),
            f"tls_echo_{name}",
        )
    return out
