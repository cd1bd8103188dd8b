"""Pins: the exact third-party packages a remote worker installs, taken from the driver.

A remote host installs ``name==version`` of every distribution the worker needs, at the version
the driver runs, with ``pip install --no-deps`` (so nothing else is chosen on the host):

* bigactor's own runtime requirements and their closure (``importlib.metadata``), without
  :data:`DRIVER_ONLY` (what bigactor needs only to drive its systems: boto3 and what it alone
  brings) — unless the program's own code imports one of them;
* the distributions of the third-party modules the program has imported (``sys.modules``
  through ``importlib.metadata.packages_distributions``), with their closure, by the same rule;
* what the boot agent needs (:data:`AGENT_NEEDS`: ``cryptography``);
* plus ``packages=``, minus ``exclude_packages=``; bigactor itself never (it travels in the
  code bundle, at the driver's exact version), nor editable installs (their source does too).

The closure follows a requirement only into distributions installed in the driver's
environment, and a requirement under ``extra == ...`` only when that extra was asked for. So
environment markers are judged by what the driver has installed, which is right when driver and
worker share the platform and Python minor version (the user data checks the latter).
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import re
import sys
from collections.abc import Iterable

log = logging.getLogger("bigactor.remote")

#: distributions bigactor needs only on the driver, to drive its systems; pinned only when the
#: program's own code imports them or ``packages=`` names them
DRIVER_ONLY = frozenset({"boto3"})
#: what the boot agent imports besides the standard library
AGENT_NEEDS = frozenset({"cryptography"})

_REQUIREMENT = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?")
_EXTRA = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")


def canonical(name: str) -> str:
    """A distribution name in its PEP 503 normal form."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _installed() -> dict[str, importlib.metadata.Distribution]:
    found: dict[str, importlib.metadata.Distribution] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(canonical(name), dist)  # the first on sys.path is the one imported
    return found


def _requirements(
    dist: importlib.metadata.Distribution, extras: frozenset[str]
) -> list[tuple[str, frozenset[str]]]:
    """``dist``'s requirements (name, extras) that apply with ``extras`` asked for."""
    out = []
    for text in dist.requires or ():
        requirement, _, marker = text.partition(";")
        m = _REQUIREMENT.match(requirement)
        if m is None:
            continue
        wanted = {canonical(e) for e in _EXTRA.findall(marker)}
        if wanted and not wanted & extras:
            continue
        asked = frozenset(canonical(e.strip()) for e in (m.group(2) or "").split(",") if e.strip())
        out.append((canonical(m.group(1)), asked))
    return out


def _closure(
    roots: Iterable[tuple[str, frozenset[str]]], installed: dict[str, importlib.metadata.Distribution]
) -> set[str]:
    seen: dict[str, frozenset[str]] = {}
    todo = list(roots)
    while todo:
        name, extras = todo.pop()
        dist = installed.get(name)
        if dist is None:
            continue  # not installed here: its marker excluded it, or it is optional
        known = seen.get(name)
        if known is not None and extras <= known:
            continue
        seen[name] = extras | (known or frozenset())
        todo.extend(_requirements(dist, seen[name]))
    return set(seen)


def _editable(dist: importlib.metadata.Distribution) -> bool:
    try:
        text = dist.read_text("direct_url.json")
        info = json.loads(text) if text else {}
    except (OSError, ValueError):
        return False
    return bool(isinstance(info, dict) and info.get("dir_info", {}).get("editable"))


def module_distributions(modules: Iterable[str]) -> set[str]:
    """The distributions (canonical names) that provide the top-level modules of ``modules``."""
    mapping = importlib.metadata.packages_distributions()
    # A private top-level module (``_distutils_hack``, which setuptools' .pth file imports at
    # every start) is some package's internals, not something the program chose to import.
    tops = {m.partition(".")[0] for m in modules if not m.startswith("_")}
    names: set[str] = set()
    for top in tops - set(sys.stdlib_module_names) - {"__main__", "bigactor"}:
        names.update(canonical(d) for d in mapping.get(top, ()))
    return names


def compute_pins(
    *,
    modules: Iterable[str] | None = None,
    imports: Iterable[str] = (),
    packages: Iterable[str] = (),
    exclude_packages: Iterable[str] = (),
) -> tuple[str, ...]:
    """The sorted pins ``name==version`` a remote worker of this driver installs.

    Args:
        modules: the module names the program has imported (default: ``sys.modules``).
        imports: top-level names the program's own code imports (``Bundle.imports``): a
            driver-only distribution is pinned when one of its modules is among them.
        packages: more distributions to pin at their installed version, with their closure.
        exclude_packages: distributions never to pin.

    Raises ValueError if a distribution of ``packages`` is not installed.
    """
    installed = _installed()
    mapping = importlib.metadata.packages_distributions()
    used = {canonical(d) for top in set(imports) for d in mapping.get(top, ())}
    asked = {canonical(p) for p in packages}
    for name in sorted(asked - set(installed)):
        raise ValueError(f"packages=: {name!r} is not installed in the driver's environment")
    wanted = used | asked
    roots: set[str] = set(AGENT_NEEDS) | asked
    bigactor = installed.get("bigactor")
    if bigactor is not None:
        roots.update(name for name, _ in _requirements(bigactor, frozenset()))
    roots -= DRIVER_ONLY - wanted
    # What only the driver's systems bring, unless the program itself uses it: a module of
    # boto3's in sys.modules is there because the EC2 system imported it.
    driver_only = _closure(((n, frozenset()) for n in DRIVER_ONLY), installed)
    driver_only -= _closure(((n, frozenset()) for n in roots), installed)
    imported = module_distributions(sys.modules if modules is None else modules)
    dropped = (imported & driver_only) - wanted
    if dropped:
        log.debug("not pinned (only the driver's systems need them): %s", ", ".join(sorted(dropped)))
    kept = _closure(((n, frozenset()) for n in roots | (imported - dropped)), installed)
    pinned = kept - {canonical(p) for p in exclude_packages} - {"bigactor"}
    pins = []
    for name in sorted(pinned):
        dist = installed[name]
        if _editable(dist):
            log.debug("not pinned: %s is an editable install (its source travels in the bundle)", name)
            continue
        pins.append(f"{dist.metadata['Name']}=={dist.version}")
    return tuple(pins)
