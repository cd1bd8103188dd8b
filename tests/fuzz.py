"""Fuzz what bigactor reads from a peer: ``python -m tests.fuzz --inputs N [target ...]``.

The targets (frames, websocket, upgrade, handshake, codec) are in ``tests/fuzz_targets.py``;
without a target named, all of them run, one after the other. A finding is an input that makes
a target raise anything but the library's own errors (``ProtocolError`` and its subclasses,
``CodecError``, ``WebSocketClosed``), crash, hang for ``--timeout`` seconds, or exceed 3 GiB.

Engine: atheris, Google's coverage-guided fuzzer for Python: libFuzzer's mutations steered by
the branches the inputs reach in bigactor's wire modules (instrumented when imported here). A
parser is where a random generator stalls on the first length field or magic string and a
coverage-guided one does not. libFuzzer ends the process it runs in, so each target runs in a
child process of its own, with fixed seeds (``--seed`` and ``PYTHONHASHSEED``), from a corpus
of inputs made by bigactor's own encoders. The child stops at the first finding: it prints the
traceback, writes the input to ``--artifacts``, and this command exits 1. Replay one with
``python -m tests.fuzz --child TARGET FILE``, and once fixed add it to ``FOUND`` in
``tests/test_fuzz.py``.

Async targets run in one Trio loop on a thread of the child, each input handed over with
``trio.from_thread.run`` (a ``trio.run`` per input costs about three times as much).

The test suite runs every target shortly (``tests/test_fuzz.py``); the long run is
``python -m tests.fuzz --inputs 1000000``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
#: the modules whose branches guide the fuzzer
INSTRUMENTED = ["bigactor._rpc", "bigactor._codec"]
MEMORY_LIMIT = 4 << 30  # address space: a silly length fails as MemoryError, not an OOM kill
RSS_LIMIT_MB = 3072
OUTCOMES = "OUTCOMES "


def _names() -> list[str]:
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    import fuzz_targets

    return list(fuzz_targets.TARGETS)


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        # No import of the targets here: in a child, bigactor must be imported instrumented.
        "targets",
        nargs="*",
        metavar="target",
        help="frames, websocket, ... (default all)",
    )
    parser.add_argument("--inputs", type=int, default=1_000_000, help="inputs per target (default 1,000,000)")
    parser.add_argument("--seed", type=int, default=1, help="libFuzzer's random seed (default 1)")
    parser.add_argument(
        "--max-len", type=int, help="largest input in bytes (default the target's, 4096 or more)"
    )
    parser.add_argument("--timeout", type=int, default=10, help="seconds one input may take (default 10)")
    parser.add_argument(
        "--artifacts", type=Path, help="where findings and logs go (default a new temporary dir)"
    )
    parser.add_argument("--child", metavar="TARGET", help=argparse.SUPPRESS)
    args, extra = parser.parse_known_args(argv)
    if args.child is not None:
        # The child hands what else it was given to libFuzzer: input files to run, options.
        args.extra = [*args.targets, *extra]
        return args
    if extra:
        parser.error(f"unrecognised arguments: {' '.join(extra)}")
    unknown = set(args.targets) - set(_names())
    if unknown:
        parser.error(f"unknown target(s) {', '.join(sorted(unknown))}: choose from {', '.join(_names())}")
    return args


# -- the parent: one child per target -------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    if args.child is not None:
        _child(args)  # never returns: libFuzzer exits
    artifacts = args.artifacts or Path(tempfile.mkdtemp(prefix="bigactor-fuzz-"))
    artifacts.mkdir(parents=True, exist_ok=True)
    print(f"fuzzing {args.inputs:,} inputs per target, seed {args.seed}; logs and findings in {artifacts}")
    # One after the other: each child keeps a core busy.
    failed = [name for name in args.targets or _names() if not _run_child(name, args, artifacts)]
    if failed:
        print(f"FINDINGS in {', '.join(failed)}: see above and {artifacts}")
        return 1
    print(f"no findings in {len(args.targets or _names())} target(s)")
    return 0


def _run_child(name: str, args: argparse.Namespace, artifacts: Path) -> bool:
    """Fuzz one target in a child process; print its figures; return whether it found nothing."""
    log = artifacts / f"{name}.log"
    command = [
        sys.executable, "-m", "tests.fuzz", "--child", name, f"--inputs={args.inputs}", f"--seed={args.seed}",
        f"--timeout={args.timeout}", f"--artifacts={artifacts}",
        *([f"--max-len={args.max_len}"] if args.max_len else []),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    start = time.perf_counter()
    with log.open("wb") as out:
        code = subprocess.run(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, check=False
        ).returncode
    wall = time.perf_counter() - start
    text = log.read_text(errors="replace")
    report: dict[str, Any] | None = None
    for line in text.splitlines():
        if line.startswith(OUTCOMES):
            report = json.loads(line[len(OUTCOMES) :])
    if code == 0 and report is not None and report["inputs"] == args.inputs:
        n, seconds = report["inputs"], report["seconds"]
        spread = ", ".join(
            f"{k} {v / n:.1%}" for k, v in sorted(report["outcomes"].items(), key=lambda kv: -kv[1])
        )
        done = [line for line in text.splitlines() if "DONE " in line]
        coverage = done[-1].split("DONE", 1)[1].split("lim:")[0].strip() if done else "?"
        print(
            f"{name}: {n:,} inputs in {seconds:.1f} s ({n / seconds:,.0f}/s; {wall:.1f} s with start-up), "
            f"0 findings; libFuzzer {coverage}\n    outcomes: {spread}"
        )
        return True
    print(f"{name}: FINDING (exit status {code}); the end of {log}:")
    print("\n".join("    " + line for line in text.splitlines()[-40:]))
    return False


# -- the child: one target under libFuzzer --------------------------------------------------------


def _child(args: argparse.Namespace) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT if hard < 0 else min(MEMORY_LIMIT, hard), hard))
    import atheris  # type: ignore[import-untyped]  # no stubs

    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    with atheris.instrument_imports(include=INSTRUMENTED):
        import fuzz_targets
    import trio

    target = fuzz_targets.TARGETS[args.child]
    fuzz_targets.restrict_unpickling()
    # libFuzzer adds what it finds to the corpus: kept with the findings, for a later look (and
    # grown further by a later run given the same --artifacts).
    if args.artifacts is not None:
        corpus = args.artifacts / f"{target.name}-corpus"
        corpus.mkdir(exist_ok=True)
    else:
        corpus = Path(tempfile.mkdtemp(prefix=f"bigactor-fuzz-{target.name}-"))
    for i, seed in enumerate(target.seeds()):
        (corpus / f"seed-{i}").write_bytes(seed)
    options = [
        f"-runs={args.inputs}",
        f"-seed={args.seed}",
        f"-max_len={args.max_len or target.max_len}",
        f"-timeout={args.timeout}",
        f"-rss_limit_mb={RSS_LIMIT_MB}",
        "-print_final_stats=1",
    ]
    if args.artifacts is not None:  # else libFuzzer writes findings to the working directory
        options.append(f"-artifact_prefix={args.artifacts}/{target.name}-")
    if target.tokens:
        tokens = corpus.parent / f"{corpus.name}.dict"
        tokens.write_text("".join(_dictionary_entry(t) for t in target.tokens))
        options.append(f"-dict={tokens}")
    run: Callable[[bytes], Any]
    if target.is_async:
        token = _trio_thread()
        run_async = cast(Callable[[bytes], Any], target.run)

        def run(data: bytes) -> None:
            trio.from_thread.run(run_async, data, trio_token=token)

    else:
        run = target.run
    count = 0
    started = 0.0

    def one(data: bytes) -> None:
        nonlocal count, started
        if not count:
            started = time.perf_counter()
        count += 1
        run(data)
        if count == args.inputs:
            # libFuzzer exits right after this input, skipping Python's atexit: report now.
            report = {
                "inputs": count,
                "seconds": time.perf_counter() - started,
                "outcomes": fuzz_targets.OUTCOMES,
            }
            print(OUTCOMES + json.dumps(report), flush=True)

    files = [a for a in args.extra if not a.startswith("-")]
    # Given input files, libFuzzer runs just those (to reproduce a finding); else it fuzzes.
    atheris.Setup([sys.argv[0], *options, *args.extra, *([] if files else [str(corpus)])], one)
    atheris.Fuzz()


def _dictionary_entry(token: bytes) -> str:
    """One line of a libFuzzer dictionary: the token, every byte escaped."""
    return '"' + "".join(f"\\x{b:02x}" for b in token) + '"\n'


def _trio_thread() -> Any:
    """Start a Trio loop on a thread for the async targets; return its token.

    A daemon thread, on purpose: libFuzzer ends the process with exit(), no Python code runs
    after the last input, and the loop holds nothing that needs closing.
    """
    import trio

    ready = threading.Event()
    tokens: list[trio.lowlevel.TrioToken] = []

    async def host() -> None:
        tokens.append(trio.lowlevel.current_trio_token())
        ready.set()
        await trio.sleep_forever()

    threading.Thread(target=trio.run, args=(host,), name="trio loop of the fuzz targets", daemon=True).start()
    ready.wait()
    return tokens[0]


if __name__ == "__main__":
    sys.exit(main())
