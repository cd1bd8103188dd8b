"""The workloads, written once and driven both through bigactor and through the bare floors.

Each takes plain async callables, so a floor and bigactor run exactly the same loop: the same
number of calls, the same arguments, the same task structure.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio

Call = Callable[[int], Awaitable[Any]]


async def sequential(call: Call, n: int, warmup: int) -> list[float]:
    """Call ``call(i)`` ``warmup`` times untimed, then ``n`` times; seconds per timed call."""
    for i in range(warmup):
        await call(i)
    samples = []
    clock = time.perf_counter
    for i in range(n):
        t0 = clock()
        await call(i)
        samples.append(clock() - t0)
    return samples


async def pipelined(calls: Sequence[Call], n: int) -> float:
    """Start ``n`` calls at once, call ``i`` going to ``calls[i % len(calls)]``; calls per second.

    Every call is its own trio task, as concurrent callers of an actor would be. The rate is
    ``n`` divided by the time from the first start to the last reply.
    """
    k = len(calls)
    bad: list[int] = []

    async def one(i: int) -> None:
        if await calls[i % k](i) != i:
            bad.append(i)

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(one, i)
    elapsed = time.perf_counter() - t0
    if bad:
        raise RuntimeError(f"{len(bad)} pipelined calls came back with the wrong value")
    return n / elapsed


async def echo_rate(echo: Callable[[bytes], Awaitable[Any]], payload: bytes) -> tuple[float, float]:
    """Echo ``payload`` once; (round-trip seconds, payload MB/s with MB = 10**6 bytes)."""
    t0 = time.perf_counter()
    back = await echo(payload)
    elapsed = time.perf_counter() - t0
    if len(back) != len(payload):
        raise RuntimeError(f"echo returned {len(back)} bytes for {len(payload)}")
    return elapsed, len(payload) / elapsed / 1e6


def make_payload(size: int) -> bytes:
    """A ``size``-byte payload whose pages are all touched (``bytes(n)`` would be lazily zeroed)."""
    return b"\xa5" * size
