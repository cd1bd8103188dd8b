"""The local system's wire with real worker processes: ordering, bad input, security, large
values, remote errors and actor-to-actor calls over real Unix sockets."""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import secrets
import shutil
import stat
from pathlib import Path
from typing import Any

import psutil
import pytest
import trio
import trio.testing
import trio_websocket
from local_support import (
    Bulk,
    Counter,
    CustomError,
    Echo,
    Failing,
    MiB,
    Recorder,
    Relay,
    call_killed_midway,
    socket_dir,
    wait_for_line,
)
from trio_websocket import ConnectionClosed

import bigactor
from bigactor import MachineLost, RemoteError, Services, State, _codec, _rpc
from bigactor._rpc import Kind, _auth, _frames

pytestmark = pytest.mark.slow

# -- ordering and concurrency -------------------------------------------------------------------


async def test_sync_calls_from_one_caller_run_in_order_one_at_a_time() -> None:
    """Sync calls from one caller run in the order sent and never two at once."""
    n = 200
    async with bigactor.open_cluster() as cluster:
        recorder = await cluster.spawn(Recorder)
        async with trio.open_nursery() as nursery:
            for i in range(n):
                nursery.start_soon(recorder.append, i)
                # Call i is queued on the connection before call i+1 is issued.
                await trio.testing.wait_all_tasks_blocked()
        assert await recorder.appended() == list(range(n))

        async with trio.open_nursery() as nursery:
            for _ in range(20):
                nursery.start_soon(recorder.slow)
        assert await recorder.most_at_once() == 1


async def test_thousand_concurrent_calls_each_get_their_own_reply() -> None:
    """1,000 concurrent calls on one connection each return their own reply."""
    async with bigactor.open_cluster() as cluster:
        echo = await cluster.spawn(Echo)
        replies: dict[int, Any] = {}

        async def one(i: int) -> None:
            replies[i] = await echo.echo(i)

        async def one_sync(i: int) -> None:
            replies[-i - 1] = await echo.echo_sync(-i - 1)

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for i in range(1000):
                    nursery.start_soon(one, i)
                    nursery.start_soon(one_sync, i)
        assert replies == {i: i for i in range(-1000, 1000)}


# -- bad input ----------------------------------------------------------------------------------


async def test_malformed_frames_close_that_connection_only_with_a_logged_reason() -> None:
    """Garbage and truncated frames close the offending connection; the worker logs why and serves on."""
    truncated = _frames.HEADER.pack(Kind.CALL, 0, 1, 100) + b"x" * 10
    unknown_kind = _frames.HEADER.pack(99, 0, 1, 0)
    # A call announcing one out-of-band buffer of 10 bytes.
    oob = (1).to_bytes(4, "little") + (10).to_bytes(8, "little") + b"pickle"
    oob_frame = _frames.HEADER.pack(Kind.CALL, _frames.OOB, 1, len(oob)) + oob
    # One announcing 2**64 - 1 bytes (it crashed the reader with OverflowError).
    huge = (1).to_bytes(4, "little") + (2**64 - 1).to_bytes(8, "little") + b"pickle"
    huge_frame = _frames.HEADER.pack(Kind.CALL, _frames.OOB, 1, len(huge)) + huge
    cases = [
        ([b"garbage"], "truncated frame header"),
        ([truncated], "payload of 100 bytes, 10 left"),
        ([unknown_kind], "unknown frame kind 99"),
        ([oob_frame + _frames.HEADER.pack(Kind.CANCEL, 0, 1, 0)], "must end its message"),
        ([oob_frame, b"short"], "out-of-band buffer of 5 bytes, 10 announced"),
        ([huge_frame], f"buffers of {2**64 - 1} bytes announced"),
    ]
    async with bigactor.open_cluster(log_level=logging.WARNING) as cluster:
        [m] = await cluster.start(1, Services(echo=Echo()))
        assert await m.call("echo.echo", 1) == 1
        for messages, reason in cases:
            async with trio.open_nursery() as nursery:
                conn, _ = await _rpc.connect(nursery, m.addr, cluster._key, transport=_rpc.Transport())
                for message in messages:
                    await conn._ws.send_message(message)
                with trio.fail_after(5):
                    await conn._done.wait()
                assert conn.broken
                assert isinstance(conn.error, bigactor.TransportError)
                assert "1002" in str(conn.error)  # websocket close code: protocol error
                assert reason in str(conn.error)
                await conn.aclose()
                nursery.cancel_scope.cancel()
            with trio.fail_after(5):
                line = await wait_for_line(m, "closing connection", reason)
            assert "WARNING" in line
            assert await m.call("echo.echo", messages) == messages
        assert m.state == State.RUNNING


async def test_oversized_message_before_authentication_closes_that_connection_only() -> None:
    """Before a peer authenticates, a message over 64 KiB closes its connection (code 1009)."""
    async with bigactor.open_cluster() as cluster:
        [m] = await cluster.start(1, Services(echo=Echo()))
        assert await m.call("echo.echo", 1) == 1
        stream = await trio.open_unix_socket(m.addr.partition(":")[2])
        async with stream, trio.open_nursery() as nursery:
            ws = await trio_websocket.wrap_client_stream(nursery, stream, "bigactor", "/")
            with contextlib.suppress(ConnectionClosed):  # the worker hangs up mid-message
                await ws.send_message(_auth.MAGIC + bytes(MiB))
            with trio.fail_after(5), pytest.raises(ConnectionClosed) as info:
                await drain(ws)
            assert info.value.reason.code == 1009  # websocket close code: message too big
            await ws.aclose()
        assert await m.call("echo.echo", 2) == 2


async def test_bad_calls_get_clear_errors_and_the_connection_serves_on() -> None:
    """Undecodable payloads and unknown services or methods raise clear errors; calls go on."""
    async with bigactor.open_cluster() as cluster:
        [m] = await cluster.start(1, Services(echo=Echo()))
        with trio.fail_after(30):
            assert await m.wait(State.RUNNING) == State.RUNNING
        async with trio.open_nursery() as nursery:
            conn, _ = await _rpc.connect(nursery, m.addr, cluster._key, transport=_rpc.Transport())
            kind, _, data = await conn.call(_codec.Payload([b"\x80\x05this is not a pickle"], 0))
            assert kind == Kind.ERROR
            assert isinstance(_rpc.decode_error(data, m.addr), bigactor.CodecError)
            kind, _, data = await conn.call(_codec.encode_call("echo.echo", (5,), {}))
            assert kind == Kind.REPLY
            assert _codec.loads(data) == 5
            assert not conn.broken
            await conn.aclose()
            nursery.cancel_scope.cancel()
        with pytest.raises(bigactor.ServiceNotFound, match="nope"):
            await m.call("nope.echo", 1)
        with pytest.raises(bigactor.ServiceNotFound, match="missing"):
            await m.call("echo.missing", 1)
        assert await m.call("echo.echo", 3) == 3


class _CreatesFile:
    """Unpickling this creates the file at ``path``: the payload an attacker would send."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


async def _send_unauthenticated(addr: str, *messages: bytes, hello: bool = False) -> None:
    """Open a raw websocket to ``addr``, optionally send a genuine HELLO (without knowing the
    key), then send ``messages``; return once the worker has closed the connection."""
    stream = await trio.open_unix_socket(addr.partition(":")[2])
    async with stream, trio.open_nursery() as nursery:
        ws = await trio_websocket.wrap_client_stream(nursery, stream, "bigactor", "/")
        if hello:
            await ws.send_message(_auth.MAGIC + secrets.token_bytes(_auth.NONCE) + b"{}")
            await ws.get_message()  # the worker's WELCOME
        with contextlib.suppress(ConnectionClosed):  # the worker may hang up before the last
            for message in messages:
                await ws.send_message(message)
        with trio.fail_after(5), pytest.raises(ConnectionClosed):
            await drain(ws)
        await ws.aclose()


async def drain(ws: trio_websocket.WebSocketConnection) -> None:
    """Read messages until the connection closes (raises ConnectionClosed)."""
    while True:
        await ws.get_message()


async def test_unauthenticated_peer_gets_nothing_deserialised(tmp_path: Path) -> None:
    """A peer without the cluster key is refused and nothing it sends is unpickled."""
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_CreatesFile(control))).close()
    assert control.exists()  # the payload is live: unpickling it creates the file
    target = tmp_path / "pwned"
    evil = pickle.dumps(_CreatesFile(target))
    evil_call = b"".join(p for frame in _frames.encode(Kind.CALL, 1, evil) for p in frame)

    async with bigactor.open_cluster() as cluster:
        [m] = await cluster.start(1, Services(echo=Echo()))
        assert await m.call("echo.echo", 1) == 1

        async with trio.open_nursery() as nursery:
            with pytest.raises(bigactor.TransportError, match="authentication"):
                await _rpc.connect(nursery, m.addr, secrets.token_bytes(32), transport=_rpc.Transport())

        await _send_unauthenticated(m.addr, evil)
        await _send_unauthenticated(m.addr, evil_call)
        await _send_unauthenticated(m.addr, evil, evil_call, hello=True)
        with trio.fail_after(5):
            await wait_for_line(m, "rejected a connection")

        assert await m.call("echo.echo", 2) == 2
        assert not target.exists()
        assert m.state == State.RUNNING

        # Only the driver's user can reach the socket, and the key is in no argv or environment.
        mode = os.stat(socket_dir(m)).st_mode
        assert stat.S_IMODE(mode) == 0o700
        worker = psutil.Process((await m.info()).pid)
        key = cluster._key.hex()
        assert not any(key in arg for arg in worker.cmdline())
        assert not any(key in value for value in worker.environ().values())


# -- large values -------------------------------------------------------------------------------


async def test_large_streams_and_arguments_arrive_intact() -> None:
    """A 32 MiB stream arrives whole and in order, an empty stream ends at once, 32 MiB echoes."""
    async with bigactor.open_cluster() as cluster:
        bulk = await cluster.spawn(Bulk)
        with trio.fail_after(60):
            chunks = [chunk async for chunk in bulk.chunks(32, MiB)]
        assert [len(c) for c in chunks] == [MiB] * 32
        assert all(c == bytes([i]) * MiB for i, c in enumerate(chunks))

        with trio.fail_after(60):
            chunks = [chunk async for chunk in bulk.chunks_sync(32, MiB)]
        assert all(c == bytes([i]) * MiB for i, c in enumerate(chunks))
        assert len(chunks) == 32

        with trio.fail_after(5):
            assert [x async for x in bulk.nothing()] == []

        data = os.urandom(32 * MiB)
        with trio.fail_after(60):
            assert await bulk.echo(data) == data


# -- remote errors ------------------------------------------------------------------------------


async def test_remote_exceptions_keep_their_type_and_traceback() -> None:
    """Remote exceptions arrive as their own type and RemoteError, with the remote traceback."""
    async with bigactor.open_cluster() as cluster:
        [m] = await cluster.start(1, Services(failing=Failing()))

        with pytest.raises(KeyError) as key_info:
            await m.call("failing.key_error")
        exc = key_info.value
        assert isinstance(exc, RemoteError)
        assert exc.args == ("missing-key",)
        assert "key_error" in exc.remote_traceback
        assert "raise KeyError" in exc.remote_traceback
        assert any("key_error" in note and "missing-key" in note for note in exc.__notes__)

        with pytest.raises(CustomError) as custom_info:
            await m.call("failing.custom", 7)
        assert isinstance(custom_info.value, RemoteError)
        assert custom_info.value.code == 7
        assert "raise CustomError(code)" in custom_info.value.remote_traceback


async def test_remote_transport_error_is_not_a_local_transport_error() -> None:
    """A TransportError raised by a remote method is a non-retriable RemoteError; a kill is not remote."""
    async with bigactor.open_cluster() as cluster:
        [m] = await cluster.start(1, Services(failing=Failing()))
        with pytest.raises(RemoteError) as info:
            await m.call("failing.transport_error")
        assert "made up by the remote method" in str(info.value)
        # The method ran: re-sending it is not safe, and the machine is fine.
        assert not info.value.retriable
        assert m.state == State.RUNNING
        assert await m.call("failing.ping") == "pong"
        with trio.fail_after(3), pytest.raises(RemoteError):
            await m.retry_call("failing.transport_error")
        assert await m.call("failing.transport_error_count") == 2

        exc = await call_killed_midway(m, "failing")
        assert isinstance(exc, MachineLost)
        assert not isinstance(exc, RemoteError)


# -- actor to actor -----------------------------------------------------------------------------


async def test_handle_passed_to_another_actor_is_callable_there() -> None:
    """An actor handle passed to an actor on another machine calls the first actor from there."""
    async with bigactor.open_cluster() as cluster:
        counter = await cluster.spawn(Counter, 10)
        relay = await cluster.spawn(Relay)
        assert bigactor.machine_of(counter) is not bigactor.machine_of(relay)
        total, relay_pid = await relay.add_via(counter, 5)
        assert total == 15
        assert relay_pid == (await bigactor.machine_of(relay).info()).pid
        assert relay_pid != (await bigactor.machine_of(counter).info()).pid
        assert await counter.total() == 15


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a process as another user")
@pytest.mark.skipif(not shutil.which("python3", path="/usr/bin:/bin"), reason="needs a system python3")
async def test_another_local_user_cannot_reach_a_worker() -> None:
    """A process of another user cannot even connect to a worker's socket."""
    async with bigactor.open_cluster() as cluster:
        [m] = await cluster.start(1, Services(echo=Echo()))
        path = m.addr.removeprefix("unix:")
        probe = (
            "import socket, sys\n"
            "s = socket.socket(socket.AF_UNIX)\n"
            "try:\n"
            "    s.connect(sys.argv[1])\n"
            "except PermissionError:\n"
            "    print('refused')\n"
            "else:\n"
            "    print('connected')\n"
        )
        out = await trio.run_process(
            # The system interpreter: the driver's may sit where "nobody" cannot read.
            [shutil.which("python3", path="/usr/bin:/bin"), "-I", "-c", probe, path],
            user="nobody",
            capture_stdout=True,
        )
        assert out.stdout.decode().strip() == "refused"
        assert await m.call("echo.echo", 1) == 1


async def test_large_buffers_keep_their_types_and_survive_later_messages() -> None:
    """bytes, bytearray and memoryview round-trip out of band with their types; a received
    memoryview (a view of its message) is not overwritten by the messages after it."""
    async with bigactor.open_cluster() as cluster:
        bulk = await cluster.spawn(Bulk)
        a = bytes(range(256)) * (4 * MiB // 256)
        b = bytes(reversed(a))
        back = await bulk.echo(a)
        assert type(back) is bytes
        assert back == a
        array = await bulk.echo(bytearray(b))
        assert type(array) is bytearray
        assert array == b
        view = await bulk.echo(memoryview(a))
        assert isinstance(view, memoryview)
        assert view == memoryview(a)
        for data in (b, a, b):  # reuse of receive buffers must not touch a live view
            assert await bulk.echo(data) == data
        assert view == memoryview(a)
