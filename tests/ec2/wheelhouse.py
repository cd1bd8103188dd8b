"""Build or refresh the wheelhouse that the fake cloud's package server hands to instances.

Run by ``tests/ec2/run`` outside the hub network namespace, since only there can pip reach the
package index::

    python tests/ec2/wheelhouse.py --cache DIR [--requirements FILE ...]

Each requirement file holds one requirement a line. A bare name is pinned to the version that
``pip freeze`` reports for the running interpreter (the driver's environment), and the whole
freeze is passed as constraints, so the dependencies pip resolves are the driver's versions too:
an instance then runs exactly the code the driver runs. The pins are written to
``DIR/requirements.txt`` for the suite.

A second run whose pins are all in the cache resolves against the cache alone (``--no-index``)
and needs no network.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

PINS_NAME = "requirements.txt"


def normalize(name: str) -> str:
    """Return the PEP 503 normalized form of a project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def frozen_versions() -> dict[str, str]:
    """Return the installed version of each package of this interpreter's environment."""
    out = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    versions = {}
    for line in out.splitlines():
        name, sep, version = line.partition("==")
        if sep:
            versions[normalize(name)] = version.strip()
    return versions


def read_requirements(paths: list[Path]) -> list[str]:
    """Return the requirement lines of the files, comments and blank lines dropped."""
    lines: list[str] = []
    for path in paths:
        for raw in path.read_text().splitlines():
            line = raw.split("#", 1)[0].strip()
            if line and line not in lines:
                lines.append(line)
    return lines


def pin(requirements: list[str], versions: dict[str, str]) -> list[str]:
    """Pin each bare name to its installed version; keep lines that carry their own specifier."""
    pins = []
    for line in requirements:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", line):
            pins.append(line)
            continue
        version = versions.get(normalize(line))
        if version is None:
            raise SystemExit(
                f"wheelhouse: {line!r} is not installed in {sys.prefix}; "
                f"install it there or write it as {line}==VERSION"
            )
        pins.append(f"{line}=={version}")
    return pins


def download(cache: Path, pins_file: Path, constraints: Path, *, offline: bool) -> bool:
    """Run ``pip download`` of the pins into the cache; return whether it succeeded."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--disable-pip-version-check",
        "--only-binary=:all:",
        "--dest",
        str(cache),
        "--requirement",
        str(pins_file),
        "--constraint",
        str(constraints),
    ]
    if offline:
        # Only the cache: a complete cache must not need the network.
        env = {k: v for k, v in os.environ.items() if k != "PIP_FIND_LINKS"}
        cmd += ["--no-index", "--find-links", str(cache), "--quiet"]
        return subprocess.run(cmd, env=env, capture_output=True).returncode == 0
    return subprocess.run(cmd).returncode == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, required=True, help="the wheelhouse directory")
    parser.add_argument(
        "--requirements",
        type=Path,
        action="append",
        default=[],
        help="a requirements file (repeatable); default: worker-requirements.txt beside this file",
    )
    args = parser.parse_args(argv)
    files = args.requirements or [Path(__file__).with_name("worker-requirements.txt")]
    versions = frozen_versions()
    pins = pin(read_requirements(files), versions)
    cache: Path = args.cache
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pins_file = Path(tmp, "pins.txt")
        pins_file.write_text("\n".join(pins) + "\n")
        constraints = Path(tmp, "constraints.txt")
        constraints.write_text("".join(f"{name}=={v}\n" for name, v in sorted(versions.items())))
        if download(cache, pins_file, constraints, offline=True):
            print(f"wheelhouse: {len(pins)} pins satisfied from {cache}")
        elif download(cache, pins_file, constraints, offline=False):
            print(f"wheelhouse: downloaded {len(pins)} pins and their dependencies into {cache}")
        else:
            print(f"wheelhouse: pip download into {cache} failed", file=sys.stderr)
            return 1
    # Written last, and atomically: the file's presence tells the suite the cache is complete.
    tmp_pins = cache / f".{PINS_NAME}.tmp"
    tmp_pins.write_text("\n".join(pins) + "\n")
    tmp_pins.replace(cache / PINS_NAME)
    return 0


if __name__ == "__main__":
    sys.exit(main())
