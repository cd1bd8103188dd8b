"""Run the benchmark: ``python -m benchmarks [--quick] [--json PATH] [--only NAMES]``.

Prints a table and writes a JSON document (default ``bench-results.json`` in the current
directory). It is a benchmark, not a test: the exit status says whether it ran, not whether
the targets were met.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import trio

from ._context import Bench, LogCollector, Options
from ._memory import status
from ._put import put
from ._report import environment, render, write_json
from ._scaling import scaling
from ._sections import SECTIONS
from ._simulation import simulation

ALL = [*SECTIONS, "scaling", "simulation", "put"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a fast smoke pass (fewer runs and calls)")
    parser.add_argument(
        "--json", type=Path, default=Path("bench-results.json"), help="where to write the JSON results"
    )
    parser.add_argument(
        "--only",
        default=",".join(ALL),
        help=f"comma-separated sections to run (default all: {','.join(ALL)})",
    )
    args = parser.parse_args(argv)
    args.sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(args.sections) - set(ALL))
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(ALL)}")
    return args


def progress(text: str) -> None:
    """A progress line on stderr (the table goes to stdout)."""
    print(text, file=sys.stderr, flush=True)


def describe(exc: BaseException) -> str:
    """One line per leaf exception (exception groups flattened), for the report."""
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(describe(e) for e in exc.exceptions)
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}"[:400]


async def run(options: Options, sections: list[str], results: dict[str, Any], errors: dict[str, str]) -> None:
    """Run the chosen sections in their canonical order, filling ``results``.

    A section that fails is recorded in ``errors`` (and its traceback printed) and the run goes
    on with the next one.
    """
    async with trio.open_nursery() as nursery:
        bench = Bench(options, nursery)
        bench.notes["driver_rss_start"] = status().get("VmRSS")
        try:
            for name in ALL:
                if name not in sections:
                    continue
                t0 = time.perf_counter()
                progress(f"benchmarks: {name} ...")
                section = {"scaling": scaling, "simulation": simulation, "put": put}.get(name) or SECTIONS[
                    name
                ]
                try:
                    results.update(await section(bench))
                except Exception as exc:
                    errors[name] = describe(exc)
                    traceback.print_exc()
                    progress(f"benchmarks: {name} FAILED: {errors[name]}")
                else:
                    progress(f"benchmarks: {name} done in {time.perf_counter() - t0:.1f} s")
        finally:
            try:
                await bench.aclose()
            except Exception as exc:
                errors["cleanup"] = describe(exc)
            nursery.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> int:
    """Run, print the table, write the JSON; exit status 1 if a section failed to run."""
    args = parse_args(argv)
    options = Options.quick() if args.quick else Options()
    collector = LogCollector()
    logging.getLogger("bigactor").addHandler(collector)
    env = environment()
    t0 = time.perf_counter()
    results: dict[str, Any] = {}
    errors: dict[str, str] = {}
    try:
        trio.run(run, options, args.sections, results, errors)
    except Exception as exc:
        traceback.print_exc()
        errors["run"] = describe(exc)
    doc = {
        "environment": env,
        "quick": args.quick,
        "options": dataclasses.asdict(options),
        "sections": [s for s in ALL if s in args.sections],
        "results": results,
        "errors": errors,
        "log": collector.records,
        "runtime_s": time.perf_counter() - t0,
    }
    doc["environment"]["loadavg_end"] = list(os.getloadavg())
    print(render(doc), end="")
    write_json(doc, args.json)
    progress(f"benchmarks: results written to {args.json}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
