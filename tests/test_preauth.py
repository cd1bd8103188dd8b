"""Connections before they authenticate: bounded in number and time, rejected with bounded logs."""

from __future__ import annotations

import logging
import os
import socket

import psutil
import pytest
import trio
import trio.testing
from local_support import Echo

import bigactor
from bigactor import Services, _codec, _rpc
from bigactor._rpc._transport import HANDSHAKE_TIMEOUT, MAX_HANDSHAKES, WARNING_PERIOD
from bigactor._rpc._websocket import WebSocketClosed, client_upgrade


async def bad_handshake(cluster: bigactor.Cluster, addr: str) -> None:
    """Upgrade to a websocket at ``addr``, send garbage as HELLO, wait until the worker hangs up."""
    stream = await transport(cluster).open(addr)
    try:
        ws = await client_upgrade(stream, "bigactor")
        await ws.send_message(b"not a hello")
        with pytest.raises(WebSocketClosed):
            await ws.get_message()
    finally:
        await stream.aclose()


def transport(cluster: bigactor.Cluster) -> _rpc.Transport:
    """The transport ``cluster``'s machines are reached through (its system's)."""
    assert cluster.system is not None
    return cluster.system.transport


def rejections(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "bigactor.rpc" and r.levelno == level and "rejected a connection" in r.getMessage()
    ]


async def test_a_flood_of_bad_handshakes_logs_one_warning_a_minute(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The first rejection is a warning; the next ones are debug lines, summarised by the first
    warning after a quiet minute."""
    caplog.set_level(logging.DEBUG, logger="bigactor.rpc")
    [m] = await cluster.start(1, Services(echo=Echo()))
    for _ in range(100):
        await bad_handshake(cluster, m.addr)
    assert len(rejections(caplog, logging.WARNING)) == 1
    assert len(rejections(caplog, logging.DEBUG)) == 99

    await trio.sleep(WARNING_PERIOD - 1)
    await bad_handshake(cluster, m.addr)
    assert len(rejections(caplog, logging.WARNING)) == 1
    await trio.sleep(1)
    await bad_handshake(cluster, m.addr)
    warnings = rejections(caplog, logging.WARNING)
    assert len(warnings) == 2
    assert "did not open with the bigactor handshake (and 100 more in the last 60 s" in warnings[1]
    assert await m.call("Supervisor.ping", 3) == 3


async def test_a_silent_connection_is_closed_after_the_handshake_timeout(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """A peer that connects and says nothing is hung up on after exactly HANDSHAKE_TIMEOUT."""
    [m] = await cluster.start(1, Services(echo=Echo()))
    start = trio.current_time()
    stream = await transport(cluster).open(m.addr)
    assert await stream.receive_some() == b""
    assert trio.current_time() - start == HANDSHAKE_TIMEOUT
    await stream.aclose()


async def test_one_connection_too_many_closes_the_oldest_at_once(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock
) -> None:
    """Beyond MAX_HANDSHAKES silent connections, each new one closes the oldest at once (no
    virtual time passes), and a client that handshakes still gets through."""
    [m] = await cluster.start(1, Services(echo=Echo()))
    start = trio.current_time()
    idle = [await transport(cluster).open(m.addr) for _ in range(MAX_HANDSHAKES + 2)]
    for stream in idle[:2]:
        assert await stream.receive_some() == b""
    assert trio.current_time() == start
    assert await m.call("Supervisor.ping", 1) == 1
    async with trio.open_nursery() as nursery:
        conn, _ = await _rpc.connect(
            nursery, m.addr, cluster._key, transport=transport(cluster)
        )  # pushes idle[2] out
        _, _, data = await conn.call(_codec.encode_call("Supervisor.ping", (2,), {}))
        assert _codec.loads(data) == 2
        await conn.aclose()
    assert await idle[2].receive_some() == b""
    assert trio.current_time() == start
    for stream in idle:
        await stream.aclose()


def _closed_by_peer(stream: trio.SocketStream) -> bool:
    """Whether the other end has closed ``stream`` (a read would return end of file now)."""
    with socket.socket(fileno=os.dup(stream.socket.fileno())) as sock:
        try:
            return sock.recv(1, socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False


@pytest.mark.slow
async def test_idle_connections_leave_a_real_worker_bounded_and_serving() -> None:
    """Hundreds of connections that never handshake leave the worker's descriptors bounded
    (the oldest closed at once), and both old and new clients still call it."""
    async with bigactor.open_cluster() as cluster:
        [m] = await cluster.start(1, Services(echo=Echo()))
        worker = psutil.Process((await m.info()).pid)
        before = worker.num_fds()
        path = m.addr.partition(":")[2]
        idle: list[trio.SocketStream] = []
        try:
            for _ in range(4 * MAX_HANDSHAKES):
                # One by one, so that `finally` closes those opened if a later one fails.
                idle.append(await trio.open_unix_socket(path))  # noqa: PERF401
            async with trio.open_nursery() as nursery:
                # Accepted after every idle connection: once it has its reply, the worker has
                # seen them all.
                conn, _ = await _rpc.connect(nursery, m.addr, cluster._key, transport=_rpc.Transport())
                _, _, data = await conn.call(_codec.encode_call("echo.echo", (7,), {}))
                assert _codec.loads(data) == 7
                during = worker.num_fds()
                closed = [_closed_by_peer(s) for s in idle]
                await conn.aclose()
            # At most MAX_HANDSHAKES idle ones, one of them pushed out by the new client.
            assert during <= before + MAX_HANDSHAKES, (before, during)
            assert all(closed[: len(idle) - MAX_HANDSHAKES])
            assert await m.call("echo.echo", 1) == 1
        finally:
            for stream in idle:
                await stream.aclose()
