"""The debug HTTP server: the cluster's status page, merged CPU profiles, stacks and counters.

``serve_debug(cluster)`` (or ``open_cluster(debug_address=...)``) serves, on loopback by
default:

* ``/debug/bigactor/status`` (also ``/debug/bigactor/``): every machine as an HTML table that
  refreshes itself, with what its system says of it (instance id, type, market, zone, price)
  and the cluster's cost so far; the same as JSON with ``?format=json`` (a list of machines),
  as a plain text table with ``?format=text``.
* ``/debug/bigactor/profile?seconds=N[&machine=ADDR][&format=pstats|collapsed|text]
  [&kind=sampled|cprofile]``: a CPU profile taken on all running machines at once and merged
  (``Cluster.profile``: sampled from every thread by default): a pstats file (the default; open
  it with ``pstats`` or snakeviz), collapsed stacks for flame graphs (flamegraph.pl,
  speedscope), or the top functions as text. An unknown ``machine`` is a 404, never a dial.
* ``/debug/bigactor/stacks``: every machine's threads and Trio task tree, as text.
* ``/debug/bigactor/cost``: what the cluster's machines cost so far, as JSON (see
  ``_status.Cost``).
* ``/debug/bigactor/vars``: per-method counters on both sides of every call, as JSON;
  ``/debug/bigactor/metrics``: the same in Prometheus text exposition.

Every page needs the server's token, as Jupyter's do: ``cluster.debug_url`` carries it
(``http://127.0.0.1:PORT/debug/bigactor/?token=...``, logged once at INFO by the
``bigactor.debug`` logger), and a client sends it either as that ``token`` query parameter or
as ``Authorization: Bearer <token>`` (what the ``bigactor`` command line and a Prometheus
``authorization: {credentials: ...}`` scrape send). The token is ``serve_debug(token=...)`` or
``open_cluster(debug_token=...)``, else ``BIGACTOR_DEBUG_TOKEN``, else a random one per server.

What else guards it, and why:

* Host: only IP literals, ``localhost``, the bound host and this machine's own names, so a web
  page cannot reach the server by DNS rebinding. A request with an ``Origin`` other than the
  server's own is refused, and no CORS header is ever sent.
* Bounds: a client has ``HEAD_TIMEOUT`` seconds to send its request head and ``SEND_TIMEOUT``
  to take the reply. At most ``MAX_CONNECTIONS`` connections are open at once: beyond, a new
  connection takes the place of the oldest one still sending its head, or is refused with a
  503 when all of them are being served, so idle clients can neither exhaust the driver's file
  descriptors (which its machines need) nor keep an authenticated client out.
* Profiles: at most ``MAX_PROFILE_SECONDS`` long, one at a time (409 while one runs), and
  stopped, on every machine, as soon as the client that asked for one disconnects.

It serves JSON, HTML and text only (it decodes nothing it is sent beyond the request head),
one request per connection; every reply forbids caching, referrers, framing and scripts. It
speaks plain HTTP, and whoever holds the token can read every machine's state: keep it on
loopback (the default) or a trusted network.
"""

from __future__ import annotations

import contextlib
import hmac
import html
import ipaddress
import json
import logging
import math
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, quote, urlencode, urlsplit, urlunsplit

import attrs
import h11
import trio

from ._cluster import Cluster
from ._dashboard import PERIOD, History, flame_svg, sparkline, summary

log = logging.getLogger("bigactor.debug")
PREFIX = "/debug/bigactor/"
#: the environment variable that holds the token when none is given (a stable one for Prometheus)
TOKEN_ENV = "BIGACTOR_DEBUG_TOKEN"
#: seconds a client has to send its whole request head before it is dropped
HEAD_TIMEOUT = 10.0
#: seconds a client has to take its reply
SEND_TIMEOUT = 30.0
#: connections open at once; see ``_Server.handle`` for what happens beyond
MAX_CONNECTIONS = 64
#: the longest profile; cProfile slows every machine while it runs
MAX_PROFILE_SECONDS = 60.0

Reply = tuple[int, str, bytes, list[tuple[str, str]]]

# On every reply: the token travels in URLs, so no referrer and no cache may keep them; the
# pages run no script and are never framed.
SAFE_HEADERS = [
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-store"),
    ("x-content-type-options", "nosniff"),
    ("content-security-policy", "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"),
]
NEED_TOKEN = (
    "bigactor debug server: this page needs the server's token. Open the URL in "
    "cluster.debug_url (it ends with ?token=...; the 'bigactor.debug' logger also logs it once "
    "at startup), or send the header 'Authorization: Bearer <token>'.\n"
)


def _json(value: Any) -> Reply:
    return 200, "application/json", json.dumps(value, indent=1, default=str).encode(), []


def _text(status: int, text: str) -> Reply:
    return status, "text/plain; charset=utf-8", text.encode(), []


def _log(level: int, msg: str, *args: Any, exc_info: bool = False) -> None:
    # logging.Handler.handleError raises ValueError when sys.stderr itself is closed: the
    # driver's stderr may be gone, and neither the server nor the cluster whose nursery runs
    # it may fail for a log line (the URL is also on cluster.debug_url).
    with contextlib.suppress(Exception):
        log.log(level, msg, *args, exc_info=exc_info)


def page_url(debug_url: str, page: str, **query: str | float | None) -> str:
    """The URL of ``page`` (``"status"``, ``"profile"``, ...) on the server at ``debug_url``.

    ``debug_url`` is ``cluster.debug_url`` (or any page of the server, or ``host:port``); its
    ``token`` is kept and ``query`` added, leaving out None values::

        page_url(cluster.debug_url, "profile", seconds=5, format="text")
    """
    parts = urlsplit(debug_url if "://" in debug_url else f"http://{debug_url}")
    at = parts.path.find(PREFIX)
    path = parts.path[: at + len(PREFIX)] if at >= 0 else parts.path.rstrip("/") + PREFIX
    params = {k: str(v) for k, v in query.items() if v is not None}
    token = parse_qs(parts.query).get("token")
    if token:
        params["token"] = token[-1]
    return urlunsplit((parts.scheme, parts.netloc, path + page, urlencode(params, quote_via=quote), ""))


def _choose_token(token: str | None) -> str:
    if token is None:
        # Hex, as Jupyter's: no leading "-" to look like an option, and a double click selects
        # all of it in a terminal.
        token = os.environ.get(TOKEN_ENV) or secrets.token_hex(24)
    if not token or not token.isascii() or not token.isprintable() or " " in token:
        raise ValueError(
            "the debug token must be printable ASCII without spaces, e.g. secrets.token_hex() "
            f"(from serve_debug(token=...), open_cluster(debug_token=...) or {TOKEN_ENV})"
        )
    return token


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000:
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1000
    return f"{n:.1f} PB"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def _price(per_hour: float | None) -> str:
    return "price unknown" if per_hour is None else f"${per_hour:.4f}/h"


def _machine_lines(m: dict[str, Any]) -> list[str]:
    """What the driver knows of a machine beyond its address: its system's details, its price
    and cost, its notices."""
    lines = [f"{k}: {v}" for k, v in m.get("details", {}).items()]
    if m.get("price_per_hour") is not None:
        lines.append(f"{_price(m['price_per_hour'])}, ${m['cost']:.4f} so far")
    if m.get("draining"):
        lines += [f"DRAINING: {n}" for n in m.get("notices", [])]
    return lines


def status_text(machines: list[dict[str, Any]], cost: str | None = None) -> str:
    """The entries of ``Cluster.status()`` as a plain text table, each machine's details below
    it, and the cluster's ``cost`` last."""
    header: tuple[str, ...] = ("MACHINE", "STATE", "UPTIME", "MEM", "LOAD", "CALLS", "ERROR")
    rows: list[tuple[tuple[str, ...], list[str]]] = []
    for m in machines:
        served = [c for k, c in m.get("server", {}).items() if not k.startswith("Supervisor.")]
        mem, load = m.get("memory"), m.get("load")
        row: tuple[str, ...] = (
            m["addr"],
            m["state"] + (" draining" if m.get("draining") else ""),
            _duration(m["uptime"]) if "uptime" in m else "-",
            f"{mem['percent']:.0f}%" if mem else "-",
            f"{load['load1']:.2f}" if load else "-",
            str(sum(c["count"] for c in served)),
            (m["error"] or m.get("status_error") or "")[:200],
        )
        rows.append((row, _machine_lines(m)))
    widths = [max([len(header[i])] + [len(r[i]) for r, _ in rows]) for i in range(len(header))]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip() + "\n"

    out = [line(header)]
    for cells, more in rows:
        out.append(line(cells))
        out.extend(f"    {text}\n" for text in more)
    if cost is not None:
        out.append(f"cost so far: {cost}\n")
    return "".join(out)


def status_html(
    machines: list[dict[str, Any]],
    refresh: int = 5,
    token: str | None = None,
    cost: str | None = None,
    history: History | None = None,
) -> str:
    """The status page for the entries of ``Cluster.status()``; its links carry ``token``;
    ``cost`` is the cluster's cost so far (``str(cluster.cost())``); ``history``, the samples
    the charts are drawn from (see ``_dashboard``)."""
    history = history if history is not None else History()
    tok = html.escape(f"token={quote(token, safe='')}") if token is not None else ""
    amp = "&amp;" if tok else ""
    ask = "?" if tok else ""
    rows = []
    now = time.time()
    for m in machines:
        e = html.escape
        calls = {**m.get("server", {})}
        methods = "<br>".join(
            f"{e(name)}: {c['count']} calls, {c['mean_ms']} ms mean, {c['max_ms']} ms max"
            + (f", <b>{c['errors']} errors</b>" if c["errors"] else "")
            for name, c in sorted(calls.items())
            if not name.startswith("Supervisor.")
        )
        mem, disk, load = m.get("memory"), m.get("disk"), m.get("load")
        nxt = m.get("keepalive_next")
        mem_cell = (
            f"{_size(mem['used'])} / {_size(mem['total'])} ({mem['percent']}%)<br>rss {_size(mem['rss'])}"
            if mem
            else ""
        )
        disk_cell = f"{_size(disk['used'])} / {_size(disk['total'])} ({disk['percent']}%)" if disk else ""
        load_cell = f"{load['load1']:.2f} {load['load5']:.2f} {load['load15']:.2f}" if load else ""
        about = "".join(f"<br><small>{e(text)}</small>" for text in _machine_lines(m))
        series = history.series(m["addr"])
        rate = series["calls_per_s"]
        charts = (
            f"<td>{sparkline(rate, 'calls served a second')}<br>{history.rate(m['addr']):,.0f}/s</td>"
            f"<td>{sparkline(series['rss'], 'resident memory')}<br>{mem_cell}</td>"
            f"<td>{sparkline(series['load'], 'load average (1 min)')}<br>{load_cell}</td>"
        )
        rows.append(
            "<tr>"
            f"<td>{e(m['addr'])}{about}</td><td class='{e(m['state'])}'>{e(m['state'])}</td>"
            f"<td>{_duration(m['uptime']) if 'uptime' in m else ''}</td>"
            f"<td>{'in ' + _duration(nxt - now) if nxt else ''}<br>"
            f"{', '.join(str(t) for t in m['keepalive_reply_ms'][:5])} ms</td>"
            f"{charts}<td>{disk_cell}</td>"
            f"<td>{'<br>'.join(f'{e(n)} ({e(t)})' for n, t in m.get('actors', {}).items())}</td>"
            f"<td>{methods}</td>"
            f"<td>{e(m['error'] or m.get('status_error') or '')}</td>"
            "</tr>"
        )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="{refresh}; url=status{ask}{tok}">
<title>bigactor status</title>
<style>
body {{ font-family: sans-serif; margin: 1em; }}
table {{ border-collapse: collapse; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; font-size: 90%; }}
th {{ background: #eee; position: sticky; top: 0; }} .RUNNING {{ color: green; }} .STOPPED {{ color: #b00; }}
svg.spark {{ background: #f6f8fa; }} svg.spark polyline {{ fill: none; stroke: #2a6fdb; stroke-width: 1.5; }}
svg.spark line.empty {{ stroke: #ccc; }} p.summary {{ font-size: 110%; }}
</style></head><body>
<h1>bigactor: {len(machines)} machines</h1>
<p class="summary">{html.escape(summary(machines, history))}</p>
{f"<p>Cost so far: {html.escape(cost)}</p>" if cost is not None else ""}
<p>Refreshes every {refresh} s. <a href="status?format=json{amp}{tok}">JSON</a> ·
<a href="stacks{ask}{tok}">stacks</a> · <a href="vars{ask}{tok}">vars</a> ·
<a href="metrics{ask}{tok}">metrics</a> ·
<a href="profile?seconds=5&amp;format=text{amp}{tok}">profile 5 s</a> ·
<a href="profile?seconds=5&amp;format=flame{amp}{tok}">flame graph 5 s</a>
· charts: the last {int(history.window // 60)} minutes</p>
<table><tr><th>machine</th><th>state</th><th>uptime</th><th>keepalive (next; replies)</th>
<th>calls/s</th><th>memory</th><th>load</th><th>disk</th><th>actors</th><th>calls served</th>
<th>error</th></tr>
{"".join(rows)}
</table></body></html>
"""


def flame_html(collapsed: dict[str, int], title: str) -> str:
    """A page showing the flame graph of ``collapsed`` stacks (see ``_dashboard.flame_svg``)."""
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>bigactor flame graph</title>
<style>body {{ font-family: sans-serif; margin: 1em; }} svg.flame text {{ pointer-events: none; }}</style>
</head><body><h1>bigactor: flame graph</h1>
<p>Each box is a function, as wide as its share of the CPU samples, above its caller;
hover for its name and share.</p>
{flame_svg(collapsed, title)}
</body></html>
"""


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def prometheus_text(machines: list[dict[str, Any]]) -> str:
    """The status entries as Prometheus text exposition (format 0.0.4)."""
    series: dict[str, list[str]] = {
        "bigactor_machine_up": [],
        "bigactor_machine_rss_bytes": [],
        "bigactor_calls_total": [],
        "bigactor_call_errors_total": [],
        "bigactor_call_seconds_total": [],
        "bigactor_call_request_bytes_total": [],
        "bigactor_call_reply_bytes_total": [],
        "bigactor_output_dropped_lines_total": [],
        "bigactor_machine_price_dollars_per_hour": [],
        "bigactor_machine_cost_dollars": [],
    }
    for m in machines:
        machine = f'machine="{_label(m["addr"])}"'
        series["bigactor_machine_up"].append(f"{{{machine}}} {int(m['state'] == 'RUNNING')}")
        if "memory" in m:
            series["bigactor_machine_rss_bytes"].append(f"{{{machine}}} {m['memory']['rss']}")
        if m.get("price_per_hour") is not None:
            series["bigactor_machine_price_dollars_per_hour"].append(f"{{{machine}}} {m['price_per_hour']}")
            series["bigactor_machine_cost_dollars"].append(f"{{{machine}}} {m['cost']:.6f}")
        series["bigactor_output_dropped_lines_total"].append(
            f"{{{machine}}} {m.get('output_dropped_lines', 0)}"
        )
        for side in ("client", "server"):
            for method, c in m.get(side, {}).items():
                labels = f'{{{machine},side="{side}",method="{_label(method)}"}}'
                series["bigactor_calls_total"].append(f"{labels} {c['count']}")
                series["bigactor_call_errors_total"].append(f"{labels} {c['errors']}")
                series["bigactor_call_seconds_total"].append(f"{labels} {c['seconds']:.6f}")
                series["bigactor_call_request_bytes_total"].append(f"{labels} {c['bytes_in']}")
                series["bigactor_call_reply_bytes_total"].append(f"{labels} {c['bytes_out']}")
    out = []
    for name, samples in series.items():
        kind = "gauge" if name.startswith("bigactor_machine_") else "counter"
        out.append(f"# TYPE {name} {kind}")
        out.extend(f"{name}{sample}" for sample in samples)
    return "\n".join(out) + "\n"


def _host_name(host: str) -> str:
    """The name in a Host header: without its port or IPv6 brackets, lowercase, no final dot."""
    host = host.strip().lower()
    if host.startswith("["):
        name, closed, _ = host[1:].partition("]")
        return name if closed else host
    return host.rpartition(":")[0].rstrip(".") if ":" in host else host.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


async def _read_head(conn: h11.Connection, stream: trio.SocketStream) -> h11.Request | None:
    """The request head, or None when the client closed first or sent something else."""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(bytes(await stream.receive_some(65536)))
            continue
        return event if isinstance(event, h11.Request) else None


async def _unless_client_leaves(
    stream: trio.SocketStream, compute: Callable[[], Awaitable[Reply]]
) -> Reply | None:
    """``await compute()``, cancelled (None) when the client closes its end first.

    Cancelling stops what the page asked of the machines too: a profile ends on every machine.
    """
    reply: Reply | None = None
    async with trio.open_nursery() as nursery:

        async def watch() -> None:
            # One request per connection: what else the client sends is read and dropped until
            # its end of stream, which says it left.
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                while await stream.receive_some(65536):
                    pass
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch)
        reply = await compute()
        nursery.cancel_scope.cancel()
    return reply


async def _send(conn: h11.Connection, stream: trio.SocketStream, method: bytes, reply: Reply) -> None:
    status, ctype, body, extra = reply
    headers = [
        ("content-type", ctype),
        ("content-length", str(len(body))),
        ("connection", "close"),
        *SAFE_HEADERS,
        *extra,
    ]
    response = h11.Response(status_code=status, headers=headers, reason=HTTPStatus(status).phrase)
    data = conn.send(response) or b""
    if method != b"HEAD":
        data += conn.send(h11.Data(data=body)) or b""
    await stream.send_all(data + (conn.send(h11.EndOfMessage()) or b""))


class _Server:
    """One debug server: its token, the host names it answers to, its connections."""

    def __init__(self, cluster: Cluster, token: str, host: str) -> None:
        self.cluster = cluster
        self.token = token
        self._token = token.encode()
        self._names = {"localhost", _host_name(host), _host_name(socket.gethostname())}
        # The open connections, oldest first: one still sending its request head maps to the
        # cancel scope that drops it, one being served (authenticated) to None.
        self._conns: dict[trio.SocketStream, trio.CancelScope | None] = {}
        self._profile_ends: float | None = None  # when the running profile ends (trio's clock)
        #: what the status page's charts show; sampled while anyone looks (see :meth:`sample`)
        self.history = History()
        self._viewed = trio.Event()

    async def sample(self, period: float = PERIOD) -> None:
        """Once the status page has been asked for, record the cluster's status every
        ``period`` seconds (more when a round takes long: never more than a tenth of the time)."""
        await self._viewed.wait()
        while True:
            start = trio.current_time()
            with contextlib.suppress(Exception):  # a failed round leaves a gap in the charts
                self.history.record(await self.cluster.status())
            took = trio.current_time() - start
            await trio.sleep(max(period, 10 * took) - took)

    async def learn_fqdn(self) -> None:
        """Answer to this machine's fully qualified name too."""
        # A reverse lookup can hang on a bad resolver: it stays off the way of the server's
        # start, and is abandoned at exit (it has no side effects).
        fqdn = await trio.to_thread.run_sync(socket.getfqdn, abandon_on_cancel=True)
        self._names.add(_host_name(fqdn))

    async def handle(self, stream: trio.SocketStream) -> None:
        """Serve one connection: one request, then close.

        Beyond ``MAX_CONNECTIONS``, the oldest connection still sending its head is dropped to
        make room, so idle clients cannot keep an authenticated one out; when every connection
        is being served, the new one gets a 503 at once. Either way, the number of descriptors
        the server holds stays bounded.
        """
        try:
            if len(self._conns) >= MAX_CONNECTIONS and not self._drop_oldest_unserved():
                await self._refuse(stream)
                return
            with trio.CancelScope() as scope:
                self._conns[stream] = scope
                await self._serve(stream)
        except (h11.RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            _log(logging.DEBUG, "debug connection dropped: %r", exc)
        except Exception:
            # This server runs in the cluster's nursery: a debug page must never end the cluster.
            _log(logging.ERROR, "debug connection failed", exc_info=True)
        finally:
            self._conns.pop(stream, None)
            await trio.aclose_forcefully(stream)

    def _drop_oldest_unserved(self) -> bool:
        for stream, scope in self._conns.items():
            if scope is not None:
                del self._conns[stream]
                scope.cancel()
                stream.socket.close()  # its descriptor is free now, not when its task next runs
                return True
        return False

    async def _refuse(self, stream: trio.SocketStream) -> None:
        body = f"bigactor debug server: {MAX_CONNECTIONS} requests are being served; try again\n".encode()
        head = (
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
            f"content-length: {len(body)}\r\nretry-after: 1\r\nconnection: close\r\n\r\n"
        )
        # A fresh socket's send buffer takes this at once; the bound is for the odd case.
        with trio.move_on_after(1):
            await stream.send_all(head.encode() + body)

    async def _serve(self, stream: trio.SocketStream) -> None:
        conn = h11.Connection(h11.SERVER)
        request: h11.Request | None = None
        with trio.move_on_after(HEAD_TIMEOUT):
            request = await _read_head(conn, stream)
        if request is None:
            _log(logging.DEBUG, "debug connection dropped: no request within %s s", HEAD_TIMEOUT)
            return
        target = urlsplit(request.target.decode("ascii", "replace"))
        query = {k: v[-1] for k, v in parse_qs(target.query).items()}
        reply = self._refusal(request, query)
        if reply is None:
            self._conns[stream] = None  # being served: no longer the one dropped to make room
            reply = await _unless_client_leaves(stream, lambda: self._route(target.path, query))
            if reply is None:
                _log(logging.DEBUG, "debug page %s stopped: its client left", target.path)
                return
        with trio.move_on_after(SEND_TIMEOUT):
            await _send(conn, stream, request.method, reply)

    def _refusal(self, request: h11.Request, query: dict[str, str]) -> Reply | None:
        """Why ``request`` is refused (Host, Origin, token, method), or None to serve it."""
        hosts = [v.decode("latin-1") for k, v in request.headers if k == b"host"]
        origins = [v.decode("latin-1").lower() for k, v in request.headers if k == b"origin"]
        if len(hosts) > 1:
            return _text(400, "bigactor debug server: more than one Host header\n")
        host = hosts[0] if hosts else None  # HTTP/1.0 may leave it out; browsers never do
        if host is not None and not (_is_ip(_host_name(host)) or _host_name(host) in self._names):
            return _text(
                403,
                f"bigactor debug server: Host {host[:100]!r} refused: ask by IP address, localhost "
                "or this machine's name (a guard against DNS rebinding)\n",
            )
        if origins and (host is None or any(o != f"http://{host}".lower() for o in origins)):
            return _text(403, "bigactor debug server: cross-origin requests are refused\n")
        given = [query["token"].encode()] if "token" in query else []
        for k, v in request.headers:
            scheme, _, credentials = v.partition(b" ")
            if k == b"authorization" and scheme.lower() == b"bearer":
                given.append(credentials.strip())
        if not any(hmac.compare_digest(t, self._token) for t in given):
            challenge = ("www-authenticate", 'Bearer realm="bigactor debug"')
            return 401, "text/plain; charset=utf-8", NEED_TOKEN.encode(), [challenge]
        if request.method not in (b"GET", b"HEAD"):
            return 405, "text/plain; charset=utf-8", b"only GET and HEAD\n", [("allow", "GET, HEAD")]
        return None

    async def _route(self, path: str, arg: dict[str, str]) -> Reply:
        try:
            return await self._page(path, arg)
        except Exception as exc:
            _log(logging.ERROR, "debug page %s failed", path, exc_info=True)
            return _text(500, f"{type(exc).__name__}: {exc}\n")

    async def _page(self, path: str, arg: dict[str, str]) -> Reply:
        if not path.startswith(PREFIX):
            return _text(404, f"not found: try {PREFIX}status\n")
        page = path.removeprefix(PREFIX)
        if page in ("", "status", "status.json"):
            machines = await self.cluster.status()
            self.history.record(machines)
            self._viewed.set()
            if page == "status.json" or arg.get("format") == "json":
                return _json(machines)
            cost = str(self.cluster.cost())
            if arg.get("format") == "text":
                return _text(200, status_text(machines, cost))
            # The page's links carry the token it was opened with (none when it came in a header).
            token = self.token if "token" in arg else None
            page_html = status_html(machines, token=token, cost=cost, history=self.history)
            return 200, "text/html; charset=utf-8", page_html.encode(), []
        if page == "vars":
            machines = await self.cluster.status()
            return _json(
                {
                    "driver": {m["addr"]: m["client"] for m in machines},
                    "machines": {
                        m["addr"]: {"server": m.get("server", {}), "peer_calls": m.get("peer_calls", {})}
                        for m in machines
                    },
                }
            )
        if page == "cost":
            total = self.cluster.cost()
            return _json({**attrs.asdict(total), "known": total.known, "text": str(total)})
        if page == "metrics":
            text = prometheus_text(await self.cluster.status())
            return 200, "text/plain; version=0.0.4; charset=utf-8", text.encode(), []
        if page == "stacks":
            stacks = await self.cluster.stacks()
            return _text(200, "".join(f"== {addr}\n{text}\n" for addr, text in sorted(stacks.items())))
        if page == "profile":
            return await self._profile(arg)
        return _text(404, f"no page {page!r}: try status, profile, stacks, vars, cost or metrics\n")

    async def _profile(self, arg: dict[str, str]) -> Reply:
        try:
            seconds = float(arg.get("seconds", "30"))
            top = int(arg.get("top", "40"))
        except ValueError:
            return _text(400, "seconds and top must be numbers\n")
        if not 0 < seconds <= MAX_PROFILE_SECONDS:
            return _text(
                400,
                f"seconds must be in (0, {MAX_PROFILE_SECONDS:g}]: a profile slows every machine "
                "while it runs, so take several short ones rather than one long one\n",
            )
        fmt = arg.get("format", "pstats")
        if fmt not in ("pstats", "collapsed", "text", "flame"):
            return _text(400, "format must be pstats, collapsed, text or flame\n")
        kind = arg.get("kind", "sampled")
        if kind not in ("sampled", "cprofile"):
            return _text(400, "kind must be sampled or cprofile\n")
        if self._profile_ends is not None:
            left = math.ceil(max(0.0, self._profile_ends - trio.current_time()))
            return _text(
                409,
                "a profile is already running (one at a time: each slows every machine); "
                f"it ends in about {left} s, ask again then\n",
            )
        self._profile_ends = trio.current_time() + seconds
        try:
            profile = await self.cluster.profile(seconds, machine=arg.get("machine"), kind=kind)
        except LookupError as exc:
            return _text(404, f"{exc.args[0]}\n")
        finally:
            self._profile_ends = None
        if not profile.machines:
            return _text(404, "no profiles are available at this time\n")
        if fmt == "text":
            return _text(200, profile.top(top))
        if fmt == "collapsed":
            return _text(200, profile.collapsed_text())
        if fmt == "flame":
            samples = sum(profile.collapsed.values())
            title = f"{seconds:g} s of {len(profile.machines)} machine(s), {samples} samples"
            return 200, "text/html; charset=utf-8", flame_html(profile.collapsed, title).encode(), []
        if not profile.stats:  # pstats cannot load an empty table: say why instead
            return _text(404, profile.top())
        disposition = [("content-disposition", 'attachment; filename="bigactor.pstats"')]
        return 200, "application/octet-stream", profile.pstats_bytes(), disposition


async def serve_debug(
    cluster: Cluster,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    token: str | None = None,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the debug pages of ``cluster`` until cancelled; ``nursery.start`` gets the URL.

    Binds ``host:port`` (port 0 picks a free one). Every page needs ``token``: without one,
    ``BIGACTOR_DEBUG_TOKEN`` if set, else a random one. The URL ``nursery.start`` returns
    carries it (``http://127.0.0.1:PORT/debug/bigactor/?token=...``; ``page_url`` builds the
    other pages' URLs from it), and is logged once at INFO by the ``bigactor.debug`` logger.
    Never returns; cancel it to stop (requests in flight, profiles included, are cancelled).

    Raises:
        ValueError: the token is empty, or not printable ASCII without spaces.
    """
    token = _choose_token(token)
    listeners = await trio.open_tcp_listeners(port, host=host)
    sockname = listeners[0].socket.getsockname()
    shown = f"[{sockname[0]}]" if ":" in sockname[0] else sockname[0]
    url = f"http://{shown}:{sockname[1]}{PREFIX}?token={quote(token, safe='')}"
    server = _Server(cluster, token, host)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.learn_fqdn)
        nursery.start_soon(server.sample, name="debug status sampler")
        await nursery.start(trio.serve_listeners, server.handle, listeners)
        _log(logging.INFO, "debug pages at %s", url)
        task_status.started(url)
