"""``breakpoint()`` in an actor opens pdb in the driver's terminal: driver programs run under a
real pseudo-terminal (as a user runs them, with it as their controlling terminal, so Ctrl-C is
a real SIGINT from the line discipline), typed at as a user types."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import subprocess
import sys
import termios
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # real driver and worker processes

PROGRAM = """
import time, trio
import bigactor

class Stops:
    def compute(self, x):
        y = x * 2
        breakpoint()
        return y + 1

    async def acompute(self, x):
        z = x + 100
        breakpoint()
        return z

    def fail(self, x):
        ratio = x / 0
        return ratio
"""


class Terminal:
    """A driver program on a pseudo-terminal: read what it shows, type at it."""

    def __init__(self, tmp_path: Path, body: str, *, whole: bool = False) -> None:
        script = tmp_path / "driver.py"
        script.write_text(body if whole else PROGRAM + textwrap.dedent(body))
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            [sys.executable, str(script)],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=tmp_path,
            start_new_session=True,
            # The terminal becomes the program's controlling terminal: Ctrl-C is a SIGINT to it.
            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0),
        )
        os.close(slave)
        self.seen = b""

    def expect(self, text: str, timeout: float = 30) -> str:
        """Read until ``text`` appears; return everything up to it."""
        deadline = time.monotonic() + timeout
        want = text.encode()
        while want not in self.seen:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.master], [], [], max(0.0, left))
            if not ready:
                raise AssertionError(f"no {text!r} within {timeout} s; the terminal shows:\n{self.tail()}")
            try:
                self.seen += os.read(self.master, 65536)
            except OSError:  # the program ended
                raise AssertionError(f"the program ended before {text!r}:\n{self.tail()}") from None
        head, _, self.seen = self.seen.partition(want)
        return head.decode(errors="replace")

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def rest(self, timeout: float = 30) -> str:
        """Everything the program shows from here until it ends."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if ready:
                try:
                    data = os.read(self.master, 65536)
                except OSError:  # the program ended and its terminal with it
                    break
                if not data:
                    break
                self.seen += data
            elif self.proc.poll() is not None:
                break
        return self.seen.decode(errors="replace")

    def tail(self) -> str:
        return self.seen.decode(errors="replace")[-3000:]

    def finish(self, timeout: float = 30) -> int:
        code = self.proc.wait(timeout=timeout)
        os.close(self.master)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[list[Terminal]]:
    made: list[Terminal] = []
    yield made
    for t in made:
        if t.proc.poll() is None:
            t.kill()


def run(terminal: list[Terminal], tmp_path: Path, body: str, *, whole: bool = False) -> Terminal:
    t = Terminal(tmp_path, body, whole=whole)
    terminal.append(t)
    return t


def test_breakpoint_in_sync_and_async_methods_opens_pdb_in_the_drivers_terminal(
    terminal: list[Terminal], tmp_path: Path
) -> None:
    """The session names the machine and the file; pdb prints values and lists the source;
    Ctrl-C interrupts pdb's prompt, not the program; `c` lets the call return."""
    t = run(
        terminal,
        tmp_path,
        """
        async def main():
            async with bigactor.open_cluster() as cluster:
                s = await cluster.spawn(Stops)
                print("result", await s.compute(20), flush=True)
                print("aresult", await s.acompute(1), flush=True)

        bigactor.run(main)
        """,
    )
    header = t.expect("(Pdb) ")
    assert "--- bigactor: breakpoint on unix:" in header
    assert "(bigactor actor Stops-1) at" in header
    assert f"{tmp_path / 'driver.py'}:" in header
    t.type("p y\n")
    assert "40" in t.expect("(Pdb) ")
    t.type("l\n")
    assert "breakpoint()" in t.expect("(Pdb) ")
    t.type("\x03")  # Ctrl-C
    assert "--KeyboardInterrupt--" in t.expect("(Pdb) ")
    t.type("c\n")
    t.expect("result 41")
    assert "(MainThread) at" in t.expect("(Pdb) ")  # the async method: on the machine's loop
    t.type("p z\n")
    assert "101" in t.expect("(Pdb) ")
    t.type("c\n")
    t.expect("aresult 101")
    assert t.finish() == 0, t.tail()


def test_sessions_queue_and_a_paused_machine_is_not_lost(terminal: list[Terminal], tmp_path: Path) -> None:
    """Two machines stop at once: one session at a time, the other waits and says so. A machine
    held at the prompt far longer than its keepalive timeout (its event loop stopped too) is not
    declared lost: its call returns once the session ends."""
    t = run(
        terminal,
        tmp_path,
        """
        async def main():
            keepalive = bigactor.KeepaliveConfig(period=0.3, timeout=1.0, rpc_timeout=0.3)
            async with bigactor.open_cluster(keepalive=keepalive) as cluster:
                a = await cluster.spawn(Stops)
                b = await cluster.spawn(Stops)
                print("both", await bigactor.gather(a.acompute(1), b.acompute(2)), flush=True)

        bigactor.run(main)
        """,
    )
    first = t.expect("(Pdb) ")
    assert "--- bigactor: breakpoint on" in first
    time.sleep(3)  # three keepalive timeouts at the prompt
    t.type("c\n")
    second = t.expect("(Pdb) ")
    assert "stopped in the debugger; it waits for the session before it" in first + second
    assert "--- bigactor: breakpoint on" in second
    t.type("c\n")
    t.expect("both [101, 102]")
    assert t.finish() == 0, t.tail()


def test_debug_true_opens_a_post_mortem_session_before_the_error_returns(
    terminal: list[Terminal], tmp_path: Path
) -> None:
    """With open_cluster(debug=True), a method that raises stops in pdb at the raise, with its
    locals; after `c` the caller gets the error as usual."""
    t = run(
        terminal,
        tmp_path,
        """
        async def main():
            async with bigactor.open_cluster(debug=True) as cluster:
                s = await cluster.spawn(Stops)
                try:
                    await s.fail(7)
                except ZeroDivisionError as exc:
                    print("caught", type(exc).__name__, flush=True)

        bigactor.run(main)
        """,
    )
    header = t.expect("(Pdb) ")
    assert "(post mortem)" in header
    t.type("p x\n")
    assert "7" in t.expect("(Pdb) ")
    t.type("c\n")
    t.expect("caught ZeroDivisionError")
    assert t.finish() == 0, t.tail()


def test_a_machine_on_another_host_debugs_over_its_connection(
    terminal: list[Terminal], tmp_path: Path
) -> None:
    """A remote-style machine (mutual TLS, output over the connection, as an EC2 instance's):
    breakpoint() in a sync method opens the session over the authenticated connection; in an
    async method it says why it is skipped, and the method goes on."""
    tests = Path(__file__).resolve().parent
    t = run(
        terminal,
        tmp_path,
        f"""
        import sys
        sys.path.insert(0, {str(tests)!r})
        from pathlib import Path
        from channel_support import RemoteLikeSystem

        async def main():
            system = RemoteLikeSystem(directory=Path({str(tmp_path)!r}))
            async with bigactor.open_cluster(system) as cluster:
                s = await cluster.spawn(Stops)
                print("result", await s.compute(20), flush=True)
                print("aresult", await s.acompute(1), flush=True)

        bigactor.run(main)
        """,
    )
    header = t.expect("(Pdb) ")
    assert "--- bigactor: breakpoint on tls:127.0.0.1:" in header
    t.type("p y\n")
    assert "40" in t.expect("(Pdb) ")
    t.type("c\n")
    t.expect("result 41")
    rest = t.expect("aresult 101") + t.rest()  # the worker's stderr arrives in its own time
    assert "breakpoint() in an async method of a machine on another host is skipped" in rest
    assert t.finish() == 0, t.tail()


def test_the_readme_debugging_example_works_as_its_comment_says(
    terminal: list[Terminal], tmp_path: Path
) -> None:
    """The README's debug.py under a terminal: `p y` shows 40, `c` lets it print result 41."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = re.search(r"```python\n(# debug\.py.*?)```", readme, re.S)
    assert block, "no debug.py block in the README"
    t = run(terminal, tmp_path, block.group(1), whole=True)
    t.expect("(Pdb) ")
    t.type("p y\n")
    assert "40" in t.expect("(Pdb) ")
    t.type("c\n")
    t.expect("result 41")
    assert t.finish() == 0, t.tail()
