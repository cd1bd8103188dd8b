"""The status page and flame graph in a real headless browser (Chromium), at 100 machines:
the summary line, three charts per machine drawn from the sampled history, and the flame
graph's boxes, as the browser renders them; screenshots are taken. Chromium is installed by
.ci/run; elsewhere the test skips without it (fails with BIGACTOR_BROWSER_STRICT=1)."""

from __future__ import annotations

import os
import re
import shutil
import struct
import urllib.request
from pathlib import Path

import pytest
import trio

import bigactor
from bigactor._debug import page_url
from bigactor.testing import TestSystem

pytestmark = pytest.mark.slow

MACHINES = 100


def _browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("BIGACTOR_BROWSER_STRICT") == "1":
        pytest.fail("no Chromium to test the status page with (BIGACTOR_BROWSER_STRICT=1)")
    pytest.skip("no Chromium installed (apt-get install chromium)")


class Worker:
    def work(self, n: int) -> int:
        return sum(range(n))


async def _browse(browser: str, url: str, tmp_path: Path, name: str) -> tuple[str, Path]:
    """The page's DOM as the browser rendered it, and a screenshot of it."""
    shot = tmp_path / f"{name}.png"
    flags = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--window-size=1600,1200",
    ]
    profile = f"--user-data-dir={tmp_path / ('chromium-' + name)}"
    dom = await trio.run_process(
        [*flags, profile, "--dump-dom", url], capture_stdout=True, capture_stderr=True
    )
    await trio.run_process(
        [*flags, profile, f"--screenshot={shot}", url], capture_stdout=True, capture_stderr=True
    )
    return dom.stdout.decode(), shot


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as r:
        body: bytes = r.read()
        return body


async def test_status_page_and_flame_graph_render_in_a_browser_at_100_machines(tmp_path: Path) -> None:
    browser = _browser()
    async with bigactor.open_cluster(TestSystem(), debug_address="127.0.0.1:0") as cluster:
        assert cluster.debug_url is not None
        machines = await cluster.start(MACHINES, bigactor.Services(w=Worker()))
        for m in machines:
            await m.wait(bigactor.State.RUNNING)
        for round_ in range(4):  # calls between page views: the charts get points that move
            async with trio.open_nursery() as nursery:
                for m in machines:
                    for _ in range(round_ + 1):
                        nursery.start_soon(m.call, "w.work", 100)
            await trio.to_thread.run_sync(_get, page_url(cluster.debug_url, "status"))
            await trio.sleep(0.3)

        dom, shot = await _browse(browser, page_url(cluster.debug_url, "status"), tmp_path, "status")
        assert f"{MACHINES} machines ({MACHINES} RUNNING)" in dom
        assert re.search(r"[\d,]+ calls/s", dom)
        assert dom.count('<svg class="spark"') == 3 * MACHINES
        assert dom.count("<polyline") >= 2 * MACHINES  # calls/s and memory have points already
        assert _png_size(shot) == (1600, 1200)
        assert shot.stat().st_size > 20_000  # a page, not a blank


async def test_flame_graph_of_real_workers_renders_in_a_browser(tmp_path: Path) -> None:
    """A profile of two local workers busy in a sync method, as a flame graph in the browser:
    the method's box is there, with its share in its tooltip."""
    browser = _browser()
    async with bigactor.open_cluster(debug_address="127.0.0.1:0") as cluster:
        assert cluster.debug_url is not None
        machines = await cluster.start(2, bigactor.Services(w=Worker()))
        flame_url = page_url(cluster.debug_url, "profile", seconds=1, format="flame")
        async with trio.open_nursery() as nursery:
            for m in machines:
                nursery.start_soon(_keep_busy, m)
            dom, shot = await _browse(browser, flame_url, tmp_path, "flame")
            nursery.cancel_scope.cancel()
        assert '<svg class="flame"' in dom
        assert "1 s of 2 machine(s)" in dom
        assert re.search(r"<title>all: \d+ samples, 100\.0%</title>", dom)
        assert re.search(r"<title>work \(.*test_status_page_browser\.py:\d+\): \d+ samples", dom)
        assert _png_size(shot) == (1600, 1200)


async def _keep_busy(m: bigactor.Machine) -> None:
    while True:
        await m.call("w.work", 2_000_000)
