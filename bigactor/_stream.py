"""``RemoteStream``: the items of a remote generator method, as an async iterator.

``Machine.stream`` (and a handle's generator methods) make one; it opens its stream on the
machine's connection at the first item, and closing it (``async with``, ``aclose``, or leaving
the ``async for`` early) stops the generator on the machine.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

import trio

from . import _codec, _rpc
from ._errors import BigActorError, TransportError
from ._rpc import Kind


class _Source(Protocol):
    """What a stream needs of its machine."""

    addr: str

    async def _connection(self) -> _rpc.Connection: ...

    async def _classify(self, exc: BigActorError) -> BigActorError: ...


class RemoteStream:
    """The items of a remote generator method; an async iterator and async context manager."""

    def __init__(self, machine: _Source, method: str, payload: _codec.Payload) -> None:
        self._machine = machine
        self._method = method
        self._payload = payload
        self._conn: _rpc.Connection | None = None
        self._id: int | None = None
        self._finished = False

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        if self._finished:
            raise StopAsyncIteration
        if self._conn is None:
            try:
                # A machine killed a moment ago refuses the connection before its exit is
                # seen: classified like a call's error, that is MachineLost, not the refusal.
                self._conn = await self._machine._connection()
                self._id = self._conn.open_stream(self._payload)
            except TransportError as exc:
                self._finished = True
                raise await self._machine._classify(exc) from None
        assert self._id is not None
        kind, flags, data = await self._conn.next_item(self._id)
        if kind == Kind.STREAM_DATA:
            return _codec.decode(data, flags, f"an item of {self._method} from {self._machine.addr}")
        self._close()
        if kind == Kind.STREAM_END:
            raise StopAsyncIteration
        if isinstance(data, TransportError):
            raise await self._machine._classify(data) from None
        if isinstance(data, BaseException):
            raise data
        raise _rpc.decode_error(data, self._machine.addr)

    def _close(self) -> None:
        self._finished = True
        if self._conn is not None and self._id is not None:
            self._conn.close_stream(self._id)
            self._id = None

    async def aclose(self) -> None:
        """Stop the stream; the machine stops producing it."""
        self._close()

    async def __aenter__(self) -> RemoteStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._close()

    def __del__(self) -> None:
        if self._id is not None and not self._finished:
            try:
                trio.lowlevel.current_task()
            except RuntimeError:
                return  # not in the Trio thread: the connection's end will clean up
            self._close()
