"""A bigactor program run by tests/ec2/test_partitions.py with BIGACTOR_SYSTEM=ec2: it starts
N machines with a `Ledger` actor on each, then does what the test asks on stdin, one JSON
command a line, each in a task of its own, while the test cuts and heals the instances' links.
It answers with one JSON event a line on stdout, each with the command's ``tag`` and
``t`` (``time.monotonic()``, the same clock as the test's: both run on one host).

    python partitions.py N

Commands (``m`` is a machine's index in the ``ready`` event):

    {"op": "calls", "tag": T, "m": i, "ids": [...], "hold": s}
        call ``record(id, hold)`` once per id, concurrently; ``issued`` at once, ``arrived``
        once the actor has seen every id (if it does), ``done`` with each call's outcome
    {"op": "pending", "tag": T, "m": i}    a call that sleeps 600 s: ``arrived``, ``ended``
    {"op": "now", "tag": T, "m": i}        one new call, timed: ``now``
    {"op": "seen", "tag": T, "m": i}       the ids the actor saw, in order: ``seen``
    {"op": "state", "tag": T, "m": i}      the machine's state and error: ``state``
    {"op": "serve", "tag": T, "m": i, "seconds": s}
        a call every 0.1 s for s seconds: ``served`` with the count, errors and slowest call
    {"op": "replay", "tag": T, "m": i}     record a genuine connection through a relay, then
        replay its bytes to the worker: ``replayed``
    {"op": "plaintext", "tag": T, "m": i}  a plaintext websocket upgrade to the TLS port:
        ``plaintext``
    {"op": "quit"}                          leave the cluster: ``closed``
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
from typing import Any

import trio

import bigactor
from bigactor import _codec, _rpc
from bigactor._rpc._tls import connect_tls, parse_address
from bigactor._rpc._transport import Transport

#: what a plaintext client sends first to open a websocket
UPGRADE = (
    b"GET / HTTP/1.1\r\nHost: worker\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    b"Sec-WebSocket-Protocol: bigactor\r\n\r\n"
)


class Ledger:
    """Counts calls by id: every id it was called with, in arrival order, repeats included."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def record(self, call_id: str, hold: float = 0.0) -> str:
        self.seen.append(call_id)
        await trio.sleep(hold)
        return call_id

    async def hold(self, call_id: str, seconds: float) -> str:
        self.seen.append(call_id)
        await trio.sleep(seconds)
        return "woke"

    def ids(self) -> list[str]:
        return list(self.seen)

    def ping(self) -> int:
        return 1


def emit(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, "t": time.monotonic(), **fields}, default=str), flush=True)


def describe(exc: BaseException) -> dict[str, str]:
    return {"error": type(exc).__name__, "message": str(exc)}


class RelayTransport(Transport):
    """The driver's own TLS client (its certificate, the cluster's CA, the worker's address as
    the name to check), dialing a relay on this host instead of the worker."""

    def __init__(self, tls: Any, relay_port: int) -> None:
        self._context = tls._client  # the driver's client context (TLSTransport's)
        self._port = relay_port

    async def open(self, addr: str) -> trio.abc.Stream:
        host, _ = parse_address(addr)
        return await connect_tls("127.0.0.1", self._port, self._context, server_hostname=host)


class Program:
    def __init__(
        self, cluster: bigactor.Cluster, machines: list[bigactor.Machine], ledgers: list[Any]
    ) -> None:
        self.cluster = cluster
        self.machines = machines
        self.ledgers = ledgers

    async def calls(self, tag: str, m: int, ids: list[str], hold: float, arrive: bool = True) -> None:
        ledger = self.ledgers[m]
        outcomes: dict[str, Any] = {}

        async def one(call_id: str) -> None:
            try:
                value = await ledger.record(call_id, hold)
            except Exception as exc:
                outcomes[call_id] = {**describe(exc), "t": time.monotonic()}
            else:
                outcomes[call_id] = {"value": value, "t": time.monotonic()}

        async with trio.open_nursery() as nursery:
            for call_id in ids:
                nursery.start_soon(one, call_id)
            emit("issued", tag=tag)
            if arrive:
                nursery.start_soon(self._arrival, tag, m, set(ids))
        emit("done", tag=tag, outcomes=outcomes)

    async def _arrival(self, tag: str, m: int, ids: set[str]) -> None:
        """Say ``arrived`` once the actor has seen every id (asked over a second call, which
        a cut also holds up: the test asks only before cutting)."""
        with trio.move_on_after(30):
            try:
                # The ids are on another host: asking again is the only way to know.
                while not ids <= set(await self.ledgers[m].ids()):  # noqa: ASYNC110
                    await trio.sleep(0.02)
            except bigactor.BigActorError as exc:
                emit("unarrived", tag=tag, **describe(exc))
            else:
                emit("arrived", tag=tag)

    async def pending(self, tag: str, m: int) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._arrival, tag, m, {tag})
            try:
                await self.ledgers[m].hold(tag, 600)
            except Exception as exc:
                machine = self.machines[m]
                emit("ended", tag=tag, **describe(exc), state=str(machine.state), cause=str(machine.error))
            else:
                emit("ended", tag=tag, error=None)
            nursery.cancel_scope.cancel()

    async def now(self, tag: str, m: int) -> None:
        t0 = time.monotonic()
        try:
            await self.ledgers[m].record(tag)
        except Exception as exc:
            emit("now", tag=tag, seconds=time.monotonic() - t0, **describe(exc))
        else:
            emit("now", tag=tag, seconds=time.monotonic() - t0, error=None)

    async def seen(self, tag: str, m: int) -> None:
        with trio.fail_after(30):
            emit("seen", tag=tag, ids=await self.ledgers[m].ids())

    async def state(self, tag: str, m: int) -> None:
        machine = self.machines[m]
        emit("state", tag=tag, state=str(machine.state), error=str(machine.error),
             keepalive_replies=machine.keepalive_reply_times)  # fmt: skip

    async def serve(self, tag: str, m: int, seconds: float) -> None:
        count, errors, slowest = 0, [], 0.0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            t0 = time.monotonic()
            try:
                with trio.fail_after(5):
                    await self.ledgers[m].ping()
            except Exception as exc:
                errors.append(describe(exc))
            else:
                count += 1
            slowest = max(slowest, time.monotonic() - t0)
            await trio.sleep(0.1)
        emit("served", tag=tag, count=count, errors=errors, slowest=slowest)

    async def replay(self, tag: str, m: int) -> None:
        """Record what a genuine driver connection sends a worker (TLS with the driver's
        certificate, the websocket upgrade, the cluster key's handshake, one call of
        ``record(tag)``), through a relay in this process; then send those bytes again, as
        they were, on a new connection to the worker; then a plaintext websocket upgrade."""
        machine, system = self.machines[m], self.cluster.system
        host, port = parse_address(machine.addr)
        sent = bytearray()
        listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
        relay_port = listener.socket.getsockname()[1]

        async def pump(src: trio.SocketStream, dst: trio.SocketStream, record: bool) -> None:
            try:
                while data := await src.receive_some(65536):
                    if record:
                        sent.extend(data)
                    await dst.send_all(data)
                await dst.send_eof()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

        async def relay(client: trio.SocketStream) -> None:
            upstream = await trio.open_tcp_stream(host, port)
            async with client, upstream, trio.open_nursery() as pumps:
                pumps.start_soon(pump, client, upstream, True)
                pumps.start_soon(pump, upstream, client, False)

        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, relay, [listener])
            async with trio.open_nursery() as conns:
                transport = RelayTransport(system.transport, relay_port)
                conn, _ = await _rpc.connect(conns, machine.addr, system.key, transport=transport)
                target = f"{bigactor.name_of(self.ledgers[m])}.record"
                kind, flags, data = await conn.call(_codec.encode_call(target, (tag,), {}))
                assert kind == _rpc.Kind.REPLY, (kind, data)
                genuine = _codec.decode(data, flags, "the recorded call's reply")
                await conn.aclose()
            with trio.move_on_after(2):  # the relay's last bytes (the close) pass
                while True:
                    before = len(sent)
                    await trio.sleep(0.2)
                    if len(sent) == before:
                        break
            nursery.cancel_scope.cancel()
        recorded = bytes(sent)
        replayed = await self._send_raw(host, port, recorded)
        emit("replayed", tag=tag, genuine=genuine, recorded=len(recorded), head=recorded[:3].hex(),
             replay=replayed)  # fmt: skip

    async def plaintext(self, tag: str, m: int) -> None:
        """Send a plaintext websocket upgrade to the worker's TLS port."""
        host, port = parse_address(self.machines[m].addr)
        emit("plaintext", tag=tag, **await self._send_raw(host, port, UPGRADE))

    async def _send_raw(self, host: str, port: int, payload: bytes) -> dict[str, Any]:
        """Send ``payload`` on a new TCP connection and read until the worker closes it."""
        t0 = time.monotonic()
        got, how = bytearray(), "open after 20 s"
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            with trio.move_on_after(20):
                try:
                    await stream.send_all(payload)
                    while data := await stream.receive_some(65536):
                        got.extend(data)
                    how = "closed"
                except trio.BrokenResourceError as exc:
                    how = f"reset: {exc.__cause__!r}"
        return {"how": how, "seconds": time.monotonic() - t0, "bytes": len(got),
                "head": bytes(got[:16]).hex(), "http": b"HTTP/" in got}  # fmt: skip


async def main_program(n: int) -> None:
    t0 = time.monotonic()
    async with bigactor.open_cluster() as cluster:
        machines = await cluster.start(n)
        for machine in machines:
            await machine.wait(bigactor.State.RUNNING)
            if machine.state != bigactor.State.RUNNING:
                raise RuntimeError(f"{machine.addr} did not start: {machine.error}")
        ledgers = [await cluster.options(machine=machine).spawn(Ledger) for machine in machines]
        system = cluster.system
        ids = {inst.addr: inst.instance_id for inst in system.instances()}  # type: ignore[attr-defined]
        ka = system.keepalive
        emit(
            "ready",
            seconds=time.monotonic() - t0,
            machines=[{"addr": m.addr, "instance_id": ids[m.addr]} for m in machines],
            keepalive={"period": ka.period, "timeout": ka.timeout, "rpc_timeout": ka.rpc_timeout,
                       "unattended": ka.unattended},
            watchdog_tick=system.watchdog.tick,  # type: ignore[attr-defined]
        )  # fmt: skip
        program = Program(cluster, machines, ledgers)
        async with trio.open_nursery() as nursery:
            while True:
                line = await trio.to_thread.run_sync(sys.stdin.readline)
                if not line:
                    break
                command = json.loads(line)
                op = command.pop("op")
                if op == "quit":
                    break
                nursery.start_soon(functools.partial(getattr(program, op), **command))
            nursery.cancel_scope.cancel()
        t = time.monotonic()
    emit("closed", seconds=time.monotonic() - t)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    trio.run(main_program, int(sys.argv[1]))


if __name__ == "__main__":
    main()
