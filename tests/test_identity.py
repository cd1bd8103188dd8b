"""Values keep their identity: classes, exceptions, enums and dataclasses of the driver's
``__main__`` travel by value and come back as the driver's own, on fork-server workers and on
fresh interpreters, and across actors (worker A -> worker B -> driver).

Each test runs a real program as ``__main__`` in a subprocess, on the local system: only then
do the classes have no importable home, as in a user's single-file program.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import trio

pytestmark = pytest.mark.slow

PROGRAM = """
    import dataclasses
    import enum
    import sys

    import trio

    import bigactor

    registry = []


    class Point:
        def __init__(self, x, y):
            self.x, self.y = x, y

        def __eq__(self, other):
            return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)

        def norm2(self):
            return self.x**2 + self.y**2

        def register(self):
            registry.append(self)  # a global of the driver's __main__


    @dataclasses.dataclass(frozen=True)
    class Reading:
        sensor: str
        value: float


    class Color(enum.Enum):
        RED = 1
        GREEN = 2


    class OutOfRange(ValueError):
        def __init__(self, value, limit):
            super().__init__(value, limit)
            self.value, self.limit = value, limit


    class Store:
        # Makes, keeps and checks values; knows nothing of Color.

        def __init__(self):
            self.kept = None

        async def point(self, x):
            return Point(x, 2 * x)

        async def reading(self):
            return Reading("t1", 21.5)

        async def is_point(self, value):
            return type(value) is Point

        async def check(self, value):
            if value > 10:
                raise OutOfRange(value, 10)
            return value

        def check_sync(self, value):
            if value > 10:
                raise OutOfRange(value, 10)
            return value

        async def keep(self, value):
            self.kept = value

        async def kept_value(self):
            return self.kept

        async def hand_over(self, other, x):
            await other.keep(Point(x, x))  # made here, on worker A

        async def check_via(self, other, value):
            return await other.check(value)  # raises on worker B, passes through A


    class Painter:
        favourite = Color.RED

        def __init__(self, color):
            # On the worker, the enum arrived by value: its members still compare by identity.
            assert color is Color.GREEN, color
            self.color = color

        async def color_of(self):
            return self.color

        async def colors(self):
            return list(Color), self.favourite

        async def is_red(self, color):
            return color is Color.RED


    async def classes(cluster):
        a = await cluster.spawn(Store)
        p = await a.point(3)  # made on the worker
        assert type(p) is Point, type(p)
        assert isinstance(p, Point) and p == Point(3, 6) and p.norm2() == 45
        await a.keep(Point(1, 2))  # driver -> worker -> driver
        back = await a.kept_value()
        assert type(back) is Point and back == Point(1, 2)
        assert await a.is_point(Point(0, 0)) is True  # the worker's Point, call after call
        assert await a.reading() == Reading("t1", 21.5)  # dataclass __eq__ compares classes
        await a.keep(Reading("t2", 1.0))
        assert await a.kept_value() == Reading("t2", 1.0)
        # The driver's class kept its own methods: they still reach the driver's globals.
        p.register()
        Point(0, 0).register()
        assert len(registry) == 2 and registry[0] is p, registry


    async def exceptions(cluster):
        a = await cluster.spawn(Store)
        for method in (a.check, a.check_sync):
            try:
                await method(11)
            except OutOfRange as exc:
                assert (exc.value, exc.limit) == (11, 10), exc.args
                assert isinstance(exc, ValueError) and isinstance(exc, bigactor.RemoteError)
            else:
                raise AssertionError("no OutOfRange")
        assert await a.check(3) == 3


    async def enums(cluster):
        a = await cluster.spawn(Painter, Color.GREEN)  # a Color in the constructor's arguments
        assert await a.color_of() is Color.GREEN
        members, favourite = await a.colors()
        assert members == [Color.RED, Color.GREEN] and all(type(m) is Color for m in members)
        assert favourite is Color.RED
        assert await a.is_red(Color.RED) is True
        assert await a.is_red(Color.GREEN) is False


    async def across(cluster):
        a = await cluster.spawn(Store)
        b = await cluster.spawn(Store)
        await a.hand_over(b, 5)  # worker A -> worker B
        got = await b.kept_value()  # -> driver
        assert type(got) is Point and got == Point(5, 5), got
        try:
            await a.check_via(b, 12)  # raised on B, through A, to the driver
        except OutOfRange as exc:
            assert (exc.value, exc.limit) == (12, 10), exc.args
        else:
            raise AssertionError("no OutOfRange")


    async def main(part, forkserver):
        async with bigactor.open_cluster("local", forkserver=forkserver) as cluster:
            await globals()[part](cluster)
        print(f"{part} ok")


    trio.run(main, sys.argv[1], sys.argv[2] == "fork")
"""

PARTS = ["classes", "exceptions", "enums", "across"]
MODES = ["fork", "fresh"]


async def run_program(tmp_path: Path, part: str, mode: str) -> str:
    """Run PROGRAM as ``__main__`` for ``part`` on workers started in ``mode``; its stdout."""
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(PROGRAM))
    with trio.fail_after(90):
        result = await trio.run_process(
            [sys.executable, str(script), part, mode],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            cwd=tmp_path,
        )
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 0, stderr
    return result.stdout.decode()


@pytest.mark.parametrize("mode", MODES)
async def test_classes_and_dataclasses_of_main_come_back_as_the_drivers_own(
    tmp_path: Path, mode: str
) -> None:
    """A worker's ``Point`` is the driver's ``Point`` (isinstance, ==, dataclass ==), and the
    driver's class keeps its own methods and globals after its instances came back."""
    assert await run_program(tmp_path, "classes", mode) == "classes ok\n"


@pytest.mark.parametrize("mode", MODES)
async def test_exception_of_main_raised_by_a_worker_is_caught_by_its_class(tmp_path: Path, mode: str) -> None:
    """``except OutOfRange:`` in the driver catches what an async or sync method raised."""
    assert await run_program(tmp_path, "exceptions", mode) == "exceptions ok\n"


@pytest.mark.parametrize("mode", MODES)
async def test_enum_of_main_members_keep_their_identity(tmp_path: Path, mode: str) -> None:
    """An actor spawned with a Color works; members come back as the very members (``is``)."""
    assert await run_program(tmp_path, "enums", mode) == "enums ok\n"


@pytest.mark.parametrize("mode", MODES)
async def test_values_keep_their_identity_across_actors(tmp_path: Path, mode: str) -> None:
    """A Point made on worker A, kept by worker B, comes back to the driver as its Point; an
    exception raised on B and passing through A is caught by its class in the driver."""
    assert await run_program(tmp_path, "across", mode) == "across ok\n"
