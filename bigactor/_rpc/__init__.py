"""The wire: authenticated websocket connections multiplexing calls (see each module)."""

from ._auth import VersionMismatch, check_versions, versions
from ._connection import Connection
from ._frames import Kind
from ._remote import decode_error, encode_error
from ._server import Actor, ActorTable, RunSync, idempotent, is_idempotent, method_kind, method_table
from ._transport import Admission, connect, open_stream, register_scheme, serve_stream

__all__ = [
    "Actor",
    "Admission",
    "ActorTable",
    "Connection",
    "Kind",
    "RunSync",
    "VersionMismatch",
    "check_versions",
    "connect",
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
