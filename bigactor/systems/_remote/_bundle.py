"""The code bundle: bigactor and the program's own modules, as one deterministic archive.

A remote host has the pinned third-party packages (``_pins``) but not the driver's code. The
bundle carries it:

* root ``0``: the ``bigactor`` package itself, the installed package's files at the driver's
  exact version;
* one root per directory of the driver's ``sys.path`` outside the standard library and
  ``site-packages`` (the script's directory, ``PYTHONPATH`` entries, ``.pth`` source roots of
  editable installs): its top-level ``.py`` modules, its regular packages whole (package data
  too), and its namespace packages that the program has imported;
* one more root for the program's imported modules that come from none of those (editable
  installs served by an import hook): their top-level packages.

Skipped everywhere: ``__pycache__``, compiled files, hidden entries (``.git``, ``.venv``),
virtualenvs (a directory holding ``pyvenv.cfg``), ``*.egg-info``/``*.dist-info``, and files
over ``max_file_size`` (with a warning). A bundle over ``max_size`` is an error naming its
largest roots.

The archive is a gzip'd tar whose bytes depend only on the files: entries sorted, mtime 0, no
owners, modes 0644, gzip without a timestamp. Its SHA-256 names it in a host's cache, so a
second machine on the same host, or a host reused by a later run of the same code, receives
nothing. The worker's ``sys.path`` lists the roots relative to the bundle (``Bundle.sys_path``).
"""

from __future__ import annotations

import ast
import contextlib
import gzip
import hashlib
import io
import logging
import os
import site
import sys
import sysconfig
import tarfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from types import ModuleType

import attrs

log = logging.getLogger("bigactor.remote")

MAX_FILE_SIZE = 8 << 20
MAX_SIZE = 256 << 20
_SKIP_SUFFIXES = (".pyc", ".pyo", ".egg-info", ".dist-info")


@attrs.frozen
class Bundle:
    """A built bundle: its archive, digest and what the worker's ``sys.path`` lists.

    Attributes:
        data: the gzip'd tar.
        digest: SHA-256 of ``data``, lowercase hex.
        sys_path: the roots inside the bundle, in the driver's ``sys.path`` order.
        sources: the driver directory each root came from.
        files: how many files it holds.
        imports: top-level module names the program's own files import (for ``_pins``).
        skipped: files left out for their size.
    """

    data: bytes = attrs.field(repr=False)
    digest: str
    sys_path: tuple[str, ...]
    sources: tuple[str, ...]
    files: int
    imports: frozenset[str] = attrs.field(repr=False)
    skipped: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        """Bytes of the archive."""
        return len(self.data)


def _excluded_dirs() -> set[Path]:
    """Where the standard library and installed packages live: never bundled."""
    paths = set()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        for scheme_vars in ({}, {"base": sys.base_prefix, "platbase": sys.base_exec_prefix}):
            with contextlib.suppress(KeyError):
                paths.add(Path(sysconfig.get_path(key, vars=scheme_vars)))
    paths.update(Path(p) for p in site.getsitepackages())
    user = site.getusersitepackages()
    if isinstance(user, str):
        paths.add(Path(user))
    return {p.resolve() for p in paths}


def _under(path: Path, dirs: Iterable[Path]) -> bool:
    return any(path == d or d in path.parents for d in dirs)


def _skip_name(name: str) -> bool:
    return name.startswith(".") or name == "__pycache__" or name.endswith(_SKIP_SUFFIXES)


def _walk(directory: Path) -> Iterator[Path]:
    """Files under ``directory``, sorted, without skipped names, virtualenvs or symlinked dirs."""
    try:
        entries = sorted(directory.iterdir())
    except OSError as exc:
        log.warning("bundle: cannot list %s: %s", directory, exc)
        return
    for entry in entries:
        if _skip_name(entry.name):
            continue
        if entry.is_dir():
            if entry.is_symlink() or (entry / "pyvenv.cfg").exists():
                continue
            yield from _walk(entry)
        elif entry.is_file():
            yield entry


def _imported_namespaces(modules: Mapping[str, ModuleType | None]) -> set[Path]:
    """Directories of namespace packages the program imported (they have no ``__init__``)."""
    found = set()
    for module in list(modules.values()):
        if module is None or getattr(module, "__file__", None) is not None:
            continue
        for entry in getattr(module, "__path__", None) or ():
            if isinstance(entry, str):
                found.add(Path(entry).resolve())
    return found


def _root_files(root: Path, namespaces: set[Path]) -> Iterator[tuple[str, Path]]:
    """(path inside the root, file) of what ``root`` contributes; see the module docstring."""
    try:
        entries = sorted(root.iterdir())
    except OSError as exc:
        log.warning("bundle: cannot list %s: %s", root, exc)
        return
    for entry in entries:
        if _skip_name(entry.name):
            continue
        if entry.is_file() and entry.suffix == ".py":
            yield entry.name, entry
        elif (
            entry.is_dir()
            and not (entry / "pyvenv.cfg").exists()
            and ((entry / "__init__.py").is_file() or entry.resolve() in namespaces)
        ):
            for f in _walk(entry):
                yield f.relative_to(root).as_posix(), f


def _module_roots(
    modules: Mapping[str, ModuleType | None], covered: list[Path], excluded: set[Path]
) -> list[tuple[str, Path]]:
    """Top-level modules the program imported from outside every root and installed place."""
    found: dict[str, Path] = {}
    for name, module in list(modules.items()):
        if "." in name or module is None or name in ("__main__", "bigactor"):
            continue
        file = getattr(module, "__file__", None)
        if not isinstance(file, str):
            continue
        path = Path(file).resolve()
        target = path.parent if path.name == "__init__.py" else path
        if _under(target, excluded) or _under(target, covered):
            continue
        if target.suffix not in ("", ".py") or not target.exists():
            continue  # an extension module: it belongs in a wheel, not in the bundle
        found[name] = target
    return sorted(found.items())


def _imports_of(source: bytes) -> set[str]:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return set()
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name.partition(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.partition(".")[0])
    return names


def _archive(entries: list[tuple[str, bytes]]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(entries):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), compresslevel=6, mtime=0)


def build_bundle(
    *,
    sys_path: Iterable[str] | None = None,
    modules: Mapping[str, ModuleType | None] | None = None,
    max_file_size: int = MAX_FILE_SIZE,
    max_size: int = MAX_SIZE,
) -> Bundle:
    """Build the bundle of this driver: bigactor, then its ``sys_path`` roots (see above).

    Args:
        sys_path: the driver's ``sys.path`` (default: the live one).
        modules: the imported modules (default: ``sys.modules``).
        max_file_size: larger files are left out, with a warning.
        max_size: ValueError if the files add up to more.

    Blocking (it reads every file): call it through ``trio.to_thread.run_sync``.
    """
    import bigactor

    modules = sys.modules if modules is None else modules
    excluded = _excluded_dirs()
    package = Path(bigactor.__file__).resolve().parent
    roots: list[tuple[Path, list[tuple[str, Path]]]] = [
        (package.parent, [(f.relative_to(package.parent).as_posix(), f) for f in _walk(package)])
    ]
    seen: list[Path] = []
    namespaces = _imported_namespaces(modules)
    for entry in sys.path if sys_path is None else sys_path:
        root = Path(entry or os.getcwd()).resolve()
        if not root.is_dir() or root in seen or _under(root, excluded):
            continue
        seen.append(root)
        files = [(name, f) for name, f in _root_files(root, namespaces) if not _under(f, [package])]
        if files:
            roots.append((root, files))
    extra = _module_roots(modules, [package, *seen], excluded)
    if extra:
        files = []
        for _, target in extra:
            if target.is_dir():
                files += [(f.relative_to(target.parent).as_posix(), f) for f in _walk(target)]
            else:
                files.append((target.name, target))
        roots.append((Path("(modules imported from elsewhere)"), files))

    entries: list[tuple[str, bytes]] = []
    imports: set[str] = set()
    skipped: list[str] = []
    sizes: dict[str, int] = {}
    total = 0
    for i, (root, files) in enumerate(roots):
        for name, path in files:
            try:
                size = path.stat().st_size
                if i > 0 and size > max_file_size:  # bigactor's own files are all needed
                    skipped.append(str(path))
                    log.warning(
                        "bundle: left out %s (%d bytes, over the limit of %d)", path, size, max_file_size
                    )
                    continue
                data = path.read_bytes()
            except OSError as exc:
                log.warning("bundle: cannot read %s: %s", path, exc)
                continue
            total += len(data)
            sizes[str(root)] = sizes.get(str(root), 0) + len(data)
            if i > 0 and name.endswith(".py"):
                imports |= _imports_of(data)
            entries.append((f"{i}/{name}", data))
    if total > max_size:
        largest = ", ".join(f"{r} ({n >> 20} MiB)" for r, n in sorted(sizes.items(), key=lambda x: -x[1])[:3])
        raise ValueError(
            f"the code bundle would be {total >> 20} MiB, over the limit of {max_size >> 20} MiB; "
            f"largest roots: {largest}. Move data out of the program's directories"
        )
    data = _archive(entries)
    return Bundle(
        data=data,
        digest=hashlib.sha256(data).hexdigest(),
        sys_path=tuple(str(i) for i in range(len(roots))),
        sources=tuple(str(root) for root, _ in roots),
        files=len(entries),
        imports=frozenset(imports - set(sys.stdlib_module_names)),
        skipped=tuple(skipped),
    )
