"""A tour of bigactor on the local system: actors, sync and async methods, a streamed
generator, and an actor handed to another actor.

    python examples/counter.py
"""

import trio

import bigactor


class Counter:
    """A counter living on its own machine."""

    def __init__(self, start: int = 0) -> None:
        self.n = start

    async def add(self, k: int) -> int:
        """Async methods run on the machine's Trio loop and interleave at await points."""
        self.n += k
        return self.n

    def total(self) -> int:
        """Sync methods run in a worker thread, one at a time per actor, in call order."""
        return self.n

    async def count_up(self, n: int):
        """Generator methods stream their items to the caller with back-pressure."""
        for _ in range(n):
            self.n += 1
            yield self.n


class Reporter:
    """An actor that calls another actor through a handle it was given."""

    async def report(self, counter) -> str:
        total = await counter.total()
        return f"the counter at {bigactor.machine_of(counter).addr} says {total}"


async def main() -> None:
    async with bigactor.open_cluster() as cluster:
        counter = await cluster.spawn(Counter, 10)  # a new machine hosting Counter(10)
        print("add(5) ->", await counter.add(5))
        print("total() ->", await counter.total())
        print("count_up(3) ->", [x async for x in counter.count_up(3)])

        # bigmachine style: start machines hosting services, call them by name.
        machines = await cluster.start(2, bigactor.Services(counter=Counter()))
        for m in machines:
            print(f"{m.addr}: counter.add(1) ->", await m.call("counter.add", 1))

        # Place an actor on an existing machine and hand it another actor's handle.
        reporter = await cluster.options(machine=machines[0]).spawn(Reporter)
        print(await reporter.report(counter))

        info = await machines[0].info()
        print(f"workers run Python {info.python} on {info.platform}, pid {info.pid}")


if __name__ == "__main__":
    trio.run(main)
