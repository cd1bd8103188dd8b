"""A driver program the EC2 tests run as a user would: ``python <script> ...`` in its own
directory, talking JSON lines on stdout (its events) and stdin (commands), its stderr in a file."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

import pytest


class Program:
    """A running ``python <script> ...``: its JSON events, its stdin, its stderr in a file."""

    def __init__(self, script: str, argv: list[str], env: dict[str, str], cwd: Path, log: Path) -> None:
        self.log = log
        self._stderr = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, script, *argv],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        self.events: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        self._stdin = threading.Lock()
        self._eof = False
        assert self.process.stdout is not None
        threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True).start()

    def _read(self, stdout: TextIO) -> None:
        for line in stdout:
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "text", "line": line.rstrip()}
            with self._cond:
                self.events.append(event)
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def wait(self, event: str, tag: str | None = None, timeout: float = 200) -> dict[str, Any]:
        """The first ``event`` (with this ``tag``, if given); fails with the program's stderr if
        none comes within ``timeout`` seconds or the program ends first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for e in self.events:
                    if e.get("event") == event and (tag is None or e.get("tag") == tag):
                        return e
                left = deadline - time.monotonic()
                if self._eof or left <= 0:
                    break
                self._cond.wait(left)
        self.process.poll()
        pytest.fail(
            f"no {event!r} event{f' tagged {tag!r}' if tag else ''} from the program "
            f"(exit {self.process.returncode}); events {self.events}\n"
            f"--- stderr:\n{self.stderr()[-6000:]}"
        )

    def say(self, word: str) -> None:
        """Write one line to the program's stdin."""
        assert self.process.stdin is not None
        with self._stdin:
            self.process.stdin.write(word + "\n")
            self.process.stdin.flush()

    def send(self, op: str, **fields: object) -> None:
        """Send the program a command: one JSON line ``{"op": op, **fields}``."""
        self.say(json.dumps({"op": op, **fields}))

    def finish(self, timeout: float = 120) -> int:
        """Wait for the program to end (killing it after ``timeout``); its exit status."""
        try:
            code = self.process.wait(timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self._stderr.close()
            for pipe in (self.process.stdin, self.process.stdout):
                if pipe is not None:
                    pipe.close()
        return code

    def stderr(self) -> str:
        """What the program has written to stderr so far."""
        if not self._stderr.closed:
            self._stderr.flush()
        return self.log.read_text(errors="replace")
