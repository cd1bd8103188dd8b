"""Estimate pi by Monte Carlo sampling scattered over N machines (like bigmachine's bigpi).

python examples/pi.py [N] [--samples S]
"""

import argparse
import random
import time

import trio

import bigactor


class Sampler:
    """Counts how many of n random points in the unit square fall in the quarter circle."""

    def sample(self, n: int, seed: int) -> int:
        rng = random.Random(seed)
        inside = 0
        for _ in range(n):
            x, y = rng.random(), rng.random()
            inside += x * x + y * y <= 1.0
        return inside


async def main(machines: int, samples: int) -> None:
    started = time.perf_counter()
    async with bigactor.open_cluster() as cluster:
        ms = await cluster.start(machines, bigactor.Services(sampler=Sampler()))
        per_machine = samples // machines
        results: list[int] = []

        async def run(i: int, m: bigactor.Machine) -> None:
            results.append(await m.call("sampler.sample", per_machine, seed=i))

        async with trio.open_nursery() as nursery:
            for i, m in enumerate(ms):
                nursery.start_soon(run, i, m)
        total = per_machine * machines
        pi = 4 * sum(results) / total
        print(
            f"pi ~ {pi:.6f} from {total:,} samples on {machines} machines "
            f"in {time.perf_counter() - started:.2f} s"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("machines", nargs="?", type=int, default=4)
    parser.add_argument("--samples", type=int, default=4_000_000)
    args = parser.parse_args()
    trio.run(main, args.machines, args.samples)
