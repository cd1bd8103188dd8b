"""An echo server for the transport floors, run in its own process.

    python -m benchmarks._floor_server KIND [--lifetime SECONDS]

KIND is ``tcp`` (raw trio TCP, 4-byte length-prefixed frames, each frame echoed once it is
whole) or ``ws`` (trio-websocket, every message echoed as it arrives; ``max_message_size`` and
``receive_buffer_size`` raised as the floors document recommends). The server prints
``LISTENING <port>`` once it accepts connections, and exits by itself when its standard input
reaches end-of-file (its parent is gone) or after ``--lifetime`` seconds, whichever is first.
"""

from __future__ import annotations

import argparse
import functools

import trio

from ._framing import FrameReader, send_frame

WS_MAX_MESSAGE = 256 << 20  # large enough for a 64 MiB message in one piece
WS_RECEIVE_BUFFER = 1 << 20  # 1 MiB: the default of 4 KiB costs 2.5-7x on bulk


async def _tcp_handler(stream: trio.SocketStream) -> None:
    reader = FrameReader(stream)
    try:
        while True:
            await send_frame(stream, await reader.read())
    except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def _ws_handler(request: object) -> None:
    from trio_websocket import ConnectionClosed

    ws = await request.accept()  # type: ignore[attr-defined]
    try:
        while True:
            await ws.send_message(await ws.get_message())
    except ConnectionClosed:
        pass


async def _serve(kind: str, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    if kind == "tcp":
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, _tcp_handler, listeners)
            task_status.started(port)
    elif kind == "ws":
        from trio_websocket import serve_websocket

        serve = functools.partial(
            serve_websocket,
            _ws_handler,
            "127.0.0.1",
            0,
            None,
            max_message_size=WS_MAX_MESSAGE,
            receive_buffer_size=WS_RECEIVE_BUFFER,
        )
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve)
            task_status.started(server.port)
    else:
        raise SystemExit(f"unknown floor server kind {kind!r} (tcp or ws)")


async def _until_stdin_closes() -> None:
    stdin = trio.lowlevel.FdStream(0)
    while await stdin.receive_some(4096):
        pass


async def main(kind: str, lifetime: float) -> None:
    """Serve ``kind`` until stdin closes or ``lifetime`` seconds pass."""
    with trio.move_on_after(lifetime):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(_serve, kind)
            print(f"LISTENING {port}", flush=True)
            await _until_stdin_closes()
            nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("kind", choices=["tcp", "ws"])
    parser.add_argument("--lifetime", type=float, default=600.0)
    args = parser.parse_args()
    trio.run(main, args.kind, args.lifetime)
