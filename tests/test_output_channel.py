"""A remote worker's stdout and stderr reach the driver over its authenticated connection, with
the same ``addr: `` prefixes as a local worker's, up to the last line before a clean shutdown;
a driver that does not read costs the worker a bounded buffer, never a blocked write."""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import trio
from channel_support import RemoteLikeSystem, create, driver_sys_path

import bigactor
from bigactor import _codec, _rpc
from bigactor._contract import SYNC_MARKER, WorkerConfig
from bigactor._rpc import Kind

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


class Talker:
    """Prints in every way a program does."""

    def speak(self, n: int) -> int:
        for i in range(n):
            print(f"line {i} from stdout")
        sys.stderr.write("a line from stderr\n")
        return n

    async def speak_async(self) -> None:
        print("printed on the worker's loop")

    def from_c(self) -> None:
        os.write(1, b"written to fd 1 directly\n")
        os.write(2, b"written to fd 2 directly\n")

    def last_words(self) -> None:
        sys.stdout.write("last words without a newline")

    def flood(self, size: int) -> int:
        line = "x" * 1023 + "\n"
        for _ in range(size // 1024):
            sys.stdout.write(line)
        return size


class Seen:
    """What the driver wrote to its stderr so far (capsys), kept across reads."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self._capsys = capsys
        self.text = ""

    def read(self) -> str:
        self.text += self._capsys.readouterr().err
        return self.text

    async def wait_for(self, line: str) -> None:
        # The worker sends no event when its output reaches the driver's stderr: poll it.
        with trio.fail_after(10):
            while line not in self.read().splitlines():  # noqa: ASYNC110
                await trio.sleep(0.02)


async def test_print_and_stderr_of_a_remote_worker_reach_the_driver_prefixed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """print, sys.stderr.write and writes to fds 1 and 2 from an actor reach the driver's
    stderr while the machine runs, each line once, prefixed with the machine's address; none
    of it goes where the worker's process was started to write."""
    seen = Seen(capsys)
    system = RemoteLikeSystem(directory=tmp_path)
    async with bigactor.open_cluster(system) as cluster:
        talker = await cluster.spawn(Talker)
        addr = bigactor.machine_of(talker).addr
        assert await talker.speak(3) == 3
        await talker.speak_async()
        await talker.from_c()
        await seen.wait_for(f"{addr}: written to fd 2 directly")
    lines = seen.read().splitlines()
    expected = [
        *(f"{addr}: line {i} from stdout" for i in range(3)),
        f"{addr}: a line from stderr",
        f"{addr}: printed on the worker's loop",
        f"{addr}: written to fd 1 directly",
        f"{addr}: written to fd 2 directly",
    ]
    assert [line for line in lines if line in expected] == expected  # in order, each once
    assert not any(SYNC_MARKER in line for line in lines)
    log = system.instances[0].log.read_text()
    assert "from stdout" not in log
    assert "directly" not in log


async def test_output_right_before_a_clean_shutdown_is_not_lost(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Thousands of lines printed just before the cluster closes, and a last line with no
    newline, all reach the driver's stderr before open_cluster returns."""
    seen = Seen(capsys)
    system = RemoteLikeSystem(directory=tmp_path)
    async with bigactor.open_cluster(system) as cluster:
        talker = await cluster.spawn(Talker)
        machine = bigactor.machine_of(talker)
        addr = machine.addr
        await talker.speak(5000)
        await talker.last_words()
    lines = seen.read().splitlines()
    mine = [line for line in lines if line.startswith(f"{addr}: line ")]
    assert mine == [f"{addr}: line {i} from stdout" for i in range(5000)]
    assert lines.count(f"{addr}: last words without a newline") == 1
    assert machine.error is not None
    assert "shut down" in str(machine.error)
    assert machine.output.dropped_lines == 0


WORKER = textwrap.dedent(
    """
    import socket, sys
    import trio
    from bigactor import _rpc
    from bigactor._contract import WorkerConfig
    from bigactor.supervisor import serve_worker

    async def main():
        sock = trio.socket.from_stdlib_socket(socket.socket(fileno=int(sys.argv[1])))
        config = WorkerConfig.from_json(sys.argv[2])
        await serve_worker(
            config, trio.SocketListener(sock), transport=_rpc.Transport(), exit=sys.exit,
            capture_output=True,
        )

    trio.run(main)
    """
)


async def test_a_driver_that_does_not_read_costs_the_worker_a_bounded_buffer(tmp_path: Path) -> None:
    """A worker that prints 4 MiB while no driver reads is never blocked; the driver that reads
    later gets the last MiB, after a line saying how much was dropped."""
    directory = tempfile.mkdtemp(prefix="bigactor-test-")
    path = os.path.join(directory, "w.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()
    config = WorkerConfig(key=os.urandom(32), addr=f"unix:{path}")
    args = [sys.executable, "-c", WORKER, str(listener.fileno()), config.to_json().decode()]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(driver_sys_path())}
    sink = create(tmp_path / "worker.log")
    try:
        proc = await trio.lowlevel.open_process(
            args, pass_fds=[listener.fileno()], stdout=sink, stderr=sink, env=env
        )
    finally:
        os.close(sink)
    size = 4 << 20
    try:
        async with trio.open_nursery() as nursery:
            with trio.fail_after(60):
                conn, _ = await _rpc.connect(nursery, config.addr, config.key, transport=_rpc.Transport())

                async def call(target: str, *args: object) -> object:
                    kind, flags, data = await conn.call(_codec.encode_call(target, args, {}))
                    assert kind == Kind.REPLY, _rpc.decode_error(data, config.addr)
                    return _codec.decode(data, flags)

                await call("Supervisor.register", "talker", _codec.dumps(Talker()))
                assert await call("talker.flood", size) == size  # returns: never blocked
                stream = conn.open_stream(_codec.encode_call("Supervisor.output", (), {}))
                received = b""
                while not received.startswith(b"[... ") or _dropped(received) + _after(received) < size:
                    kind, flags, data = await conn.next_item(stream)
                    assert kind == Kind.STREAM_DATA
                    received += _codec.decode(data, flags)
                conn.close_stream(stream)
                await conn.aclose()
            nursery.cancel_scope.cancel()
    finally:
        proc.kill()
        with trio.CancelScope(shield=True):
            await proc.wait()
        listener.close()
        shutil.rmtree(directory, ignore_errors=True)
    first, _, rest = received.partition(b"\n")
    assert first.endswith(
        b" bytes of output dropped on the machine: the driver did not read them in time ...]"
    )
    assert _dropped(received) + len(rest) == size  # each byte either dropped (and counted) or read
    assert len(rest) <= 1 << 20  # the bound
    assert rest.endswith(b"x" * 1023 + b"\n")


def _dropped(received: bytes) -> int:
    first, newline, _ = received.partition(b"\n")
    return int(first.split()[1]) if newline else 0


def _after(received: bytes) -> int:
    return len(received.partition(b"\n")[2])
