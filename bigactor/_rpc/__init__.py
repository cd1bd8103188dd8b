"""The wire: authenticated websocket connections multiplexing calls (see each module)."""

from ._auth import VersionMismatch, check_versions, versions
from ._buffers import POOL as receive_buffers
from ._connection import Connection, current_actor, current_connection
from ._frames import Kind
from ._link import Link
from ._remote import decode_error, encode_error
from ._server import (
    Actor,
    ActorTable,
    RunSync,
    idempotent,
    is_idempotent,
    method_kind,
    method_table,
    set_post_mortem,
)
from ._threads import MethodCancelled, cancelled, run_in_thread
from ._transport import HANDSHAKE_TIMEOUT, Admission, Transport, connect, host_port, serve_stream

__all__ = [
    "HANDSHAKE_TIMEOUT",
    "Actor",
    "Admission",
    "ActorTable",
    "Connection",
    "Kind",
    "Link",
    "MethodCancelled",
    "RunSync",
    "Transport",
    "VersionMismatch",
    "cancelled",
    "check_versions",
    "connect",
    "current_actor",
    "current_connection",
    "decode_error",
    "encode_error",
    "host_port",
    "idempotent",
    "is_idempotent",
    "method_kind",
    "method_table",
    "receive_buffers",
    "run_in_thread",
    "serve_stream",
    "set_post_mortem",
    "versions",
]
