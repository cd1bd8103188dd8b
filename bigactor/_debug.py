"""The debug HTTP server: the cluster's status page, merged CPU profiles, stacks and counters.

``serve_debug(cluster)`` (or ``open_cluster(debug_address=...)``) serves, on loopback by
default:

* ``/debug/bigactor/status``: every machine as an HTML table that refreshes itself; the same as
  JSON with ``?format=json``.
* ``/debug/bigactor/profile?seconds=N[&machine=ADDR][&format=pstats|collapsed|text]``: a CPU
  profile taken on all running machines at once and merged: a pstats file (the default; open
  it with ``pstats`` or snakeviz), collapsed stacks for flame graphs (flamegraph.pl,
  speedscope), or the top functions as text. An unknown ``machine`` is a 404, never a dial.
* ``/debug/bigactor/stacks``: every machine's threads and Trio task tree, as text.
* ``/debug/bigactor/vars``: per-method counters on both sides of every call, as JSON;
  ``/debug/bigactor/metrics``: the same in Prometheus text exposition.

It serves JSON, HTML and text only (it decodes nothing it is sent beyond the request line).
Anyone who can reach it can read the cluster's state and start profiles: keep it on loopback.
"""

from __future__ import annotations

import html
import json
import logging
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11
import trio

from ._cluster import Cluster

log = logging.getLogger("bigactor.debug")
PREFIX = "/debug/bigactor/"
MAX_PROFILE_SECONDS = 300.0

Reply = tuple[int, str, bytes, list[tuple[str, str]]]


def _json(value: Any) -> Reply:
    return 200, "application/json", json.dumps(value, indent=1, default=str).encode(), []


def _text(status: int, text: str) -> Reply:
    return status, "text/plain; charset=utf-8", text.encode(), []


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


def status_html(machines: list[dict[str, Any]], refresh: int = 5) -> str:
    """The status page for the entries of ``Cluster.status()``."""
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
        rows.append(
            "<tr>"
            f"<td>{e(m['addr'])}</td><td class='{e(m['state'])}'>{e(m['state'])}</td>"
            f"<td>{_duration(m['uptime']) if 'uptime' in m else ''}</td>"
            f"<td>{'in ' + _duration(nxt - now) if nxt else ''}<br>"
            f"{', '.join(str(t) for t in m['keepalive_reply_ms'][:5])} ms</td>"
            f"<td>{mem_cell}</td><td>{disk_cell}</td><td>{load_cell}</td>"
            f"<td>{'<br>'.join(f'{e(n)} ({e(t)})' for n, t in m.get('actors', {}).items())}</td>"
            f"<td>{methods}</td>"
            f"<td>{e(m['error'] or m.get('status_error') or '')}</td>"
            "</tr>"
        )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="{refresh}">
<title>bigactor status</title>
<style>
body {{ font-family: sans-serif; margin: 1em; }}
table {{ border-collapse: collapse; }}
td, th {{ border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; font-size: 90%; }}
th {{ background: #eee; }} .RUNNING {{ color: green; }} .STOPPED {{ color: #b00; }}
</style></head><body>
<h1>bigactor: {len(machines)} machines</h1>
<p>Refreshes every {refresh} s. <a href="status?format=json">JSON</a> ·
<a href="stacks">stacks</a> · <a href="vars">vars</a> ·
<a href="profile?seconds=5&amp;format=text">profile 5 s</a></p>
<table><tr><th>machine</th><th>state</th><th>uptime</th><th>keepalive (next; replies)</th>
<th>memory</th><th>disk</th><th>load</th><th>actors</th><th>calls served</th><th>error</th></tr>
{"".join(rows)}
</table></body></html>
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
    }
    for m in machines:
        machine = f'machine="{_label(m["addr"])}"'
        series["bigactor_machine_up"].append(f"{{{machine}}} {int(m['state'] == 'RUNNING')}")
        if "memory" in m:
            series["bigactor_machine_rss_bytes"].append(f"{{{machine}}} {m['memory']['rss']}")
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


async def _route(cluster: Cluster, path: str, query: dict[str, list[str]]) -> Reply:
    page = path.removeprefix(PREFIX)
    arg = {k: v[-1] for k, v in query.items()}
    if not path.startswith(PREFIX):
        return _text(404, f"not found: try {PREFIX}status\n")
    if page in ("status", "status.json"):
        machines = await cluster.status()
        if page == "status.json" or arg.get("format") == "json":
            return _json(machines)
        return 200, "text/html; charset=utf-8", status_html(machines).encode(), []
    if page == "vars":
        machines = await cluster.status()
        return _json(
            {
                "driver": {m["addr"]: m["client"] for m in machines},
                "machines": {
                    m["addr"]: {"server": m.get("server", {}), "peer_calls": m.get("peer_calls", {})}
                    for m in machines
                },
            }
        )
    if page == "metrics":
        text = prometheus_text(await cluster.status())
        return 200, "text/plain; version=0.0.4; charset=utf-8", text.encode(), []
    if page == "stacks":
        stacks = await cluster.stacks()
        return _text(200, "".join(f"== {addr}\n{text}\n" for addr, text in sorted(stacks.items())))
    if page == "profile":
        try:
            seconds = float(arg.get("seconds", "30"))
        except ValueError:
            return _text(400, "seconds must be a number\n")
        if not 0 < seconds <= MAX_PROFILE_SECONDS:
            return _text(400, f"seconds must be in (0, {MAX_PROFILE_SECONDS:.0f}]\n")
        try:
            profile = await cluster.profile(seconds, machine=arg.get("machine"))
        except LookupError as exc:
            return _text(404, f"{exc.args[0]}\n")
        if not profile.machines:
            return _text(404, "no profiles are available at this time\n")
        fmt = arg.get("format", "pstats")
        if fmt == "text":
            return _text(200, profile.top(int(arg.get("top", "40"))))
        if fmt == "collapsed":
            return _text(200, profile.collapsed_text())
        if fmt == "pstats":
            disposition = [("content-disposition", 'attachment; filename="bigactor.pstats"')]
            return 200, "application/octet-stream", profile.pstats_bytes(), disposition
        return _text(400, "format must be pstats, collapsed or text\n")
    return _text(404, f"no page {page!r}: try status, profile, stacks or vars\n")


async def _handle(stream: trio.abc.Stream, cluster: Cluster) -> None:
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(bytes(await stream.receive_some(65536)))
                continue
            if isinstance(event, h11.Request):
                break
            return  # closed, or something that is not a request
        target = urlsplit(event.target.decode("ascii", "replace"))
        if event.method not in (b"GET", b"HEAD"):
            reply = _text(405, "only GET\n")
        else:
            try:
                reply = await _route(cluster, target.path, parse_qs(target.query))
            except Exception as exc:
                log.exception("debug page %s failed", target.path)
                reply = _text(500, f"{type(exc).__name__}: {exc}\n")
        status, ctype, body, extra = reply
        headers = [("content-type", ctype), ("content-length", str(len(body))), ("connection", "close")]
        await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers + extra)))
        if event.method != b"HEAD":
            await stream.send_all(conn.send(h11.Data(data=body)))
        await stream.send_all(conn.send(h11.EndOfMessage()))
    except (h11.RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        log.debug("debug connection dropped: %r", exc)
    finally:
        await trio.aclose_forcefully(stream)


async def serve_debug(
    cluster: Cluster,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the debug pages of ``cluster`` until cancelled; ``nursery.start`` gets the URL.

    Binds ``host:port`` (port 0 picks a free one). Never returns; cancel it to stop.
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    sockname = listeners[0].socket.getsockname()
    url = f"http://{sockname[0]}:{sockname[1]}{PREFIX}"

    async def handler(stream: trio.abc.Stream) -> None:
        await _handle(stream, cluster)

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handler, listeners)
        task_status.started(url)
