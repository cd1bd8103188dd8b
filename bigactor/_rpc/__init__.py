"""The wire: authenticated websocket connections multiplexing calls (see each module)."""

from ._auth import VersionMismatch, check_versions, versions
from ._connection import Connection, current_actor, current_connection
from ._frames import Kind
from ._link import Link
from ._remote import decode_error, encode_error
from ._server import Actor, ActorTable, RunSync, idempotent, is_idempotent, method_kind, method_table
from ._threads import MethodCancelled, cancelled
from ._transport import Admission, connect, open_stream, register_scheme, serve_stream

__all__ = [
    "Actor",
    "Admission",
    "ActorTable",
    "Connection",
    "Kind",
    "Link",
    "MethodCancelled",
    "RunSync",
    "VersionMismatch",
    "cancelled",
    "check_versions",
    "connect",
    "current_actor",
    "current_connection",
    "decode_error",
    "encode_error",
    "idempotent",
    "is_idempotent",
    "method_kind",
    "method_table",
    "open_stream",
    "register_scheme",
    "serve_stream",
    "versions",
]
