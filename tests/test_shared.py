"""``cluster.put``: a value stored once in this host's shared memory and handed to many actors,
arriving as the value itself (numpy arrays writable, copy-on-write; ``bytes`` as ``bytes``).
Real worker processes, real mappings; memory is read from each worker's own accounting."""

from __future__ import annotations

import os

import numpy as np
import psutil
import pytest

import bigactor
from bigactor import CodecError
from bigactor._shared import Shared, load

pytestmark = pytest.mark.slow  # real worker processes

MB = 1 << 20


class Holder:
    """Keeps what it is given and says what it looks like and what it costs its process."""

    def __init__(self, value: object = None) -> None:
        self.value = value

    def hold(self, value: object) -> None:
        self.value = value

    def describe(self) -> dict[str, object]:
        v = self.value
        if isinstance(v, np.ndarray):
            return {
                "type": "ndarray",
                "sum": float(v.sum()),
                "writable": v.flags.writeable,
                "first": float(v[0]),
            }
        return {"type": type(v).__name__, "len": len(v) if hasattr(v, "__len__") else None}

    def write_first(self, x: float) -> float:
        assert isinstance(self.value, np.ndarray)
        self.value[0] = x
        return float(self.value[0])

    def touch(self) -> float:
        """Read every page of the array (so that it counts in the process's memory)."""
        assert isinstance(self.value, np.ndarray)
        return float(self.value.sum())

    def uss(self) -> int:
        return int(psutil.Process().memory_full_info().uss)


async def test_an_array_arrives_writable_and_each_actors_writes_are_its_own() -> None:
    array = np.arange(1_000_000, dtype=np.float64)
    async with bigactor.open_cluster() as cluster:
        shared = await cluster.put(array)
        assert shared.nbytes >= array.nbytes
        holders = [await cluster.spawn(Holder, shared) for _ in range(2)]  # as a spawn argument
        for h in holders:
            assert await h.describe() == {
                "type": "ndarray",
                "sum": float(array.sum()),
                "writable": True,
                "first": 0.0,
            }
        assert await holders[0].write_first(-5.0) == -5.0  # copy-on-write: its own page now
        assert (await holders[1].describe())["first"] == 0.0
        assert float(shared.get()[0]) == 0.0
        await holders[1].hold({"nested": [shared]})  # anywhere in a call's arguments
        assert (await holders[1].describe())["type"] == "dict"


async def test_bytes_arrive_as_bytes_and_small_values_too() -> None:
    async with bigactor.open_cluster() as cluster:
        big = await cluster.put(b"\x01" * (3 * MB))
        small = await cluster.put({"k": (1, "two")})
        h = await cluster.spawn(Holder)
        await h.hold(big)
        assert await h.describe() == {"type": "bytes", "len": 3 * MB}
        await h.hold(small)
        assert await h.describe() == {"type": "dict", "len": 1}
        assert small.get() == {"k": (1, "two")}


async def test_four_actors_given_one_put_share_its_pages() -> None:
    """The point of put: the model's pages are stored once. Over four workers that read a put
    array, their unique memory grows by about one array in all (the first to map a page holds
    it alone until the next maps it too); a worker that reads a copy of its own grows by it."""
    array = np.ones(32 * MB // 8, dtype=np.float64)
    async with bigactor.open_cluster() as cluster:
        shared = await cluster.put(array)
        holders = [await cluster.spawn(Holder) for _ in range(4)]
        grew = []
        for h in holders:
            before = await h.uss()
            await h.hold(shared)
            assert await h.touch() == float(array.size)
            grew.append(await h.uss() - before)
        assert sum(grew) < array.nbytes * 1.5, grew  # by value: 4 x array.nbytes
        copy = await cluster.spawn(Holder)
        before = await copy.uss()
        await copy.hold(array)  # by value, for comparison
        await copy.touch()
        assert await copy.uss() - before > array.nbytes * 0.9


async def test_a_released_value_cannot_be_passed_but_received_ones_live_on() -> None:
    async with bigactor.open_cluster() as cluster:
        shared = await cluster.put(np.arange(10.0))
        h = await cluster.spawn(Holder, shared)
        shared.release()
        shared.release()  # idempotent
        assert shared.released
        with pytest.raises(CodecError, match="released"):
            await h.hold(shared)
        with pytest.raises(CodecError, match="released"):
            shared.get()
        assert (await h.describe())["sum"] == 45.0  # what it received stays readable
    kept = None
    async with bigactor.open_cluster() as cluster:
        kept = await cluster.put([1, 2, 3])
    assert kept.released  # the cluster closed: its shared values went with it


async def test_only_a_process_on_this_host_can_read_it() -> None:
    shared = Shared.put(np.arange(4.0))
    try:
        pid, fd, size, boot = shared.__reduce__()[1]
        with pytest.raises(CodecError, match="another"):
            load(pid, fd, size, "some-other-boot")
        with pytest.raises(CodecError, match="cannot open"):
            load(pid, 10_000, size, boot)  # no such descriptor
        assert load(pid, fd, size, boot).tolist() == [0.0, 1.0, 2.0, 3.0]
        assert not [n for n in os.listdir("/dev/shm") if "bigactor" in n]  # nothing on a filesystem
    finally:
        shared.release()


async def test_put_refuses_what_cannot_cross_a_process() -> None:
    import threading

    async with bigactor.open_cluster() as cluster:
        with pytest.raises(CodecError, match="lock"):
            await cluster.put({"lock": threading.Lock()})
