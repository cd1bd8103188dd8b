"""The operator's command line: ``python -m bigactor`` (or the ``bigactor`` script).

    bigactor status URL                          the cluster's machines as a table
    bigactor profile URL --seconds N -o FILE     a merged CPU profile (pstats; or --format)
    bigactor stacks URL                          every machine's threads and Trio tasks
    bigactor ec2 ls|cleanup|types                the EC2 system's instances and types

URL is a cluster's debug address with its token, as ``cluster.debug_url`` gives it (e.g.
http://127.0.0.1:8080/debug/bigactor/?token=...). Given a URL without one, the token comes
from ``--token`` or ``BIGACTOR_DEBUG_TOKEN``; the environment keeps it out of ``ps``, where
other local users can read a command line. It is sent as ``Authorization: Bearer``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from ._debug import TOKEN_ENV, page_url


def _split_token(url: str) -> tuple[str, str | None]:
    """``url`` without its ``token`` query parameter, and that token (None if it has none)."""
    parts = urllib.parse.urlsplit(url if "://" in url else f"http://{url}")
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    tokens = [v for k, v in query if k == "token"]
    rest = urllib.parse.urlencode([(k, v) for k, v in query if k != "token"])
    return urllib.parse.urlunsplit(parts._replace(query=rest)), (tokens[-1] if tokens else None)


def _fetch(url: str, token: str | None, timeout: float) -> bytes:
    # The token goes in a header, never in the URL: it stays out of this command's messages.
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout) as reply:
            data: bytes = reply.read()
            return data
    except urllib.error.HTTPError as err:
        text = err.read().decode(errors="replace").strip()
        if err.code == 401:  # a 403 (Host, Origin) says why itself
            hint = (
                "the debug server needs its token: pass the URL from cluster.debug_url "
                f"(it ends with ?token=...), or --token, or set {TOKEN_ENV}"
                if token is None
                else "the server refused this token; take the URL from cluster.debug_url "
                "(the token changes with every cluster unless it is set)"
            )
            raise SystemExit(f"bigactor: {url}: 401 Unauthorized: {hint}") from None
        raise SystemExit(f"bigactor: {url}: {err.code} {text}") from None
    except OSError as err:
        raise SystemExit(f"bigactor: cannot reach {url}: {err}") from None


def _size(n: float) -> str:
    for unit in ("B", "K", "M", "G", "T"):
        if n < 1000:
            return f"{n:.0f}{unit}"
        n /= 1000
    return f"{n:.0f}P"


def status_table(machines: list[dict[str, Any]]) -> str:
    """The status JSON as a fixed-width table."""
    header = ("MACHINE", "STATE", "UPTIME", "MEM", "RSS", "LOAD", "CALLS", "ERRORS", "ERROR")
    rows = [header]
    for m in machines:
        served = {k: v for k, v in m.get("server", {}).items() if not k.startswith("Supervisor.")}
        mem, load = m.get("memory"), m.get("load")
        rows.append(
            (
                m["addr"],
                m["state"],
                f"{m['uptime']:.0f}s" if "uptime" in m else "-",
                f"{mem['percent']:.0f}%" if mem else "-",
                _size(mem["rss"]) if mem else "-",
                f"{load['load1']:.2f}" if load else "-",
                str(sum(c["count"] for c in served.values())),
                str(sum(c["errors"] for c in served.values())),
                (m["error"] or m.get("status_error") or "")[:60],
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return (
        "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows) + "\n"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bigactor", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("status", help="the cluster's machines as a table")
    p.add_argument("url")
    p.add_argument("--json", action="store_true", help="print the JSON instead")
    p = sub.add_parser("profile", help="a CPU profile merged over the machines")
    p.add_argument("url")
    p.add_argument("--seconds", type=float, default=30.0, help="how long (at most 60; default 30)")
    p.add_argument("--machine", help="profile only this machine")
    p.add_argument("--format", choices=["pstats", "collapsed", "text"], default="pstats")
    p.add_argument(
        "--kind",
        choices=["sampled", "cprofile"],
        default="sampled",
        help="sampled: every thread, what used the CPU (default); cprofile: the Trio thread, exact",
    )
    p.add_argument("-o", "--output", help="write here (default: bigactor-<time>.pstats, or stdout for text)")
    p = sub.add_parser("stacks", help="every machine's threads and Trio tasks")
    p.add_argument("url")
    for p in sub.choices.values():
        p.add_argument("--token", help=f"the server's token, if URL has none (default: ${TOKEN_ENV})")
    from .systems.ec2 import _cli as ec2_cli  # imports no boto3 until a command needs it

    ec2_cli.add_parser(sub)
    args = parser.parse_args(argv)
    if args.command == "ec2":
        raise SystemExit(ec2_cli.run(args))
    base, token = _split_token(args.url)
    token = args.token or token or os.environ.get(TOKEN_ENV) or None

    if args.command == "status":
        data = _fetch(page_url(base, "status.json"), token, 30)
        sys.stdout.write(data.decode() + "\n" if args.json else status_table(json.loads(data)))
    elif args.command == "stacks":
        sys.stdout.write(_fetch(page_url(base, "stacks"), token, 30).decode())
    else:
        url = page_url(
            base, "profile", seconds=args.seconds, machine=args.machine, format=args.format, kind=args.kind
        )
        data = _fetch(url, token, args.seconds + 60)
        output = args.output
        if output is None and args.format == "pstats":
            output = time.strftime("bigactor-%Y%m%dT%H%M%S.pstats")
        if output is None:
            sys.stdout.write(data.decode())
        else:
            with open(output, "wb") as f:
                f.write(data)
            print(f"wrote {output} ({len(data)} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
