"""The bootstrap: one ``#!/bin/sh`` script, the user data of every instance of a launch.

The script holds everything a fresh host needs and nothing that lets anyone act as the cluster:
the cluster CA *certificate* (public), a one-time enrollment token, the pinned packages, where to
install them from, the worker port and the boot agent (``_agent``), gzip+base64. Never the CA's
private key: the driver keeps it and signs each worker's own key at enrollment.

Stages, each logged with its time to the boot log (``/var/log/bigactor-boot.log`` by default)
and to stdout (the console):

* ``setup`` (only when given): shell commands the system adds (say, installing ``python3-venv``);
* ``python``: the configured interpreter, or ``python3.X`` of the driver's own minor version;
* ``packages``: a venv at ``<cache>/venv-<digest of the pins>``, reused when present, else made
  and filled with ``pip install --no-deps`` of the exact pins, then moved into place (so a
  half-made venv is never reused);
* ``agent``, ``enrollment``, ``bundle``, ``config``, ``worker``: the boot agent's (see
  ``_agent``), ending in the worker itself.

A failing stage prints ``bigactor boot: stage <name> failed after X s: <why>`` and the script
exits non-zero after running ``final`` (a shell command: ``poweroff`` on EC2, so that an
instance whose boot failed terminates; nothing in tests). ``final`` also runs when the worker
exits: what a system does with a host whose worker ended is its business.
"""

from __future__ import annotations

import ast
import base64
import gzip
import hashlib
import json
import re
import secrets
import shlex
import sys
from collections.abc import Iterable
from pathlib import Path

import attrs

from . import _agent

#: EC2's limit on user data (before base64)
MAX_USER_DATA = 16 * 1024
#: the port a remote worker listens on unless the system says otherwise
DEFAULT_PORT = 7300
_PIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9][A-Za-z0-9.+!_-]*$")


def new_token() -> bytes:
    """A fresh one-time enrollment token (one per launch)."""
    return secrets.token_bytes(_agent.TOKEN_SIZE)


def _strings(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(items)


def _python_version() -> str:
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


@attrs.frozen(kw_only=True)
class BootSpec:
    """What the user data of one launch says.

    Attributes:
        ca_pem: the cluster CA's certificate (public): the agent accepts only clients it signed.
        token: the one-time enrollment token, 32 random bytes (:func:`new_token`).
        pins: requirements ``name==version`` (see ``_pins.compute_pins``).
        index_url: the package index pip installs from; or
        find_links: a wheelhouse (a URL or directory of wheels), used with ``--no-index``.
        python: the interpreter (a command name or a path); None finds ``python3.X`` of
            ``python_version``.
        python_version: the Python minor version workers must run: the driver's.
        port: the port the agent, then the worker, listens on.
        host: the address the agent binds (every interface by default).
        cache: where venvs and bundles are cached, keyed by their digests.
        log: the boot log file.
        pip_options: more arguments for pip (``--trusted-host`` for an index served over
            plain HTTP, ``--find-links`` beside an index, ...), each one word.
        setup: shell commands run first, as the ``setup`` stage (empty: none).
        final: a shell command run when the boot fails or the worker exits (``poweroff`` on EC2).
        enroll_timeout: seconds the agent waits to be enrolled before it fails the boot.
    """

    ca_pem: bytes
    token: bytes = attrs.field(repr=False)
    pins: tuple[str, ...] = attrs.field(converter=_strings)
    index_url: str | None = None
    find_links: str | None = None
    python: str | None = None
    python_version: str = attrs.field(factory=_python_version)
    port: int = DEFAULT_PORT
    host: str = "0.0.0.0"
    cache: str = "/var/cache/bigactor"
    log: str = "/var/log/bigactor-boot.log"
    pip_options: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    setup: str = ""
    final: str = ""
    enroll_timeout: float = 600.0

    @token.validator
    def _check_token(self, _: object, value: bytes) -> None:
        if len(value) != _agent.TOKEN_SIZE:
            raise ValueError(f"the enrollment token must be {_agent.TOKEN_SIZE} random bytes")

    @pins.validator
    def _check_pins(self, _: object, value: tuple[str, ...]) -> None:
        for pin in value:
            if not _PIN.match(pin):
                raise ValueError(f"not a pin name==version: {pin!r}")

    def venv_digest(self) -> str:
        """What names the venv in the cache: the interpreter and the pins."""
        text = "\n".join([f"python {self.python or self.python_version}", *sorted(self.pins)])
        return hashlib.sha256(text.encode()).hexdigest()[:20]


def agent_source() -> str:
    """The boot agent's program as embedded: its source without docstrings and comments."""
    tree = ast.parse(Path(_agent.__file__).read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and isinstance(body, list)
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            del body[0]
            if not body:
                body.append(ast.Pass())
    return ast.unparse(tree) + "\n"


def _pack(text: str) -> str:
    data = base64.b64encode(gzip.compress(text.encode(), compresslevel=9, mtime=0)).decode()
    return "\n".join(data[i : i + 76] for i in range(0, len(data), 76))


def render_user_data(spec: BootSpec) -> bytes:
    """The user data script for ``spec``; ValueError if it is over EC2's 16 KiB."""
    if (spec.index_url is None) == (spec.find_links is None):
        raise ValueError("give exactly one of index_url and find_links")
    if spec.index_url is not None:
        source = f"--index-url {shlex.quote(spec.index_url)}"
    else:
        assert spec.find_links is not None
        source = f"--no-index --find-links {shlex.quote(spec.find_links)}"
    source = " ".join([source, *(shlex.quote(option) for option in spec.pip_options)])
    settings = {
        "token": spec.token.hex(),
        "ca": spec.ca_pem.decode(),
        "port": spec.port,
        "host": spec.host,
        "cache": spec.cache,
        "log": spec.log,
        "enroll_timeout": spec.enroll_timeout,
    }
    values = {
        "LOG": spec.log,
        "CACHE": spec.cache,
        "VENV": f"{spec.cache.rstrip('/')}/venv-{spec.venv_digest()}",
        "WANT": spec.python_version,
        "PYTHON": spec.python or "",
        "PINS": "\n".join(sorted(spec.pins)),
        "SETUP": spec.setup,
        "FINAL": spec.final,
        # The token travels only inside this variable and the agent's stdin (printf is a shell
        # builtin: never in any argv, never in the environment).
        "SETTINGS": json.dumps(settings, separators=(",", ":")),
        "AGENT": _pack(agent_source()),
    }
    assignments = "\n".join(f"{k}={shlex.quote(v)}" for k, v in values.items())
    script = _SCRIPT.replace("@ASSIGNMENTS@", assignments).replace("@SOURCE@", source)
    data = script.encode()
    if len(data) > MAX_USER_DATA:
        raise ValueError(
            f"the user data is {len(data)} bytes, over EC2's limit of {MAX_USER_DATA}: "
            f"fewer pins ({len(spec.pins)}) or a shorter setup would fit"
        )
    return data


# The script is POSIX sh (dash on Debian and Ubuntu): no bashisms. Times come from date +%s.%N
# (GNU); where %N is not supported they are whole seconds.
_SCRIPT = r"""#!/bin/sh
# bigactor boot: install the pinned packages, then run the boot agent (enrollment, bundle,
# worker). Generated by bigactor; the same bytes for every instance of a launch.
umask 077
@ASSIGNMENTS@

now() { t=$(date +%s.%N); case $t in *N) date +%s ;; *) echo "$t" ;; esac; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
say() {
    line="bigactor boot: [$(printf '%7s' "$(since "$T0")") s] $*"
    printf '%s\n' "$line"
    printf '%s\n' "$line" 2>/dev/null >>"$LOG"
}
finish() {
    if [ -n "$FINAL" ]; then say "running the final action: $FINAL"; eval "$FINAL"; fi
    exit "$1"
}
begin() { STAGE=$1; STAGE_T0=$(now); say "stage $1 ..."; }
done_() { say "stage $STAGE done in $(since "$STAGE_T0") s"; }
fail() { say "stage $STAGE failed after $(since "$STAGE_T0") s: $*"; finish 1; }

T0=$(now)
BIGACTOR_BOOT_T0=$T0
export BIGACTOR_BOOT_T0
mkdir -p "$(dirname "$LOG")" 2>/dev/null
if ! : 2>/dev/null >>"$LOG"; then
    echo "bigactor boot: cannot write $LOG; logging to the console only"
    LOG=/dev/null
fi
# Where this boot's lines begin: the driver is shown those only.
BIGACTOR_BOOT_LOG_START=$(wc -c <"$LOG" 2>/dev/null | tr -d ' ')
export BIGACTOR_BOOT_LOG_START
say "boot of $(hostname 2>/dev/null) begins; log in $LOG"

if [ -n "$SETUP" ]; then
    begin setup
    ( eval "$SETUP" ) >>"$LOG" 2>&1 || fail "the setup commands failed (status $?): see $LOG"
    done_
fi

begin python
version_of() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null; }
PY=
if [ -n "$PYTHON" ]; then
    command -v "$PYTHON" >/dev/null 2>&1 || fail "the configured python $PYTHON is not found"
    v=$(version_of "$PYTHON")
    [ "$v" = "$WANT" ] || fail "the configured python $PYTHON is Python ${v:-(unknown)}, the driver $WANT"
    PY=$PYTHON
else
    for c in "python$WANT" "/usr/bin/python$WANT" "/usr/local/bin/python$WANT" python3; do
        if command -v "$c" >/dev/null 2>&1 && [ "$(version_of "$c")" = "$WANT" ]; then PY=$c; break; fi
    done
    [ -n "$PY" ] || fail "no python$WANT found (the driver runs Python $WANT): install it or set python="
fi
say "python: $(command -v "$PY")"
done_

begin packages
if [ -x "$VENV/bin/python" ]; then
    say "venv $VENV is cached"
else
    mkdir -p "$CACHE" || fail "cannot create $CACHE"
    # Unique even where hosts share the cache (each host's PID namespace reuses $$).
    tmp=$(mktemp -d "$VENV.tmp.XXXXXX") || fail "cannot create a directory in $CACHE"
    if ! "$PY" -m venv "$tmp" >>"$LOG" 2>&1; then
        rm -rf "$tmp"
        fail "$PY -m venv failed (on Debian and Ubuntu, install python$WANT-venv): see $LOG"
    fi
    printf '%s\n' "$PINS" >"$tmp/bigactor-pins.txt"
    if ! "$tmp/bin/python" -m pip install --no-deps --no-input --disable-pip-version-check \
        --progress-bar off @SOURCE@ -r "$tmp/bigactor-pins.txt" >"$tmp/pip.log" 2>&1; then
        cat "$tmp/pip.log" 2>/dev/null >>"$LOG"
        tail -n 15 "$tmp/pip.log"
        rm -rf "$tmp"
        fail "pip could not install the pinned packages (see above and $LOG)"
    fi
    cat "$tmp/pip.log" 2>/dev/null >>"$LOG"
    # A venv that appears at $VENV is complete: another boot's rename, or this one.
    # (Onto an existing directory, mv would move the venv inside it.)
    [ -e "$VENV" ] || mv "$tmp" "$VENV" 2>/dev/null
    rm -rf "$tmp"
    [ -x "$VENV/bin/python" ] || fail "cannot move the venv into $VENV"
    say "venv $VENV made"
fi
done_

STAGE=agent
STAGE_T0=$(now)
work=$(mktemp -d) || fail "cannot make a temporary directory"
printf '%s' "$AGENT" | "$VENV/bin/python" -c \
    'import base64, gzip, sys; sys.stdout.buffer.write(gzip.decompress(base64.b64decode(sys.stdin.read())))' \
    >"$work/agent.py" || fail "cannot unpack the boot agent"
printf '%s' "$SETTINGS" | "$VENV/bin/python" "$work/agent.py"
status=$?
rm -rf "$work"
say "the boot agent, then worker, process exited with status $status"
finish "$status"
"""
