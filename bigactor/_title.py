"""Process titles: what ``ps``, ``top`` and ``htop`` show for the processes bigactor starts.

Every worker would otherwise read ``python -m bigactor.supervisor ...`` or, forked from the fork
server, the fork server's own command line. Instead (with setproctitle, which rewrites the
command line ``ps`` shows and the 15-character name ``top`` shows):

- a worker: ``bigactor worker <address>: <its actors>``, kept current as actors come and go;
- the fork server: ``bigactor fork server (driver <pid>)``.

The local system's guardian keeps its command line, ``python -I -S .../_guardian.py``: it starts
isolated from site-packages (to start fast), where setproctitle is not importable, and that
already says what it is.

Only processes bigactor starts are titled: the driver, and a test system's in-process machines,
keep the program's own title.
"""

from __future__ import annotations

from collections.abc import Iterable

SHOWN = 8  # actors named in a worker's title; the rest are counted


def set_title(title: str) -> None:
    """Make ``title`` this process's title (a no-op where setproctitle cannot be imported)."""
    try:
        import setproctitle
    except ImportError:  # pragma: no cover - a declared dependency; titles are a convenience
        return
    setproctitle.setproctitle(title)


def worker_title(addr: str, actors: Iterable[str]) -> str:
    """A worker's title: its address and the names of the actors it hosts."""
    names = [name for name in actors if name != "Supervisor"]
    title = f"bigactor worker {addr}"
    if names:
        title += ": " + ", ".join(names[:SHOWN])
        if len(names) > SHOWN:
            title += f" and {len(names) - SHOWN} more"
    return title


def helper_title(role: str, driver: int) -> str:
    """The title of one of the driver's helper processes (``role``: the fork server)."""
    return f"bigactor {role} (driver {driver})"
