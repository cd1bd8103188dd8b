"""The cluster seen as one program: status, merged profiles, stacks and counters, from Python
and over the debug HTTP server, on real worker processes."""

from __future__ import annotations

import json
import os
import pstats
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import trio

import bigactor
from bigactor import Services

pytestmark = pytest.mark.slow


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
            await h.spin_async_only_on_worker(20_000)
            await h.spin_sync_only_on_worker(300_000)


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
        m.cancel()
        [stopped] = await cluster.status()  # a stopped machine stays listed, with its cause
        assert stopped["addr"] == m.addr
        assert stopped["state"] == "STOPPED"
        assert "cancelled by the caller" in stopped["error"]


async def test_merged_profile_holds_frames_that_ran_only_on_workers(tmp_path: Path) -> None:
    """A profile taken on two machines at once merges both, with their workers' own functions."""
    async with bigactor.open_cluster() as cluster:
        ms = await cluster.start(2, Services(spinner=Spinner()))
        handles = [await cluster.spawn(Spinner, machine=m) for m in ms]
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_busy, handles, stop)
            profile = await cluster.profile(1.0)
            stop.set()
        assert set(profile.machines) == {m.addr for m in ms}
        assert profile.errors == {}
        names = {func for (_, _, func) in profile.stats}
        assert "spin_async_only_on_worker" in names  # cProfile of the worker's Trio thread
        collapsed = profile.collapsed_text()
        assert "spin_sync_only_on_worker" in collapsed  # the sampler sees worker threads too
        path = tmp_path / "out.pstats"
        path.write_bytes(profile.pstats_bytes())
        loaded = pstats.Stats(str(path))
        assert any(func == "spin_async_only_on_worker" for (_, _, func) in loaded.stats)  # type: ignore[attr-defined]
        assert "spin_async_only_on_worker" in profile.top(50)
        with pytest.raises(LookupError):
            await cluster.profile(0.1, machine="unix:/not/a/machine")


def _get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.headers.get("content-type", ""), r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers.get("content-type", ""), err.read()


async def get(url: str) -> tuple[int, str, bytes]:
    return await trio.to_thread.run_sync(_get, url)


async def test_debug_pages_over_http(tmp_path: Path) -> None:
    """The debug server serves status (HTML and JSON), profiles, stacks and vars."""
    async with bigactor.open_cluster(debug_address="127.0.0.1:0") as cluster:
        assert cluster.debug_url is not None
        url = cluster.debug_url
        [m] = await cluster.start(1, Services(spinner=Spinner()))
        await m.call("spinner.spin_async_only_on_worker", 10)

        status, ctype, body = await get(url + "status")
        assert (status, ctype) == (200, "text/html; charset=utf-8")
        assert m.addr in body.decode()
        assert 'http-equiv="refresh"' in body.decode()
        status, ctype, body = await get(url + "status?format=json")
        assert ctype == "application/json"
        assert json.loads(body)[0]["addr"] == m.addr

        status, _, body = await get(url + "vars")
        counters: dict[str, Any] = json.loads(body)
        assert counters["driver"][m.addr]["spinner.spin_async_only_on_worker"]["count"] == 1
        assert counters["machines"][m.addr]["server"]["spinner.spin_async_only_on_worker"]["count"] == 1

        status, ctype, body = await get(url + "metrics")
        assert ctype.startswith("text/plain; version=0.0.4")
        text = body.decode()
        assert "# TYPE bigactor_calls_total counter" in text
        assert (
            f'bigactor_calls_total{{machine="{m.addr}",side="server",'
            'method="spinner.spin_async_only_on_worker"} 1'
        ) in text
        assert f'bigactor_machine_up{{machine="{m.addr}"}} 1' in text

        status, _, body = await get(url + "stacks")
        assert status == 200
        assert "trio tasks:" in body.decode()
        assert m.addr in body.decode()

        status, ctype, body = await get(url + "profile?seconds=0.3")
        assert (status, ctype) == (200, "application/octet-stream")
        (tmp_path / "p.pstats").write_bytes(body)
        pstats.Stats(str(tmp_path / "p.pstats"))
        status, _, body = await get(url + "profile?seconds=0.2&format=collapsed")
        assert status == 200
        assert body.count(b"\n") >= 1
        status, _, body = await get(url + "profile?seconds=0.2&format=text")
        assert b"function calls" in body

        before = cluster.machines()
        status, _, body = await get(url + "profile?seconds=1&machine=unix:/not/known")
        assert status == 404
        assert cluster.machines() == before  # an unknown address is never dialed
        assert (await get(url + "profile?seconds=abc"))[0] == 400
        assert (await get(url + "profile?seconds=0.1&format=svg"))[0] == 400
        assert (await get(url + "nothing"))[0] == 404
        assert os.getpid()  # the driver served it all from its own nursery


async def test_command_line_prints_status_and_writes_profiles(tmp_path: Path) -> None:
    """``python -m bigactor status|profile|stacks URL`` talk to a running cluster's debug server."""
    import sys

    async with bigactor.open_cluster(debug_address="127.0.0.1:0") as cluster:
        url = cluster.debug_url
        assert url is not None
        [m] = await cluster.start(1, Services(spinner=Spinner()))
        await m.call("spinner.spin_async_only_on_worker", 10)

        async def cli(*args: str) -> str:
            done = await trio.run_process(
                [sys.executable, "-m", "bigactor", *args], capture_stdout=True, capture_stderr=True
            )
            return str(done.stdout.decode())

        table = await cli("status", url)
        header, row = table.splitlines()
        assert header.split()[:3] == ["MACHINE", "STATE", "UPTIME"]
        assert row.split()[:2] == [m.addr, "RUNNING"]
        out = tmp_path / "cli.pstats"
        await cli("profile", url, "--seconds", "0.3", "-o", str(out))
        pstats.Stats(str(out))
        assert "trio tasks:" in await cli("stacks", url)
        failed = await trio.run_process(
            [sys.executable, "-m", "bigactor", "profile", url, "--seconds", "1", "--machine", "unix:/x"],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
        assert failed.returncode != 0
        assert b"404" in failed.stderr
