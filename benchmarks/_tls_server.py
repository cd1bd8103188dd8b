"""The servers of the TLS section, each run in its own process.

    python -m benchmarks._tls_server KIND [--lifetime SECONDS]

KIND is ``floor`` (blocking ``ssl`` sockets, a thread per connection, 4-byte length-prefixed
frames, each echoed once whole: the floor) or ``wire`` (bigactor's wire serving an ``echo``
actor as a worker serves it: ``_rpc.serve_stream`` through an ``Admission`` with a
``TLSTransport`` on one port, with the plain ``Transport`` over TCP on another).

The server makes its own key, as a worker would, and talks to its parent over stdin/stdout:
it prints ``KEY <hex of the public key PEM>``; the parent answers with one JSON line
(``ca``, ``cert``: PEM, ``hmac``: hex); the server prints ``LISTENING <tls port> [<tcp port>]``.
It exits when its standard input reaches end-of-file or after ``--lifetime`` seconds.
"""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import struct
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from bigactor import _pki, _rpc
from bigactor._rpc._threads import run_in_thread
from bigactor._rpc._tls import TLSTransport

from ._bigactor import Echo

HEADER = struct.Struct("!I")
SOCKET_BUFFER = 4 << 20


def recv_exactly(sock: ssl.SSLSocket, view: memoryview) -> None:
    """Fill ``view`` from a blocking socket; EOFError if the peer closes first."""
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if not n:
            raise EOFError
        got += n


class FrameEcho:
    """Blocking length-prefixed frames on an ``ssl`` socket, into one reused buffer."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock
        self._header = bytearray(HEADER.size)
        self._buffer = bytearray(1 << 16)

    def read(self) -> memoryview:
        """The next frame, in the reused buffer (valid until the next read)."""
        recv_exactly(self.sock, memoryview(self._header))
        (n,) = HEADER.unpack(self._header)
        if n > len(self._buffer):
            self._buffer = bytearray(n)
        view = memoryview(self._buffer)[:n]
        recv_exactly(self.sock, view)
        return view

    def write(self, payload: bytes | memoryview) -> None:
        """Send one frame (a small one in one write, like the trio TCP floor)."""
        if len(payload) <= 1 << 16:
            self.sock.sendall(HEADER.pack(len(payload)) + bytes(payload))
        else:
            self.sock.sendall(HEADER.pack(len(payload)))
            self.sock.sendall(payload)


def tune(sock: socket.socket) -> None:
    """TCP_NODELAY and the kernel buffers bigactor asks for."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)


def _floor_connection(raw: socket.socket, context: ssl.SSLContext) -> None:
    try:
        tune(raw)
        with context.wrap_socket(raw, server_side=True) as sock:
            echo = FrameEcho(sock)
            while True:
                echo.write(echo.read())
    except (EOFError, OSError):
        pass


def serve_floor(context: ssl.SSLContext) -> int:
    """Accept blocking TLS connections in a thread; return the port."""
    listener = socket.create_server(("127.0.0.1", 0))

    def accept_loop() -> None:
        while True:
            raw, _ = listener.accept()
            threading.Thread(target=_floor_connection, args=(raw, context), daemon=True).start()

    threading.Thread(target=accept_loop, daemon=True).start()
    port: int = listener.getsockname()[1]
    return port


async def serve_wire(
    transport: TLSTransport,
    key: bytes,
    task_status: trio.TaskStatus[tuple[int, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve an ``echo`` actor over mutual TLS and over plain TCP until cancelled."""
    [tls] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    [tcp] = await trio.open_tcp_listeners(0, host="127.0.0.1")
    tls_port, tcp_port = tls.socket.getsockname()[1], tcp.socket.getsockname()[1]
    tls_addr, tcp_addr = f"tls:127.0.0.1:{tls_port}", f"tcp:127.0.0.1:{tcp_port}"
    transports = {tls_addr: transport, tcp_addr: _rpc.Transport()}
    async with trio.open_nursery() as nursery:
        served = {}
        for addr, through in transports.items():
            table = _rpc.ActorTable(addr, nursery, run_in_thread)
            table.add("echo", Echo())
            served[addr] = (table, _rpc.Admission(addr=addr, transport=through))

        def handler(addr: str) -> Callable[[trio.SocketStream], Awaitable[None]]:
            table, admission = served[addr]

            async def handle(stream: trio.SocketStream) -> None:
                await _rpc.serve_stream(stream, admission, key, table, run_in_thread)

            return handle

        nursery.start_soon(trio.serve_listeners, handler(tls_addr), [tls])
        nursery.start_soon(trio.serve_listeners, handler(tcp_addr), [tcp])
        task_status.started((tls_port, tcp_port))


async def _until_stdin_closes() -> None:
    stdin = trio.lowlevel.FdStream(0)
    while await stdin.receive_some(4096):
        pass


async def main(kind: str, lifetime: float) -> None:
    """Get certified by the parent, serve ``kind`` until stdin closes or ``lifetime`` passes."""
    key = _pki.new_key()
    print(f"KEY {_pki.public_key_pem(key).hex()}", flush=True)
    line = await trio.to_thread.run_sync(sys.stdin.buffer.readline)
    setup: dict[str, Any] = json.loads(line)
    identity = _pki.Identity(cert_pem=setup["cert"].encode(), key_pem=_pki.private_key_pem(key))
    ca_pem = setup["ca"].encode()
    with trio.move_on_after(lifetime):
        async with trio.open_nursery() as nursery:
            if kind == "floor":
                port = serve_floor(_pki.server_context(identity, ca_pem))
                print(f"LISTENING {port}", flush=True)
            else:
                transport = TLSTransport(identity, ca_pem)
                tls_port, tcp_port = await nursery.start(serve_wire, transport, bytes.fromhex(setup["hmac"]))
                print(f"LISTENING {tls_port} {tcp_port}", flush=True)
            await _until_stdin_closes()
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=["floor", "wire"])
    parser.add_argument("--lifetime", type=float, default=600.0)
    args = parser.parse_args()
    trio.run(main, args.kind, args.lifetime)
