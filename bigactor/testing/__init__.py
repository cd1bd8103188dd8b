"""Testing actors: the in-process test system and a pytest plugin.

:class:`TestSystem` runs machines inside the test's process, still serialising every call and
service, with configurable keepalives, ``kill(machine=None)`` and ``autojump_clock`` support.
Its machines are reached through its own :class:`TestTransport` (``system.transport``), so test
systems in one process stay apart. It is the system named ``test`` (``open_cluster("test")``,
``BIGACTOR_SYSTEM=test``), registered as an entry point like any third-party system.

With bigactor installed, pytest (with pytest-trio) gets two fixtures::

    async def test_counter(cluster):             # a cluster on a fresh TestSystem
        counter = await cluster.spawn(Counter, 1)
        assert await counter.add(2) == 3

    async def test_kill(cluster, test_system):   # the TestSystem behind ``cluster``
        ...
"""

from ._system import TestSystem, TestTransport, run_inline

__all__ = ["TestSystem", "TestTransport", "run_inline"]
