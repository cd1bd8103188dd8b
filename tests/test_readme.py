"""The README's examples run as written."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import trio

pytestmark = pytest.mark.slow

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()

COUNTER = """
class Counter:
    def __init__(self, start=0):
        self.n = start
    async def add(self, k):
        self.n += k
        return self.n
"""


def _block(marker: str) -> str:
    match = re.search(r"```python\n(" + re.escape(marker) + r".*?)```", README, re.S)
    assert match, f"no python block starting with {marker!r} in the README"
    return match.group(1)


async def test_readme_testing_example_passes(tmp_path: Path) -> None:
    """The "Testing your actors" example passes under pytest with the plugin, as a user runs it."""
    (tmp_path / "myproject.py").write_text(COUNTER)
    (tmp_path / "test_counter.py").write_text(_block("# test_counter.py"))
    (tmp_path / "pytest.ini").write_text("[pytest]\ntrio_mode = true\n")
    done = await trio.run_process(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    out = done.stdout.decode()
    assert done.returncode == 0, out
    assert "2 passed" in out


async def _run_block(tmp_path: Path, marker: str, *args: str) -> tuple[str, str]:
    """Run the README's python block starting with ``marker`` as a script with ``args``; its
    stdout, stderr."""
    script = tmp_path / "example.py"
    script.write_text(_block(marker))
    done = await trio.run_process(
        [sys.executable, str(script), *args],
        cwd=tmp_path,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    return done.stdout.decode(), done.stderr.decode()


async def test_readme_usage_example_runs(tmp_path: Path) -> None:
    """The "Use it in your project" example runs on the local system and prints what it says."""
    out, _ = await _run_block(tmp_path, "import trio\nimport bigactor\n")
    assert out.split("\n")[:3] == ["15", "[16, 17, 18]", "1"]


async def test_readme_actors_example_runs(tmp_path: Path) -> None:
    """The "Actors as Ray users expect them" example runs and prints what its comments say."""
    out, err = await _run_block(tmp_path, "# actors.py")
    assert out.split("\n")[:7] == [
        "[3, 6, 9]",
        "30",
        "[0, 3, 6, 9, 12]",
        "done",
        "15",
        "1",
        "",
    ]
    assert "worker shutting down" in err


async def test_readme_put_example_runs(tmp_path: Path) -> None:
    """The ``cluster.put`` example: four actors, one shared model, results in order."""
    out, _ = await _run_block(tmp_path, "# put.py")
    assert out.split("\n")[0] == "[1000000.0, 1000000.0, 1000000.0, 1000000.0]"


async def test_readme_flags_example_logs_from_the_actor(tmp_path: Path) -> None:
    """The logging example, run as its comment says: the program's flag reaches its parser,
    bigactor's log level reaches the actor."""
    out, err = await _run_block(tmp_path, "# flags.py", "--bigactor-log-level=info", "--times", "3")
    assert out.split("\n")[0] == "hi hi hi "
    assert "INFO app: talking 3 times" in err


async def test_readme_asyncio_example_runs(tmp_path: Path) -> None:
    """The asyncio example runs under ``asyncio.run`` and prints what its comments say."""
    out, _ = await _run_block(tmp_path, "# asyncio_main.py")
    assert out.split("\n")[:2] == ["hello, asyncio", "hello, again"]


async def test_readme_asyncio_actor_example_runs(tmp_path: Path) -> None:
    """The asyncio actor example runs and prints what its comment says."""
    out, _ = await _run_block(tmp_path, "# asyncio_actor.py")
    assert out.split("\n")[0] == "fetched after 0.1 s"
