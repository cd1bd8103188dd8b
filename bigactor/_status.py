"""The cluster as one program: every machine's status, a merged CPU profile, all stacks.

Everything here asks running machines through their Supervisor, in parallel, each answer
bounded in time; a machine that cannot answer is reported with its error, never waited on.
Only machines the cluster already knows are asked: an address it does not know is a
``LookupError``, never a new dial (bigmachine's profile handler dialed any address, §6.2).

What the driver knows without asking is in every entry too: what the machine's system says of
it (``details``: instance id, type, market, zone, ...), its price and what it cost so far; and
:class:`Cost` adds the costs up for the whole cluster.
"""

from __future__ import annotations

import io
import marshal
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import trio

from ._machine import Machine, State

if TYPE_CHECKING:
    import pstats

T = TypeVar("T")
ASK_TIMEOUT = 10.0


async def _gather(
    machines: Sequence[Machine], ask: Callable[[Machine], Awaitable[T]], limit: float = ASK_TIMEOUT
) -> tuple[dict[str, T], dict[str, str]]:
    """Ask every machine at once (each for at most ``limit`` s); answers and errors by address."""
    answers: dict[str, T] = {}
    errors: dict[str, str] = {}

    async def one(m: Machine) -> None:
        try:
            with trio.fail_after(limit):
                answers[m.addr] = await ask(m)
        except trio.TooSlowError:
            errors[m.addr] = f"no answer within {limit:.0f} s"
        except Exception as exc:
            errors[m.addr] = f"{type(exc).__name__}: {exc}"

    async with trio.open_nursery() as nursery:
        for m in machines:
            nursery.start_soon(one, m)
    return answers, errors


def select(machines: Sequence[Machine], addr: str | None) -> list[Machine]:
    """The running machines, or just ``addr`` (LookupError if the cluster does not know it)."""
    if addr is not None:
        found = [m for m in machines if m.addr == addr]
        if not found:
            raise LookupError(f"no machine {addr!r} in this cluster")
        return found
    return [m for m in machines if m.state == State.RUNNING]


async def _one_status(m: Machine) -> dict[str, Any]:
    stats = await m.call("Supervisor.status")
    info, mem, disk, load = stats["info"], stats["memory"], stats["disk"], stats["load"]
    return {
        "started": info.started,
        "uptime": time.time() - info.started,
        "pid": info.pid,
        "python": info.python,
        "memory": attrs.asdict(mem),
        "disk": attrs.asdict(disk),
        "load": attrs.asdict(load),
        "actors": stats["actors"],
        "server": stats["server"],
        "peer_calls": stats["client"],
    }


@attrs.frozen
class Cost:
    """What a cluster's machines cost so far, in US dollars: each machine's price per hour
    times the hours from its start to its stop (or to now).

    Attributes:
        dollars: the sum over the machines whose price is known.
        priced: how many machines that sum covers.
        unpriced: how many machines' systems gave no price: their part is unknown, not zero,
            and ``dollars`` is then a lower bound.
    """

    dollars: float
    priced: int
    unpriced: int

    @property
    def known(self) -> bool:
        """Whether every machine's price is known (``dollars`` is the whole cost)."""
        return self.unpriced == 0

    def __str__(self) -> str:
        unknown = f"{self.unpriced} machine{'s' * (self.unpriced != 1)} of unknown price"
        if not self.priced:
            return f"unknown ({unknown})" if self.unpriced else "$0 (no machines)"
        amount = f"${self.dollars:,.2f}" if self.dollars >= 1 else f"${self.dollars:.4f}"
        text = f"{amount} for {self.priced} machine{'s' * (self.priced != 1)}"
        return f"{text}, plus {unknown}" if self.unpriced else text


async def status(machines: Sequence[Machine]) -> list[dict[str, Any]]:
    """Status of every machine, sorted by address (plain data, ready for JSON).

    Each entry has the address, state, error, owner and keepalive figures the driver knows,
    the driver's own per-method counters for calls to it (``client``) and the machine's output
    lines the driver dropped (``output_dropped_lines``/``_bytes``: a full queue, or a stderr
    that could not be written), what its system says of it (``details``, a dict of strings),
    its ``price_per_hour`` and ``cost`` so far in US dollars (None where unknown), and whether
    it gave notice that it will go away (``draining``, ``notices``); for a running machine,
    what it reports: uptime (the machine's own, not the driver's), memory, disk, load, hosted
    actors, per-method counters of calls it served (``server``) and of calls it made to other
    machines (``peer_calls``).
    """
    running = [m for m in machines if m.state == State.RUNNING]
    answers, errors = await _gather(running, _one_status)
    out = []
    for m in sorted(machines, key=lambda m: m.addr):
        entry: dict[str, Any] = {
            "addr": m.addr,
            "state": str(m.state),
            "error": str(m.error) if m.error else None,
            "owned": m.owned,
            "hostname": m.hostname,
            "keepalive_next": (m.next_keepalive or None) if m.state == State.RUNNING else None,
            "keepalive_reply_ms": [round(t * 1e3, 3) for t in m.keepalive_reply_times],
            "client": m.metrics.snapshot(),
            "output_dropped_lines": m.output.dropped_lines,
            "output_dropped_bytes": m.output.dropped_bytes,
            "details": m.details,
            "price_per_hour": m.price_per_hour,
            "cost": m.cost(),
            "draining": m.draining,
            "notices": [str(n) for n in m.notices],
        }
        if m.addr in answers:
            entry.update(answers[m.addr])
        if m.addr in errors:
            entry["status_error"] = errors[m.addr]
        out.append(entry)
    return out


class _RawStats:
    """What ``pstats.Stats`` needs to load a stats dict that came over the wire."""

    def __init__(self, stats: dict[Any, Any]) -> None:
        self.stats = stats

    def create_stats(self) -> None:
        pass


def merge_pstats(parts: list[dict[Any, Any]]) -> pstats.Stats | None:
    """Merge the ``pstats`` dicts of several profiles into one ``pstats.Stats``."""
    import pstats  # here: a profile is rare, and every worker imports this module

    merged: pstats.Stats | None = None
    for part in parts:
        if not part:
            continue  # a machine that used no CPU (pstats refuses an empty table)
        if merged is None:
            merged = pstats.Stats(_RawStats(part))  # type: ignore[arg-type]
        else:
            merged.add(_RawStats(part))  # type: ignore[arg-type]
    return merged


@attrs.frozen
class Profile:
    """A CPU profile merged over machines: ``pstats`` and collapsed stacks (flame graphs)."""

    seconds: float
    machines: tuple[str, ...]
    errors: dict[str, str]
    stats: dict[Any, Any]  # the merged pstats dict
    collapsed: dict[str, int]

    def pstats(self) -> pstats.Stats:
        """The merged profile as ``pstats.Stats``; LookupError if it holds nothing (no machine
        used the CPU while it ran)."""
        merged = merge_pstats([self.stats]) if self.stats else None
        if merged is None:
            raise LookupError(self._empty())
        return merged

    def _empty(self) -> str:
        machines = f"{len(self.machines)} machine{'s' if len(self.machines) != 1 else ''}"
        return f"the profile is empty: no thread of the {machines} used the CPU in {self.seconds:g} s"

    def pstats_bytes(self) -> bytes:
        """The merged profile in the pstats file format (``pstats.Stats(path)``, snakeviz)."""
        return marshal.dumps(self.stats)

    def collapsed_text(self) -> str:
        """One line per stack, ``frame;frame;frame count`` (flamegraph.pl, speedscope)."""
        return "".join(f"{stack} {n}\n" for stack, n in sorted(self.collapsed.items()))

    def top(self, n: int = 30, sort: str = "cumulative") -> str:
        """The ``n`` heaviest functions as text (a line saying so when the profile is empty).

        In a sampled profile (the default kind) "ncalls" counts samples, and each thread
        appears as a function of its own, ``<thread NAME>``: an actor's sync methods run on
        ``<thread bigactor actor NAME>``, async ones on ``<thread MainThread>``.
        """
        if not self.stats:
            return self._empty() + "\n"
        out = io.StringIO()
        stats = self.pstats()
        stats.stream = out  # type: ignore[attr-defined]
        stats.sort_stats(sort).print_stats(n)
        return out.getvalue()


async def profile(machines: Sequence[Machine], seconds: float, kind: str = "sampled") -> Profile:
    """Profile ``machines`` at once for ``seconds`` and merge what they return."""
    answers, errors = await _gather(
        machines, lambda m: m.call("Supervisor.profile", seconds, kind), limit=seconds + ASK_TIMEOUT
    )
    merged = merge_pstats([a["pstats"] for a in answers.values()])
    collapsed: Counter[str] = Counter()
    for a in answers.values():
        collapsed.update(a["collapsed"])
    stats: dict[Any, Any] = getattr(merged, "stats", {})
    return Profile(seconds, tuple(sorted(answers)), errors, stats, dict(collapsed))


async def stacks(machines: Sequence[Machine]) -> dict[str, str]:
    """Every machine's threads and Trio task tree, as text, by address."""
    answers, errors = await _gather(machines, lambda m: m.call("Supervisor.stacks"))
    return {**answers, **{addr: f"(no stacks: {err})\n" for addr, err in errors.items()}}
