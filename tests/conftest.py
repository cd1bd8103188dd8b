"""Shared fixtures and helpers of the bigactor test suite."""

from __future__ import annotations

import http.server
import logging
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from imds_support import Metadata


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    """A real EC2 API on loopback for a module's tests: moto's server, on a free port."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    assert host == "127.0.0.1"
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def imds() -> Iterator[tuple[str, Metadata]]:
    """A fake IMDSv2 service on loopback (see ``imds_support``): its URL and its state."""
    state = Metadata()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _reply(self, code: int, body: str = "") -> None:
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_PUT(self) -> None:
            ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
            if self.path != "/latest/api/token" or ttl is None:
                self._reply(400)
                return
            state.ttls.append(ttl)
            state.tokens.append(f"token-{len(state.tokens)}")
            self._reply(200, state.tokens[-1])

        def do_GET(self) -> None:
            if not state.tokens or self.headers.get("X-aws-ec2-metadata-token") != state.tokens[-1]:
                self._reply(401)
                return
            path = self.path.removeprefix("/latest/")
            if path == "meta-data/spot/instance-action" and state.action is not None:
                self._reply(200, state.action)
            elif path in state.values:
                self._reply(200, state.values[path])
            else:
                self._reply(404, "Not Found")

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
