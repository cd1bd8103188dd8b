"""Many calls at once, results in order, on the local system: the lost-update mistake and its
fix, gather, as_completed, and an ActorPool with at most 2 calls in flight on each actor.

    python examples/pool.py
"""

import functools

import trio

import bigactor


class Squarer:
    """Squares numbers, taking its time, and counts how many calls it runs at once."""

    def __init__(self) -> None:
        self.running = 0
        self.most = 0

    async def square(self, x: int, delay: float = 0.0) -> int:
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await trio.sleep(delay)
            return x * x
        finally:
            self.running -= 1

    async def most_at_once(self) -> int:
        return self.most


async def main() -> None:
    async with bigactor.open_cluster() as cluster:
        squarer = await cluster.spawn(Squarer)
        expected = sum(x * x for x in range(10))

        # The mistake: `total += await ...` reads `total` before the await and writes it back
        # after, so each task overwrites what the others added in the meantime.
        total = 0

        async def add(x: int) -> None:
            nonlocal total
            total += await squarer.square(x)  # wrong: every task read total == 0

        async with trio.open_nursery() as nursery:
            for x in range(10):
                nursery.start_soon(add, x)
        print(f"lost updates: total = {total}, expected {expected}")

        # The fix: gather the results, then add them up in one place.
        squares = await bigactor.gather(*(squarer.square(x) for x in range(10)))
        print(f"gather: total = {sum(squares)}, expected {expected}")

        # gather returns results in the order of the calls, though here later calls finish first.
        calls = [squarer.square(x, delay=0.1 * (4 - x)) for x in range(5)]
        print("gather in order:", await bigactor.gather(*calls))

        # as_completed yields (index, result) as the calls finish; leaving the block early
        # (break, an error) cancels the calls still running.
        calls = [squarer.square(x, delay=0.1 * (4 - x)) for x in range(5)]
        async with bigactor.as_completed(*calls) as completed:
            print("as completed, by index:", [index async for index, _ in completed])

        # A pool over 3 actors (spawned at once: gather takes functions too), at most 2 calls in
        # flight on each. map yields results in input order, map_unordered as they finish.
        squarers = await bigactor.gather(*[functools.partial(cluster.spawn, Squarer)] * 3)
        pool = bigactor.ActorPool(squarers, per_actor=2)
        async with pool.map(lambda s, x: s.square(x, delay=0.01 * (1 + x % 4)), range(20)) as results:
            print("pool.map:", [y async for y in results])
        most = await bigactor.gather(*(s.most_at_once() for s in squarers))
        print("most calls at once on each actor:", most)
        async with pool.map_unordered(lambda s, x: s.square(x), range(20)) as results:
            print("pool.map_unordered: total =", sum([y async for y in results]))


if __name__ == "__main__":
    trio.run(main)
