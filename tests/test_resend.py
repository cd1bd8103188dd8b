"""Errors say honestly whether a call may have run, and ``retry_call`` re-sends only then.

Connections to real worker processes are cut for real (``shutdown`` of the socket), before a
call leaves (no connection can be made: the socket file is moved away) and after (the method
is running when its connection breaks). A method counts its runs, so a re-send shows.
"""

from __future__ import annotations

import os
import socket

import pytest
import trio
import trio.testing

import bigactor
from bigactor import CallNotSent, State, TransportError

pytestmark = pytest.mark.slow


class Ledger:
    def __init__(self) -> None:
        self.runs = 0
        self.entered = trio.Event()

    async def add(self) -> int:
        """Not idempotent: each run counts. The first run hangs until its connection breaks."""
        return await self._run()

    @bigactor.idempotent
    async def read(self) -> int:
        """Marked safe to repeat: the first run hangs until its connection breaks."""
        return await self._run()

    async def _run(self) -> int:
        self.runs += 1
        self.entered.set()
        if self.runs == 1:
            await trio.sleep_forever()
        return self.runs

    async def wait_entered(self) -> None:
        await self.entered.wait()

    async def count(self) -> int:
        return self.runs


def cut(machine: bigactor.Machine) -> None:
    """Break the driver's connection to ``machine`` at the socket (the worker lives on)."""
    conn = machine._conn
    assert conn is not None
    conn._ws._stream.socket.shutdown(socket.SHUT_RDWR)  # type: ignore[attr-defined]


async def test_a_call_that_never_left_is_call_not_sent_and_retry_call_sends_it_once() -> None:
    """No connection can be made: CallNotSent (retriable); retry_call gets through once the
    machine is reachable again, and the method runs exactly once."""
    async with bigactor.open_cluster() as cluster:
        ledger = await cluster.spawn(Ledger)
        machine = bigactor.machine_of(ledger)
        assert await ledger.count() == 0
        path = machine.addr.partition(":")[2]
        os.rename(path, path + ".away")  # new connections fail; the worker keeps running
        conn = machine._conn
        assert conn is not None
        cut(machine)
        with trio.fail_after(5):
            while not conn.broken:  # noqa: ASYNC110 - the driver notices the cut on its own
                await trio.sleep(0.001)
        with pytest.raises(CallNotSent, match=r"not sent|cannot connect") as info:
            await machine.call(f"{bigactor.name_of(ledger)}.count")
        assert info.value.retriable
        result: list[int] = []

        async def retry() -> None:
            with trio.fail_after(20):
                result.append(await machine.retry_call(f"{bigactor.name_of(ledger)}.count"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(retry)
            await trio.testing.wait_all_tasks_blocked()  # its first attempt failed: it waits
            os.rename(path + ".away", path)
        assert result == [0]  # sent once it could be, and it ran
        assert machine.state == State.RUNNING


@pytest.mark.parametrize("idempotent", [False, True])
async def test_a_call_cut_after_it_left_is_re_sent_only_if_idempotent(idempotent: bool) -> None:
    """The connection breaks while the method runs: TransportError, not retriable; retry_call
    raises it at once for a plain method and re-sends an ``@idempotent`` one."""
    async with bigactor.open_cluster() as cluster:
        ledger = await cluster.spawn(Ledger)
        machine = bigactor.machine_of(ledger)
        method = f"{bigactor.name_of(ledger)}.{'read' if idempotent else 'add'}"
        outcome: list[object] = []

        async def call() -> None:
            try:
                outcome.append(await machine.retry_call(method))
            except TransportError as exc:
                outcome.append(exc)

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(call)
                await machine.call(f"{bigactor.name_of(ledger)}.wait_entered")  # the first run is under way
                cut(machine)
        if idempotent:
            assert outcome == [2]  # re-sent after the cut; the second run returned
        else:
            [exc] = outcome
            assert type(exc) is TransportError  # it may have run: not CallNotSent
            assert not exc.retriable
        assert await ledger.count() == (2 if idempotent else 1)
