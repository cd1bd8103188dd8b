"""An actor's log records show wherever the driver's would: the machines take the driver's root
logging level (``logging.basicConfig``, ``--bigactor-log-level``), unless the system's
``log_level`` says otherwise; a program that parses its own flags takes bigactor's first.
Real driver programs run as users run them; their stderr is read."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # real driver and worker processes

ACTOR = """
import logging, sys
import bigactor

class Chatty:
    async def talk(self):
        log = logging.getLogger("app.actor")
        log.debug("a debug line from the actor")
        log.info("an info line from the actor")
        log.warning("a warning from the actor")
        return sys.argv[1:]
"""


def run_program(tmp_path: Path, body: str, *args: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "prog.py"
    script.write_text(ACTOR + textwrap.dedent(body))
    return subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )


def test_basic_config_in_the_driver_applies_on_the_machines(tmp_path: Path) -> None:
    """``logging.basicConfig(level=INFO)`` in the driver: the actor's info shows, debug not."""
    done = run_program(
        tmp_path,
        """
        import trio
        logging.basicConfig(level=logging.INFO)

        async def main():
            async with bigactor.open_cluster() as cluster:
                await (await cluster.spawn(Chatty)).talk()

        trio.run(main)
        """,
    )
    assert done.returncode == 0, done.stderr
    assert "INFO app.actor: an info line from the actor" in done.stderr
    assert "a debug line" not in done.stderr


def test_the_log_level_flag_applies_on_the_machines_and_argparse_never_sees_it(tmp_path: Path) -> None:
    """``--bigactor-log-level=debug`` with the program's own argparse flags: ``take_flags()``
    first, then the parser; the actor logs at debug, and workers see only the program's flags."""
    done = run_program(
        tmp_path,
        """
        import argparse
        bigactor.take_flags()
        parser = argparse.ArgumentParser()
        parser.add_argument("--size", type=int, required=True)
        args = parser.parse_args()

        async def main(size):
            async with bigactor.open_cluster() as cluster:
                print(size, await (await cluster.spawn(Chatty)).talk())

        bigactor.run(main, args.size)
        """,
        "--bigactor-log-level=debug",
        "--size",
        "3",
    )
    assert done.returncode == 0, done.stderr
    assert "DEBUG app.actor: a debug line from the actor" in done.stderr
    assert done.stdout.strip() == "3 ['--size', '3']"


def test_the_systems_log_level_wins_over_the_drivers(tmp_path: Path) -> None:
    """``open_cluster(log_level=logging.WARNING)`` keeps the machines quieter than the driver."""
    done = run_program(
        tmp_path,
        """
        import trio
        logging.basicConfig(level=logging.DEBUG)

        async def main():
            async with bigactor.open_cluster(log_level=logging.WARNING) as cluster:
                await (await cluster.spawn(Chatty)).talk()

        trio.run(main)
        """,
    )
    assert done.returncode == 0, done.stderr
    assert "WARNING app.actor: a warning from the actor" in done.stderr
    assert "an info line" not in done.stderr
