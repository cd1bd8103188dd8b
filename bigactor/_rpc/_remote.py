"""Errors on the wire: what an ERROR frame carries and how the caller rebuilds it."""

from __future__ import annotations

import pickle
import traceback
from typing import Any

from .. import _codec
from .._errors import BigActorError, RemoteError, as_remote, safe_str


def encode_error(exc: BaseException, framework: bool = False) -> bytes:
    """Encode ``exc`` for an ERROR frame; never raises, whatever ``exc`` does.

    ``framework`` marks errors raised by bigactor itself on the machine (no such method, an
    argument that cannot be decoded): the caller re-raises those as they are, not as RemoteError.
    An exception whose ``str()`` or pickling fails still travels, as its type name, what could be
    said of it and its traceback.
    """
    t = type(exc)
    type_name = t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"
    try:
        tb = "" if framework else "".join(traceback.format_exception(exc))
    except Exception:
        tb = ""
    try:
        blob: bytes | None = _codec.dumps(exc, "exception")
    except Exception:
        blob = None
    return pickle.dumps((framework, type_name, safe_str(exc), tb, blob), _codec.PROTOCOL)


def decode_error(payload: bytes | memoryview, addr: str) -> BaseException:
    """Rebuild the exception of an ERROR frame (see :func:`bigactor.RemoteError`)."""
    framework, type_name, message, tb, blob = pickle.loads(payload)
    exc: Any = None
    if blob is not None:
        try:
            exc = _codec.loads(blob)
        except Exception:
            exc = None
    if not isinstance(exc, BaseException):
        return RemoteError(type_name, message, tb, addr)
    if framework and isinstance(exc, BigActorError):
        return exc
    return as_remote(exc, type_name, tb, addr)
