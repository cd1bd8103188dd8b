"""A method's BaseException is an error of that one call, never the end of its machine.

``SystemExit``, ``KeyboardInterrupt`` and ``GeneratorExit`` raised by a method, and exceptions
whose ``__str__`` itself raises, used to kill the worker and every actor on it. They now reach
their caller as a RemoteError naming them, and the machine serves on. A process that really
exits (``os._exit(3)``) is reported with its real exit code. Real worker processes throughout.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import trio

import bigactor
from bigactor import MachineLost, RemoteError, State

pytestmark = pytest.mark.slow


class NoStr(Exception):
    """An exception whose ``__str__`` raises."""

    def __str__(self) -> str:
        raise RuntimeError("str() of NoStr exploded")


class Raiser:
    async def async_raise(self, what: str) -> None:
        raise _make(what)

    def sync_raise(self, what: str) -> None:
        raise _make(what)

    def sync_stream(self, what: str) -> Iterator[int]:
        yield 1
        raise _make(what)

    def hard_exit(self, code: int) -> None:
        os._exit(code)

    async def ping(self) -> str:
        return "pong"


def _make(what: str) -> BaseException:
    return {
        "SystemExit": SystemExit(3),
        "KeyboardInterrupt": KeyboardInterrupt(),
        "GeneratorExit": GeneratorExit(),
        "NoStr": NoStr(),
    }[what]


@pytest.mark.parametrize("what", ["SystemExit", "KeyboardInterrupt", "GeneratorExit", "NoStr"])
async def test_a_methods_base_exception_fails_its_call_and_the_machine_serves_on(what: str) -> None:
    """Async, sync and streamed: the caller gets a RemoteError naming it; the actor lives."""
    async with bigactor.open_cluster() as cluster:
        raiser = await cluster.spawn(Raiser)
        other = await cluster.options(machine=raiser).spawn(Raiser)
        for method in (raiser.async_raise, raiser.sync_raise):
            with pytest.raises(RemoteError) as info:
                await method(what)
            assert what in info.value.type_name
            assert what in str(info.value) or what == "NoStr"
            assert not isinstance(info.value, (SystemExit, KeyboardInterrupt, GeneratorExit))
        with pytest.raises(RemoteError) as info:
            async for _ in raiser.sync_stream(what):
                pass
        assert what in info.value.type_name
        assert await raiser.ping() == "pong"
        assert await other.ping() == "pong"
        assert bigactor.machine_of(raiser).state == State.RUNNING


async def test_an_exception_whose_str_raises_keeps_its_type_and_prints() -> None:
    """The rebuilt exception is still a NoStr, and printing it no longer raises."""
    async with bigactor.open_cluster() as cluster:
        raiser = await cluster.spawn(Raiser)
        with pytest.raises(NoStr) as info:
            await raiser.async_raise("NoStr")
        assert isinstance(info.value, RemoteError)
        assert "NoStr" in str(info.value)
        assert "NoStr" in info.value.remote_traceback  # type: ignore[attr-defined]


async def test_a_process_that_really_exits_is_reported_with_its_exit_code() -> None:
    """``os._exit(3)`` in a method: MachineLost, naming exit code 3."""
    async with bigactor.open_cluster() as cluster:
        raiser = await cluster.spawn(Raiser)
        with pytest.raises(MachineLost, match="exited with code 3"):
            await raiser.hard_exit(3)
        with trio.fail_after(5):
            await bigactor.machine_of(raiser).wait(State.STOPPED)
        assert "exited with code 3" in str(bigactor.machine_of(raiser).error)
