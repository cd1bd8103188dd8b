"""Connection: one authenticated websocket multiplexing calls by id.

The caller's side issues calls (:meth:`Connection.call`, :meth:`Connection.open_stream`) and
waits for their replies; the machine's side hands incoming calls to a :class:`Dispatcher` and
sends what it answers. Each side runs two tasks, owned by the nursery that runs
:meth:`Connection.run`:

* the sender drains one outbox, packing every queued frame into as few websocket messages as
  the message limit allows (many calls or replies per message when many are queued);
* the reader splits each message into frames and wakes whoever waits for them; it decodes no
  payload itself (the waiting task does), so it never blocks on user data.

A call costs one task switch on each side beyond the transport. When the connection breaks,
every pending call on it fails with the connection's error at once: :class:`CallNotSent` for
calls whose frame never left the outbox (nothing of them reached the socket: safe to re-send),
:class:`TransportError` for the others (they may have run).
"""

from __future__ import annotations

import contextvars
import functools
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import outcome
import trio

from .._codec import OOB, Payload, oob_lengths
from .._errors import BigActorError, CallNotSent, CodecError, ProtocolError, TransportError
from .._metrics import payload_size
from . import _frames
from ._frames import Kind
from ._remote import encode_error
from ._websocket import Unallocatable, WebSocket, WebSocketClosed

log = logging.getLogger("bigactor.rpc")

MAX_MESSAGE = _frames.CHUNK + 64 * 1024
#: the most bytes of out-of-band buffers one frame may announce (more is a protocol error)
MAX_BUFFERS = 1 << 40
#: a stream's producer runs at most this many items ahead of its consumer...
STREAM_WINDOW = 32
#: ...and at most this many bytes (but always one item, however big)
STREAM_BYTES = 8 << 20

#: the connection whose reader received the call being served (set in each reader task, so
#: every task started for a call on it sees it): how a machine knows who is calling it
current_connection: contextvars.ContextVar[Connection] = contextvars.ContextVar("bigactor_connection")
#: the name of the actor whose method is running (set by the machine's dispatcher)
current_actor: contextvars.ContextVar[str] = contextvars.ContextVar("bigactor_actor")


class Dispatcher(Protocol):
    """What the machine's side of a connection does with incoming frames."""

    def call_received(self, conn: Connection, call_id: int, payload: memoryview, flags: int) -> None: ...
    def cancel_received(self, call_id: int) -> None: ...
    def credit_received(self, call_id: int, n: int) -> None: ...
    def closed(self) -> None: ...


class _Stream:
    """Caller-side state of one streamed reply."""

    __slots__ = ("consumed", "consumed_bytes", "done", "items", "task")

    def __init__(self) -> None:
        self.items: deque[tuple[int, int, Any]] = deque()
        self.task: trio.lowlevel.Task | None = None
        self.done = False
        self.consumed = 0
        self.consumed_bytes = 0


class Connection:
    """One end of an authenticated connection; see the module docstring."""

    def __init__(
        self,
        ws: WebSocket,
        addr: str,
        dispatcher: Dispatcher | None = None,
        on_close: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.addr = addr
        self._ws = ws
        self._dispatcher = dispatcher
        self._on_close = on_close
        #: (size, pieces, out-of-band buffers, id of the CALL it belongs to or 0)
        self._outbox: deque[tuple[int, list[_frames.Piece], tuple[memoryview, ...], int]] = deque()
        #: calls whose CALL frame is still in the outbox: nothing of them was written yet
        self._unsent: set[int] = set()
        self._wakeup = trio.Event()
        self._pending: dict[int, trio.lowlevel.Task] = {}
        self._streams: dict[int, _Stream] = {}
        self._partial: dict[int, list[memoryview]] = {}
        self._next_id = 1
        self.error: BaseException | None = None
        self._done = trio.Event()

    @property
    def broken(self) -> bool:
        return self.error is not None

    # -- sending ------------------------------------------------------------------------------

    def send(
        self,
        kind: Kind,
        call_id: int,
        payload: _frames.Piece | Sequence[_frames.Piece] = b"",
        flags: int = 0,
        buffers: Sequence[memoryview] = (),
    ) -> None:
        """Queue one frame (chunked if large) and its out-of-band buffers; never blocks."""
        if self.error is not None:
            return
        frames = _frames.encode(kind, call_id, payload, flags)
        if not buffers and not self._outbox and len(frames) == 1 and self._ws.try_send(frames[0]):
            # Written at once (nothing queued before it, so order holds).
            if self._ws.backlog:
                self._wakeup.set()
            return
        call = call_id if kind == Kind.CALL else 0
        if call:
            self._unsent.add(call)
        for frame in frames[:-1]:
            self._outbox.append((sum(len(p) for p in frame), frame, (), call))
        self._outbox.append((sum(len(p) for p in frames[-1]), frames[-1], tuple(buffers), call))
        self._wakeup.set()

    def send_payload(self, kind: Kind, call_id: int, payload: Payload, flags: int = 0) -> None:
        """Queue an encoded value (see _codec.encode) as one frame and its buffers."""
        self.send(kind, call_id, payload.pieces, payload.flags | flags, payload.buffers)

    async def _sender(self) -> None:
        while True:
            if not self._outbox:
                if self._ws.backlog:
                    await self._ws.flush()
                    continue
                await self._wakeup.wait()
                self._wakeup = trio.Event()
                continue
            size, parts, buffers, call = self._outbox.popleft()
            self._unsent.discard(call)  # from here on, some of it may reach the machine
            more: list[_frames.Piece] = []
            # A frame with out-of-band buffers ends its message: the buffers follow it at once.
            while not buffers and self._outbox and size + self._outbox[0][0] <= MAX_MESSAGE:
                n, more, buffers, call = self._outbox.popleft()
                self._unsent.discard(call)
                size += n
                parts.extend(more)
            await self._ws.send_message(parts)
            del parts, more
            while buffers:
                await self._ws.send_message(buffers[0])
                buffers = buffers[1:]
            # No reference left behind: a large buffer must not live on until the next send.

    # -- receiving ----------------------------------------------------------------------------

    async def _reader(self) -> None:
        current_connection.set(self)
        while True:
            message = await self._ws.get_message()
            waiting = self._dispatch_all(message)
            # Drop our reference now: a large message must not live on until the next one.
            del message
            if waiting is not None:
                await self._read_buffers(waiting)
                del waiting

    def _dispatch_all(self, message: bytes | memoryview) -> _frames.Frame | None:
        """Dispatch a message's frames; return its last frame if it waits for buffers."""
        waiting = None
        for frame in _frames.decode(message):
            if waiting is not None:
                raise ProtocolError("a frame with out-of-band buffers must end its message")
            if frame[1] & OOB and not frame[1] & _frames.MORE:
                waiting = frame
            else:
                self._dispatch(frame)
        return waiting

    async def _read_buffers(self, frame: _frames.Frame) -> None:
        """Read the out-of-band buffers that follow ``frame``, then dispatch it with them."""
        kind, flags, call_id, payload = frame
        if self._partial and call_id in self._partial:
            payload = self._join(call_id, payload)
        try:
            lengths = oob_lengths(payload)
        except CodecError as exc:
            raise ProtocolError(f"malformed out-of-band header: {exc}") from exc
        if sum(lengths) > MAX_BUFFERS:
            # 2**64-1 used to crash the reader with OverflowError or SystemError.
            raise ProtocolError(
                f"out-of-band buffers of {sum(lengths)} bytes announced (at most {MAX_BUFFERS})"
            )
        buffers = []
        dropped = 0
        for length in lengths:
            try:
                buffer = await self._ws.get_message(limit=length, droppable=True)
            except Unallocatable as exc:
                dropped += exc.size  # read past: the connection goes on, this frame fails
                continue
            if len(buffer) != length:
                raise ProtocolError(f"out-of-band buffer of {len(buffer)} bytes, {length} announced")
            buffers.append(buffer)
        if dropped:
            del buffers
            self._fail_frame(
                kind,
                call_id,
                CodecError(f"{self.addr}: no memory here for {dropped} bytes of out-of-band buffers"),
            )
            return
        self._dispatch((kind, flags, call_id, payload), buffers)

    def _fail_frame(self, kind: int, call_id: int, error: BigActorError) -> None:
        """A frame that could not be received fails its one call, never the connection."""
        if kind == Kind.CALL:
            # The caller hears of it; its method never runs.
            self.send(Kind.ERROR, call_id, encode_error(error, framework=True))
            return
        task = self._pending.pop(call_id, None)
        if task is not None:
            trio.lowlevel.reschedule(task, outcome.Error(error))
        elif call_id in self._streams:
            self._stream_item(call_id, Kind.ERROR, 0, error)

    def _join(self, call_id: int, payload: memoryview) -> memoryview:
        parts = self._partial.pop(call_id)
        parts.append(payload)
        return memoryview(b"".join(parts))

    def _dispatch(self, frame: _frames.Frame, buffers: list[Any] | None = None) -> None:
        kind, flags, call_id, payload = frame
        data: Any = payload if buffers is None else (payload, buffers)
        if flags & _frames.MORE:
            self._partial.setdefault(call_id, []).append(payload)
            if sum(len(p) for p in self._partial[call_id]) > (1 << 34):
                raise ProtocolError("chunked payload larger than 16 GiB")
            return
        if buffers is None and self._partial and call_id in self._partial:
            data = payload = self._join(call_id, payload)
        if kind == Kind.REPLY or kind == Kind.ERROR:
            task = self._pending.pop(call_id, None)
            if task is not None:
                trio.lowlevel.reschedule(task, outcome.Value((kind, flags, data)))
            elif call_id in self._streams:
                self._stream_item(call_id, kind, flags, data)
        elif kind == Kind.STREAM_DATA or kind == Kind.STREAM_END:
            self._stream_item(call_id, kind, flags, data)
        elif self._dispatcher is None:
            raise ProtocolError(f"unexpected {Kind(kind).name} frame on a calling connection")
        elif kind == Kind.CALL:
            self._dispatcher.call_received(self, call_id, data, flags)
        elif kind == Kind.CANCEL:
            self._dispatcher.cancel_received(call_id)
        elif kind == Kind.CREDIT:
            if len(payload) != 4:
                raise ProtocolError("malformed CREDIT frame")
            self._dispatcher.credit_received(call_id, int.from_bytes(payload, "little"))

    def _stream_item(self, call_id: int, kind: int, flags: int, payload: Any) -> None:
        stream = self._streams.get(call_id)
        if stream is None:
            return  # the caller gave up on this stream; late data is dropped
        stream.items.append((kind, flags, payload))
        if kind != Kind.STREAM_DATA:
            stream.done = True
        if stream.task is not None:
            task, stream.task = stream.task, None
            trio.lowlevel.reschedule(task)

    # -- lifecycle ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the connection until it closes; then fail everything pending on it."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._guard, self._sender, nursery.cancel_scope)
                await self._guard(self._reader, nursery.cancel_scope)
        finally:
            self._close(TransportError(self.addr, "connection stopped"))

    async def _guard(self, part: Callable[[], Any], scope: trio.CancelScope) -> None:
        """Run the sender or reader; turn its end into the connection's error."""
        error: BaseException
        try:
            await part()
            return
        except WebSocketClosed as exc:
            error = TransportError(self.addr, f"connection closed ({exc})")
        except ProtocolError as exc:
            log.warning("%s: closing connection: %s", self.addr, exc)
            error = TransportError(self.addr, f"protocol error: {exc}")
            self._close(error)
            with trio.move_on_after(1) as shield:
                shield.shield = True
                await self._ws.aclose(1002, str(exc)[:120])
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            error = TransportError(self.addr, f"connection lost: {exc!r}")
        self._close(error)
        scope.cancel()

    def _not_sent(self) -> CallNotSent:
        """The error of a call that never left this side of the broken connection."""
        error = self.error
        message = error.message if isinstance(error, TransportError) else str(error)
        exc = CallNotSent(self.addr, f"{message} (the call was not sent)")
        exc.__cause__ = error
        return exc

    def _close(self, error: BaseException) -> None:
        if self.error is not None:
            return
        self.error = error
        not_sent = self._not_sent() if isinstance(error, TransportError) else error
        pending, self._pending = self._pending, {}
        for call_id, task in pending.items():
            trio.lowlevel.reschedule(task, outcome.Error(not_sent if call_id in self._unsent else error))
        for call_id, stream in self._streams.items():
            stream.items.append((Kind.ERROR, 0, not_sent if call_id in self._unsent else error))
            stream.done = True
            if stream.task is not None:
                trio.lowlevel.reschedule(stream.task)
                stream.task = None
        if self._dispatcher is not None:
            self._dispatcher.closed()
        if self._on_close is not None:
            self._on_close(error)
        self._done.set()

    def abort(self, error: BaseException) -> None:
        """Fail every pending call with ``error`` now (the machine stopped)."""
        self._close(error)

    async def aclose(self) -> None:
        """Close the websocket; pending calls fail. Idempotent."""
        self._close(TransportError(self.addr, "connection closed by this side"))
        with trio.move_on_after(1) as scope:
            scope.shield = True
            await self._ws.aclose()

    # -- calls (caller side) ------------------------------------------------------------------

    async def call(self, payload: Payload) -> tuple[int, int, memoryview]:
        """Send a CALL and wait for its REPLY or ERROR frame.

        Cancelling the caller sends CANCEL to the machine and re-raises ``trio.Cancelled``.
        """
        call_id = self.submit(payload)
        del payload  # sent or queued: nothing of it need wait here with the call
        result: tuple[int, int, memoryview] = await trio.lowlevel.wait_task_rescheduled(
            functools.partial(self.abandon, call_id)
        )
        return result

    def submit(self, payload: Payload) -> int:
        """Send a CALL whose REPLY or ERROR frame will reschedule the current task; its id.

        The task must then wait in ``trio.lowlevel.wait_task_rescheduled`` with
        ``functools.partial(conn.abandon, call_id)`` as the abort function, as :meth:`call`
        does (a caller that does so itself saves a coroutine per call in flight).
        """
        if self.error is not None:
            raise self._not_sent()
        call_id = self._next_id
        self._next_id += 1
        self._pending[call_id] = trio.lowlevel.current_task()
        self.send_payload(Kind.CALL, call_id, payload)
        return call_id

    def abandon(self, call_id: int, _: Any) -> trio.lowlevel.Abort:
        """The abort function of a call's wait: its caller was cancelled; tell the machine."""
        if self._pending.pop(call_id, None) is not None:
            self.send(Kind.CANCEL, call_id)
        return trio.lowlevel.Abort.SUCCEEDED

    def open_stream(self, payload: Payload) -> int:
        """Send a streaming CALL; read it with :meth:`next_item`; end with :meth:`close_stream`."""
        if self.error is not None:
            raise self._not_sent()
        call_id = self._next_id
        self._next_id += 1
        self._streams[call_id] = _Stream()
        self.send_payload(Kind.CALL, call_id, payload, _frames.STREAM)
        return call_id

    async def next_item(self, call_id: int) -> tuple[int, int, Any]:
        """Wait for the next frame of a stream: STREAM_DATA, STREAM_END or ERROR."""
        stream = self._streams[call_id]
        if not stream.items:
            stream.task = trio.lowlevel.current_task()

            def abort(_: Any) -> trio.lowlevel.Abort:
                stream.task = None
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
        item = stream.items.popleft()
        if item[0] == Kind.STREAM_DATA:
            stream.consumed += 1
            stream.consumed_bytes += payload_size(item[2])
            # Credit back half a window of items or of bytes, whichever comes first: the
            # producer waits on either, so each must be able to release it.
            if stream.consumed >= STREAM_WINDOW // 2 or stream.consumed_bytes >= STREAM_BYTES // 2:
                self.send(Kind.CREDIT, call_id, stream.consumed.to_bytes(4, "little"))
                stream.consumed = stream.consumed_bytes = 0
        return item

    def close_stream(self, call_id: int) -> None:
        """Forget a stream; if it has not ended, tell the machine to stop producing it."""
        stream = self._streams.pop(call_id, None)
        if stream is not None and not stream.done:
            self.send(Kind.CANCEL, call_id)
