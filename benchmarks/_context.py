"""What a benchmark run shares: its options, the floor servers and connections, the cluster.

Everything is started lazily, the first time a section asks for it, so ``--only`` pays only for
what it uses; :meth:`Bench.aclose` stops it all.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from typing import Any

import trio

import bigactor

from ._bigactor import Echo, start_echo_machines
from ._floor_server import WS_MAX_MESSAGE, WS_RECEIVE_BUFFER
from ._floors import FloorServer, TcpConn, WsConn

SERVER_LIFETIME = 600.0  # floor servers exit by themselves after this many seconds
MiB = 1 << 20


@dataclasses.dataclass(frozen=True)
class Options:
    """Sizes of a run. The defaults are the full run; :meth:`quick` is a smoke pass."""

    runs: int = 5
    seq_calls: int = 1000
    seq_warmup: int = 100
    pipe_calls: int = 10_000
    pipe_actors: tuple[int, ...] = (1, 4)
    bulk_sizes: tuple[int, ...] = (1 * MiB, 64 * MiB)
    cold_sizes: tuple[int, ...] = (1, 4)
    a2a_calls: int = 1000
    idle_workers: int = 2
    scale_sizes: tuple[int, ...] = (1, 4, 16, 64)
    scale_seq_calls: int = 300
    scale_pipe_calls: int = 10_000
    scale_pipe_calls_large: int = 5_000  # from 64 machines on: fewer calls (the costly step)
    scale_cold: tuple[int, ...] = (16, 64)  # cold starts of larger clusters (64: the issue's ≤ 0.5 s)
    sim_sizes: tuple[int, ...] = (10, 100, 1000)  # section 6: simulated machines
    sim_idle_seconds: float = 10.0
    array_bytes: int = 100_000_000  # the large numpy array of figures g and h
    codec_seconds: float = 0.2  # figure g: each measurement repeats for at least this long
    echo_seconds: float = 0.3  # figure h: each side calls for at least this long per run

    @classmethod
    def quick(cls) -> Options:
        """A fast smoke pass: fewer runs and calls, smaller payloads and clusters."""
        return cls(
            runs=3,
            seq_calls=200,
            seq_warmup=20,
            pipe_calls=2000,
            bulk_sizes=(1 * MiB, 8 * MiB),
            a2a_calls=200,
            idle_workers=1,
            scale_sizes=(1, 4),
            scale_seq_calls=100,
            scale_pipe_calls=2000,
            scale_pipe_calls_large=1000,
            scale_cold=(4,),
            sim_sizes=(10, 100),
            sim_idle_seconds=1.0,
            array_bytes=8_000_000,
            codec_seconds=0.02,
            echo_seconds=0.03,
        )


class LogCollector(logging.Handler):
    """Keeps bigactor's warnings and errors for the report instead of printing them."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(f"{record.levelname} {record.name}: {record.getMessage()}")


class Bench:
    """The shared state of one benchmark run."""

    def __init__(self, options: Options, nursery: trio.Nursery) -> None:
        self.options = options
        self.nursery = nursery
        self.notes: dict[str, Any] = {}
        self._servers: dict[str, list[FloorServer]] = {"tcp": [], "ws": []}
        self._tcp: list[TcpConn] = []
        self._ws: list[WsConn] = []
        self._ws_raw: list[Any] = []
        self._cluster_stack = contextlib.AsyncExitStack()
        self._cluster: bigactor.Cluster | None = None
        self._echo: list[tuple[bigactor.Machine, bigactor.ActorHandle]] = []

    async def _servers_of(self, kind: str, k: int) -> list[FloorServer]:
        servers = self._servers[kind]
        missing = k - len(servers)
        if missing > 0:
            started: list[FloorServer] = []

            async def one() -> None:
                started.append(await FloorServer.start(kind, SERVER_LIFETIME))

            async with trio.open_nursery() as nursery:  # all at once: 64 take seconds one by one
                for _ in range(missing):
                    nursery.start_soon(one)
            servers += started
        return servers[:k]

    async def tcp(self, k: int = 1) -> list[TcpConn]:
        """``k`` connections to ``k`` raw trio TCP echo servers (one each)."""
        servers = await self._servers_of("tcp", k)
        while len(self._tcp) < k:
            self._tcp.append(await TcpConn.connect(servers[len(self._tcp)].port))
        return self._tcp[:k]

    async def ws(self, k: int = 1) -> list[WsConn]:
        """``k`` connections to ``k`` trio-websocket echo servers (one each)."""
        from trio_websocket import connect_websocket_url

        servers = await self._servers_of("ws", k)
        while len(self._ws) < k:
            ws = await connect_websocket_url(
                self.nursery,
                f"ws://127.0.0.1:{servers[len(self._ws)].port}/",
                max_message_size=WS_MAX_MESSAGE,
                receive_buffer_size=WS_RECEIVE_BUFFER,
            )
            self._ws_raw.append(ws)
            self._ws.append(WsConn(ws))
        return self._ws[:k]

    async def cluster(self) -> bigactor.Cluster:
        """The shared cluster on the local system (opened on first use)."""
        if self._cluster is None:
            self._cluster = await self._cluster_stack.enter_async_context(bigactor.open_cluster())
        return self._cluster

    async def echo_actors(self, k: int) -> list[tuple[bigactor.Machine, bigactor.ActorHandle]]:
        """``k`` Echo actors, each spawned on its own machine of the shared cluster."""
        cluster = await self.cluster()
        if len(self._echo) < k:
            machines = await start_echo_machines(cluster, k - len(self._echo))
            for m in machines:
                self._echo.append((m, await cluster.options(machine=m).spawn(Echo)))
        return self._echo[:k]

    async def close_cluster(self) -> None:
        """Shut the shared cluster down (before the scaling runs, which bring their own)."""
        self._echo.clear()
        self._cluster = None
        await self._cluster_stack.aclose()

    async def close_floors(self) -> None:
        """Close the floor connections and stop the floor servers."""
        for conn in self._tcp:
            await conn.aclose()
        for ws in self._ws_raw:
            with trio.move_on_after(5):
                await ws.aclose()
        self._tcp.clear()
        self._ws.clear()
        self._ws_raw.clear()
        for servers in self._servers.values():
            for server in servers:
                await server.aclose()
            servers.clear()

    async def aclose(self) -> None:
        """Stop everything this run started.

        The cluster is closed outside any new cancel scope (it was entered outside one, and
        ``open_cluster`` shields its own shutdown); the floors are closed shielded.
        """
        await self.close_cluster()
        with trio.CancelScope(shield=True):
            await self.close_floors()
