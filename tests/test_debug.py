"""The cluster seen as one program: status, merged profiles, stacks and counters, from Python
and over the debug HTTP server, on real worker processes."""

from __future__ import annotations

import json
import logging
import os
import pstats
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from functools import partial
from pathlib import Path
from typing import Any

import psutil
import pytest
import trio
import trio.testing

import bigactor
import bigactor._debug as debug
from bigactor import Services
from bigactor._debug import page_url

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _no_token_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BIGACTOR_DEBUG_TOKEN", raising=False)


class Spinner:
    """Burns CPU in functions that only ever run on a worker."""

    async def spin_async_only_on_worker(self, n: int) -> int:
        return sum(i * i for i in range(n))

    def spin_sync_only_on_worker(self, n: int) -> int:
        return sum(i * i for i in range(n))

    async def fail(self) -> None:
        raise ValueError("counted as an error")


async def _busy(handles: list[bigactor.ActorHandle], stop: trio.Event) -> None:
    while not stop.is_set():
        for h in handles:
            await h.spin_async_only_on_worker(200_000)
            await h.spin_sync_only_on_worker(300_000)


EMPTY = "the profile is empty: no thread of the 1 machine used the CPU in {seconds:g} s\n"


async def _spin_until_cancelled(m: bigactor.Machine) -> None:
    while True:
        await m.call("spinner.spin_sync_only_on_worker", 300_000)


async def test_status_reports_each_machine_with_its_own_uptime_and_counters() -> None:
    """status() lists every machine with the worker's own uptime, resources, actors and counts."""
    driver_started = time.time()
    async with bigactor.open_cluster() as cluster:
        [m] = await cluster.start(1, Services(spinner=Spinner()))
        await trio.sleep(0.3)  # the machine's uptime must be its own, shorter than the driver's
        for _ in range(3):
            await m.call("spinner.spin_async_only_on_worker", 10)
        with pytest.raises(ValueError, match="counted"):
            await m.call("spinner.fail")
        [entry] = await cluster.status()
        assert entry["addr"] == m.addr
        assert entry["state"] == "RUNNING"
        assert entry["error"] is None
        assert 0 < entry["uptime"] < time.time() - driver_started
        assert entry["memory"]["total"] > 0
        assert entry["disk"]["total"] > 0
        assert set(entry["load"]) == {"load1", "load5", "load15"}
        assert entry["actors"] == {"spinner": "Spinner"}
        assert entry["server"]["spinner.spin_async_only_on_worker"]["count"] == 3
        assert entry["server"]["spinner.fail"]["errors"] == 1
        assert entry["client"]["spinner.spin_async_only_on_worker"]["count"] == 3
        assert entry["client"]["spinner.fail"]["errors"] == 1
        assert entry["server"]["spinner.fail"]["bytes_in"] > 0
        assert entry["keepalive_reply_ms"]
        json.dumps(entry)  # plain data
        # One question per machine (a thousand machines are asked at once): not five.
        asked = [
            name
            for name in m.metrics.snapshot()
            if name.startswith("Supervisor.") and "keepalive" not in name
        ]
        before = {name: m.metrics.snapshot()[name]["count"] for name in asked}
        await cluster.status()
        after = m.metrics.snapshot()
        assert {
            name: after[name]["count"] - before.get(name, 0)
            for name in after
            if name.startswith("Supervisor.")
            and "keepalive" not in name
            and after[name]["count"] != before.get(name, 0)
        } == {"Supervisor.status": 1}
        m.cancel()
        [stopped] = await cluster.status()  # a stopped machine stays listed, with its cause
        assert stopped["addr"] == m.addr
        assert stopped["state"] == "STOPPED"
        assert "cancelled by the caller" in stopped["error"]


async def test_merged_profile_holds_frames_that_ran_only_on_workers(tmp_path: Path) -> None:
    """A profile taken on two machines at once merges both: the sync method burning CPU on its
    actor's thread shows by name in top(), the pstats download and the flame graph, with the
    thread it ran on; the idle wait of the Trio loop does not."""
    async with bigactor.open_cluster() as cluster:
        ms = await cluster.start(2, Services(spinner=Spinner()))
        handles = [await cluster.options(machine=m).spawn(Spinner) for m in ms]
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_busy, handles, stop)
            profile = await cluster.profile(1.0)
            stop.set()
        assert set(profile.machines) == {m.addr for m in ms}
        assert profile.errors == {}
        names = {func for (_, _, func) in profile.stats}
        assert "spin_sync_only_on_worker" in names
        assert "spin_async_only_on_worker" in names
        assert any(name.startswith("<thread bigactor actor Spinner") for name in names)
        assert "poll" not in names  # waiting is not CPU
        collapsed = profile.collapsed_text()
        assert "spin_sync_only_on_worker" in collapsed
        path = tmp_path / "out.pstats"
        path.write_bytes(profile.pstats_bytes())
        loaded = pstats.Stats(str(path))
        assert any(func == "spin_sync_only_on_worker" for (_, _, func) in loaded.stats)  # type: ignore[attr-defined]
        top = profile.top(50)
        assert "spin_sync_only_on_worker" in top
        assert "{thread bigactor actor Spinner" in top  # how pstats prints a thread
        with pytest.raises(LookupError):
            await cluster.profile(0.1, machine="unix:/not/a/machine")


async def test_cprofile_kind_traces_the_trio_thread() -> None:
    """kind="cprofile" gives cProfile's exact table of the Trio thread (async methods, with
    their real call counts); the flame graph still samples every thread."""
    async with bigactor.open_cluster() as cluster:
        h = await cluster.spawn(Spinner)
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_busy, [h], stop)
            profile = await cluster.profile(1.0, kind="cprofile")
            stop.set()
        calls = {func: entry[1] for (_, _, func), entry in profile.stats.items()}
        assert calls.get("spin_async_only_on_worker", 0) >= 1
        assert not any(func.startswith("<thread ") for func in calls)  # cProfile's own table
        assert "spin_sync_only_on_worker" in profile.collapsed_text()
        with pytest.raises(ValueError, match="no profile kind 'gprof'"):
            await cluster.profile(0.1, kind="gprof")


async def test_profile_of_an_idle_machine_says_it_is_empty() -> None:
    """A machine that only waits shows no samples: top() says so in a line, pstats() raises
    LookupError saying why, and nothing claims epoll as the hot spot."""
    async with bigactor.open_cluster() as cluster:
        await cluster.spawn(Spinner)
        profile = await cluster.profile(0.5)
        assert profile.machines
        assert "poll" not in profile.collapsed_text()
        assert profile.top() == EMPTY.format(seconds=0.5)
        with pytest.raises(LookupError, match="no thread of the 1 machine used the CPU"):
            profile.pstats()


Response = tuple[int, dict[str, str], bytes]


def _get(url: str, headers: dict[str, str] | None = None) -> Response:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


async def get(url: str, headers: dict[str, str] | None = None) -> Response:
    return await trio.to_thread.run_sync(_get, url, headers)


def _token(url: str) -> str:
    return url.rpartition("?token=")[2]


def _bare(url: str, page: str = "") -> str:
    """``page`` of the server at ``url``, without the token."""
    return url.partition("?")[0] + page


async def _wait_until_profiling(cluster: bigactor.Cluster) -> None:
    """Return once a machine's stacks show the profiler's sampler thread at work."""
    # The sampler runs in a worker process, which sends no event when it starts: poll.
    while not any("in _sample" in text for text in (await cluster.stacks()).values()):  # noqa: ASYNC110
        await trio.sleep(0.05)


async def test_debug_pages_over_http(tmp_path: Path) -> None:
    """The debug server serves status (HTML and JSON), profiles, stacks, vars and metrics."""
    async with bigactor.open_cluster(debug_address="127.0.0.1:0") as cluster:
        assert cluster.debug_url is not None
        url = cluster.debug_url
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/debug/bigactor/\?token=[0-9a-f]{48}", url)
        [m] = await cluster.start(1, Services(spinner=Spinner()))
        await m.call("spinner.spin_async_only_on_worker", 10)

        for page in (url, page_url(url, "status")):  # the URL itself opens the status page
            status, headers, body = await get(page)
            assert (status, headers["content-type"]) == (200, "text/html; charset=utf-8")
            assert m.addr in body.decode()
            assert 'http-equiv="refresh"' in body.decode()
        status, headers, body = await get(page_url(url, "status", format="json"))
        assert headers["content-type"] == "application/json"
        assert json.loads(body)[0]["addr"] == m.addr

        status, _, body = await get(page_url(url, "vars"))
        counters: dict[str, Any] = json.loads(body)
        assert counters["driver"][m.addr]["spinner.spin_async_only_on_worker"]["count"] == 1
        assert counters["machines"][m.addr]["server"]["spinner.spin_async_only_on_worker"]["count"] == 1

        # as Prometheus scrapes it: the token in a bearer header (authorization: {credentials: ...})
        status, headers, body = await get(_bare(url, "metrics"), {"Authorization": f"Bearer {_token(url)}"})
        assert status == 200
        assert headers["content-type"].startswith("text/plain; version=0.0.4")
        text = body.decode()
        assert "# TYPE bigactor_calls_total counter" in text
        assert (
            f'bigactor_calls_total{{machine="{m.addr}",side="server",'
            'method="spinner.spin_async_only_on_worker"} 1'
        ) in text
        assert f'bigactor_machine_up{{machine="{m.addr}"}} 1' in text
        assert f'bigactor_output_dropped_lines_total{{machine="{m.addr}"}} 0' in text

        status, _, body = await get(page_url(url, "stacks"))
        assert status == 200
        assert "trio tasks:" in body.decode()
        assert m.addr in body.decode()

        status, _, body = await get(page_url(url, "profile", seconds=0.2))
        assert (status, body) == (404, EMPTY.format(seconds=0.2).encode())
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_spin_until_cancelled, m)
            status, headers, body = await get(page_url(url, "profile", seconds=0.3))
            assert (status, headers["content-type"]) == (200, "application/octet-stream")
            (tmp_path / "p.pstats").write_bytes(body)
            pstats.Stats(str(tmp_path / "p.pstats"))
            status, _, body = await get(page_url(url, "profile", seconds=0.2, format="collapsed"))
            assert status == 200
            assert b"spin_sync_only_on_worker" in body
            status, _, body = await get(page_url(url, "profile", seconds=0.2, format="text"))
            assert b"spin_sync_only_on_worker" in body
            status, _, body = await get(page_url(url, "profile", seconds=0.2, format="text", kind="cprofile"))
            assert b"function calls" in body
            assert (await get(page_url(url, "profile", seconds=0.1, kind="perf")))[0] == 400
            nursery.cancel_scope.cancel()

        before = cluster.machines()
        status, _, body = await get(page_url(url, "profile", seconds=1, machine="unix:/not/known"))
        assert status == 404
        assert cluster.machines() == before  # an unknown address is never dialed
        assert (await get(page_url(url, "profile", seconds="abc")))[0] == 400
        assert (await get(page_url(url, "profile", seconds=0.1, format="svg")))[0] == 400
        assert (await get(page_url(url, "nothing")))[0] == 404
        assert os.getpid()  # the driver served it all from its own nursery


async def test_debug_pages_refuse_requests_without_the_token() -> None:
    """Without the token (query or bearer header) every page is a 401 that says only where it is."""
    async with bigactor.open_cluster(debug_address="127.0.0.1:0") as cluster:
        assert cluster.debug_url is not None
        url, token = cluster.debug_url, _token(cluster.debug_url)
        for page in ("", "status", "status?format=json", "vars", "metrics", "stacks", "profile?seconds=1"):
            for headers in ({}, {"Authorization": "Bearer not-the-token"}, {"Authorization": token}):
                status, reply_headers, body = await get(_bare(url, page), headers)
                assert status == 401, (page, headers)
                assert body == debug.NEED_TOKEN.encode()  # where the token is, nothing about the cluster
                assert reply_headers["www-authenticate"].startswith("Bearer")
        assert (await get(_bare(url, "status?token=not-the-token")))[0] == 401
        assert (await get(_bare(url, "status?token=")))[0] == 401
        assert "cluster.debug_url" in debug.NEED_TOKEN
        assert (await get(_bare(url, "vars"), {"Authorization": f"Bearer {token}"}))[0] == 200
        assert (await get(_bare(url, "vars"), {"Authorization": f"bearer {token}"}))[0] == 200
        assert (await get(page_url(url, "vars")))[0] == 200


async def test_debug_token_comes_from_the_argument_the_environment_or_chance(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``debug_token`` wins, then ``BIGACTOR_DEBUG_TOKEN``; else each cluster draws its own."""
    monkeypatch.setenv("BIGACTOR_DEBUG_TOKEN", "from-the-environment")
    async with bigactor.open_cluster(debug_address="127.0.0.1:0", debug_token="given") as cluster:
        assert cluster.debug_url is not None
        assert cluster.debug_url.endswith("/debug/bigactor/?token=given")
        assert (await get(page_url(cluster.debug_url, "vars")))[0] == 200
    async with bigactor.open_cluster(debug_address="127.0.0.1:0") as cluster:
        assert cluster.debug_url is not None
        assert cluster.debug_url.endswith("?token=from-the-environment")
        assert (await get(page_url(cluster.debug_url, "vars")))[0] == 200
    monkeypatch.delenv("BIGACTOR_DEBUG_TOKEN")
    tokens = set()
    for _ in range(2):
        async with bigactor.open_cluster(debug_address="127.0.0.1:0") as cluster:
            assert cluster.debug_url is not None
            tokens.add(_token(cluster.debug_url))
    assert len(tokens) == 2
    assert all(len(t) >= 32 for t in tokens)
    async with bigactor.open_cluster() as cluster:
        for bad in ("", "with space", "ünicode"):
            with pytest.raises(ValueError, match="debug token"):
                await debug.serve_debug(cluster, token=bad)


async def test_debug_url_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    """The URL, token included, is logged once by ``bigactor.debug`` at INFO."""
    caplog.set_level(logging.INFO, logger="bigactor.debug")
    async with bigactor.open_cluster(debug_address="127.0.0.1:0") as cluster:
        assert cluster.debug_url is not None
        await get(page_url(cluster.debug_url, "status"))
    logged = [r for r in caplog.records if r.name == "bigactor.debug" and r.levelno == logging.INFO]
    assert [r.getMessage() for r in logged] == [f"debug pages at {cluster.debug_url}"]


DRIVER_WITHOUT_STDERR = """
import json, logging, socket, sys, urllib.request, trio, bigactor
from bigactor._debug import page_url
logging.basicConfig(level=logging.DEBUG)  # a handler on stderr, which is closed next
sys.stderr.close()

async def main():
    async with bigactor.open_cluster(debug_address="127.0.0.1:0") as cluster:
        def get(page):
            with urllib.request.urlopen(page_url(cluster.debug_url, page), timeout=30) as r:
                return json.load(r)
        print(await trio.to_thread.run_sync(get, "vars"), flush=True)
        host, port = cluster.debug_url.split("/")[2].split(":")
        socket.create_connection((host, int(port))).close()  # logged as dropped, at DEBUG
        print(await trio.to_thread.run_sync(get, "status.json"), flush=True)

trio.run(main)
"""


async def test_debug_server_does_not_need_stderr() -> None:
    """With the driver's stderr closed, the server's log lines fail quietly and it still serves."""
    done = await trio.run_process(
        [sys.executable, "-c", DRIVER_WITHOUT_STDERR], capture_stdout=True, capture_stderr=True, check=False
    )
    assert done.returncode == 0
    assert done.stdout.splitlines() == [b"{'driver': {}, 'machines': {}}", b"[]"]


async def test_status_page_links_carry_the_token() -> None:
    """Every link of the status page, and its refresh, keep the token; no page sends a referrer."""
    async with bigactor.open_cluster(debug_address="127.0.0.1:0") as cluster:
        assert cluster.debug_url is not None
        status, headers, body = await get(page_url(cluster.debug_url, "status"))
        assert status == 200
        assert headers["referrer-policy"] == "no-referrer"
        assert "access-control-allow-origin" not in headers
        page = body.decode()
        [refresh] = re.findall(r'http-equiv="refresh" content="\d+; url=([^"]+)"', page)
        links = [refresh, *re.findall(r'<a href="([^"]+)"', page)]
        assert len(links) == 7  # refresh, JSON, stacks, vars, metrics, profile, flame graph
        for link in links:
            target = _bare(cluster.debug_url, link.replace("&amp;", "&"))
            assert f"token={_token(cluster.debug_url)}" in target
            if "profile" not in link:  # a 5 s profile: not worth the wait
                status, headers, _ = await get(target)
                assert status == 200, link
                assert headers["referrer-policy"] == "no-referrer"
        assert (await get(_bare(cluster.debug_url, "nothing")))[1]["referrer-policy"] == "no-referrer"


async def test_host_and_origin_are_checked() -> None:
    """A Host this server does not answer to (DNS rebinding), or a foreign Origin, is a 403."""
    async with bigactor.open_cluster(debug_address="127.0.0.1:0") as cluster:
        assert cluster.debug_url is not None
        url = page_url(cluster.debug_url, "vars")
        port = url.split(":")[2].split("/")[0]
        for host in ("attacker.example", f"attacker.example:{port}", "127.0.0.1.attacker.example", "[::1"):
            status, _, body = await get(url, {"Host": host})
            assert status == 403, host
            assert b"DNS rebinding" in body
        for host in (f"127.0.0.1:{port}", "localhost", f"LOCALHOST:{port}", "[::1]:1", socket.gethostname()):
            assert (await get(url, {"Host": host}))[0] == 200, host
        for origin in ("http://attacker.example", "null", f"http://localhost:{port}"):
            status, headers, _ = await get(url, {"Origin": origin})
            assert status == 403, origin
            assert "access-control-allow-origin" not in headers
        assert (await get(url, {"Origin": f"http://127.0.0.1:{port}"}))[0] == 200


async def test_half_sent_request_is_dropped_after_the_head_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """A client that never finishes its request head is disconnected."""
    monkeypatch.setattr(debug, "HEAD_TIMEOUT", 0.5)
    async with bigactor.open_cluster(debug_address="127.0.0.1:0") as cluster:
        assert cluster.debug_url is not None
        host, port = cluster.debug_url.split("/")[2].split(":")
        async with await trio.open_tcp_stream(host, int(port)) as stream:
            await stream.send_all(b"GET /debug/bigactor/status HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            with trio.fail_after(10):
                assert await stream.receive_some() == b""


IDLE_CLIENTS = """
import socket, sys
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
socks = []
for _ in range(n):
    s = socket.create_connection((host, port))
    try:
        s.sendall(b"GET /debug/bigactor/status HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\n")  # no end of head
    except OSError:
        pass  # already dropped by the server
    socks.append(s)
print("ready", flush=True)
sys.stdin.read()
"""


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def _accepted_on(port: int) -> int:
    """The connections this process holds open as the server on ``port``."""
    return sum(1 for c in psutil.Process().net_connections("tcp") if c.laddr.port == port and c.raddr)


async def test_idle_half_sent_requests_cannot_exhaust_the_drivers_descriptors() -> None:
    """Hundreds of idle half-sent requests hold a bounded number of descriptors, and an
    authenticated request and a machine start still succeed while they stay connected."""
    n = 300
    async with bigactor.open_cluster(debug_address="127.0.0.1:0") as cluster:
        assert cluster.debug_url is not None
        host, port = cluster.debug_url.split("/")[2].split(":")
        before = _open_descriptors()
        async with trio.open_nursery() as nursery:
            run = partial(trio.run_process, stdin=subprocess.PIPE, stdout=subprocess.PIPE, check=False)
            clients: trio.Process = await nursery.start(
                run, [sys.executable, "-c", IDLE_CLIENTS, host, port, str(n)]
            )
            assert clients.stdout is not None
            assert clients.stdin is not None
            with trio.fail_after(60):
                ready = b""
                while not ready.endswith(b"\n"):
                    ready += await clients.stdout.receive_some()
            assert ready == b"ready\n"
            # served after every idle connection was accepted (the backlog is first in, first out)
            with trio.fail_after(30):
                assert (await get(page_url(cluster.debug_url, "vars")))[0] == 200
            await trio.testing.wait_all_tasks_blocked()
            assert _accepted_on(int(port)) <= debug.MAX_CONNECTIONS
            # the pipes to the clients and their pidfd, and nothing else the server holds on to
            assert _open_descriptors() - before <= debug.MAX_CONNECTIONS + 8
            with trio.fail_after(30):
                [m] = await cluster.start(1, Services(spinner=Spinner()))
                assert await m.wait(bigactor.State.RUNNING) == bigactor.State.RUNNING
            assert (await get(page_url(cluster.debug_url, "status", format="json")))[0] == 200
            await clients.stdin.aclose()  # the clients leave


async def test_profile_longer_than_the_limit_is_refused() -> None:
    """A profile over 60 s is a 400 that says why, and starts nothing."""
    async with bigactor.open_cluster(debug_address="127.0.0.1:0") as cluster:
        assert cluster.debug_url is not None
        with trio.fail_after(10):
            status, _, body = await get(page_url(cluster.debug_url, "profile", seconds=61))
        assert status == 400
        assert b"(0, 60]" in body
        assert b"slows every machine" in body


async def test_second_profile_through_the_server_is_refused_while_one_runs() -> None:
    """One profile at a time through the server: another one meanwhile is a 409 that says why."""
    async with bigactor.open_cluster(debug_address="127.0.0.1:0") as cluster:
        assert cluster.debug_url is not None
        [m] = await cluster.start(1, Services(spinner=Spinner()))
        await m.wait(bigactor.State.RUNNING)
        first: list[Response] = []

        async def profile_for(seconds: float) -> None:
            first.append(
                await get(page_url(cluster.debug_url or "", "profile", seconds=seconds, format="text"))
            )

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(profile_for, 2)
                await _wait_until_profiling(cluster)
                status, _, body = await get(page_url(cluster.debug_url, "profile", seconds=0.1))
                assert status == 409
                assert b"already running" in body
        assert first[0][0] == 200  # the first one ran to its end


async def test_profile_stops_when_its_client_leaves() -> None:
    """A client that leaves a 60 s profile stops it on the machines: the next one runs at once."""
    async with bigactor.open_cluster(debug_address="127.0.0.1:0") as cluster:
        assert cluster.debug_url is not None
        [m] = await cluster.start(1, Services(spinner=Spinner()))
        await m.wait(bigactor.State.RUNNING)
        host, port = cluster.debug_url.split("/")[2].split(":")
        stream = await trio.open_tcp_stream(host, int(port))
        target = page_url(cluster.debug_url, "profile", seconds=60).partition(port)[2]
        await stream.send_all(f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        with trio.fail_after(15):
            await _wait_until_profiling(cluster)
            await stream.aclose()  # the client leaves
            while True:  # until the server has seen it leave (409s meanwhile)
                status, _, body = await get(page_url(cluster.debug_url, "profile", seconds=0.3))
                if status != 409:
                    break
                await trio.sleep(0.05)
        assert (status, body) == (404, EMPTY.format(seconds=0.3).encode())  # it ran, idle


async def test_cancelled_profile_frees_the_machine_at_once() -> None:
    """Cancelling a long profile stops it on the machine: the next profile does not wait for it."""
    async with bigactor.open_cluster() as cluster:
        [m] = await cluster.start(1, Services(spinner=Spinner()))
        await m.wait(bigactor.State.RUNNING)
        with trio.fail_after(15):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(cluster.profile, 60))
                await _wait_until_profiling(cluster)
                nursery.cancel_scope.cancel()
            profile = await cluster.profile(0.3)
        assert profile.machines == (m.addr,)
        assert profile.errors == {}


async def test_command_line_prints_status_and_writes_profiles(tmp_path: Path) -> None:
    """``python -m bigactor status|profile|stacks URL`` talk to a running cluster's debug server."""
    async with bigactor.open_cluster(debug_address="127.0.0.1:0") as cluster:
        url = cluster.debug_url
        assert url is not None
        [m] = await cluster.start(1, Services(spinner=Spinner()))
        await m.call("spinner.spin_async_only_on_worker", 10)

        async def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
            return await trio.run_process(
                [sys.executable, "-m", "bigactor", *args],
                capture_stdout=True,
                capture_stderr=True,
                check=False,
                env={**os.environ, **(env or {})},
            )

        table = (await cli("status", url)).stdout.decode()
        header, row = table.splitlines()
        assert header.split()[:3] == ["MACHINE", "STATE", "UPTIME"]
        assert row.split()[:2] == [m.addr, "RUNNING"]
        out = tmp_path / "cli.pstats"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_spin_until_cancelled, m)
            await cli("profile", url, "--seconds", "0.3", "-o", str(out))
            nursery.cancel_scope.cancel()
        assert any(func == "spin_sync_only_on_worker" for (_, _, func) in pstats.Stats(str(out)).stats)  # type: ignore[attr-defined]
        # a URL without its token takes it from --token or the environment
        assert "trio tasks:" in (await cli("stacks", _bare(url), f"--token={_token(url)}")).stdout.decode()
        env = {"BIGACTOR_DEBUG_TOKEN": _token(url)}
        assert m.addr in (await cli("status", _bare(url), env=env)).stdout.decode()
        failed = await cli("profile", url, "--seconds", "1", "--machine", "unix:/x")
        assert failed.returncode != 0
        assert b"404" in failed.stderr
        failed = await cli("status", _bare(url))
        assert failed.returncode != 0
        assert b"401" in failed.stderr
        assert b"needs its token" in failed.stderr
        failed = await cli("status", _bare(url), "--token", "wrong")
        assert failed.returncode != 0
        assert b"refused this token" in failed.stderr
