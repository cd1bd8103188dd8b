"""Errors on the wire: what an ERROR frame carries and how the caller rebuilds it.

An ERROR frame carries the exception twice: pickled whole, for the caller to rebuild, and
described in plain data (its type name, ``str()``, notes and traceback), which still says what
happened when the pickle cannot be made or cannot be loaded in the caller.

The traceback is formatted on the machine, where its frames are, in two forms: the full one,
and one without the frames of bigactor and trio (and outcome, through which trio hands a
thread's result back). Every call reaches its method through the same such frames: they tell
the reader nothing about their program.
"""

from __future__ import annotations

import os
import pickle
import traceback
from typing import Any

import outcome
import trio

from .. import _codec
from .._errors import BigActorError, RemoteError, as_remote, safe_str

# Where the frames hidden from remote tracebacks live: the bigactor package, trio, outcome.
_HIDDEN = (
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep,
    os.path.dirname(os.path.abspath(trio.__file__)) + os.sep,
    os.path.dirname(os.path.abspath(outcome.__file__)) + os.sep,
)


def encode_error(exc: BaseException, framework: bool = False) -> bytes:
    """Encode ``exc`` for an ERROR frame; never raises, whatever ``exc`` does.

    ``framework`` marks errors raised by bigactor itself on the machine (no such method, an
    argument that cannot be decoded): the caller re-raises those as they are, not as RemoteError.
    An exception whose ``str()`` or pickling fails still travels, as its type name, what could be
    said of it, its notes and its traceback.
    """
    t = type(exc)
    type_name = t.__qualname__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"
    tb, tb_full = ("", "") if framework else _format_traceback(exc)
    try:
        notes = [note for note in getattr(exc, "__notes__", ()) if isinstance(note, str)]
    except Exception:
        notes = []
    try:
        blob: bytes | None = _codec.dumps(exc, "exception")
    except Exception:
        blob = None
    return pickle.dumps((framework, type_name, safe_str(exc), tb, tb_full, notes, blob), _codec.PROTOCOL)


def decode_error(payload: bytes | memoryview, addr: str) -> BaseException:
    """Rebuild the exception of an ERROR frame (see :func:`bigactor.RemoteError`)."""
    framework, type_name, message, tb, tb_full, notes, blob = pickle.loads(payload)
    exc: Any = None
    if blob is not None:
        try:
            exc = _codec.loads(blob)
        except Exception:
            exc = None
    if not isinstance(exc, BaseException):
        exc = RemoteError(type_name, message, tb, addr, tb_full)
    elif framework and isinstance(exc, BigActorError):
        return exc
    if notes and not getattr(exc, "__notes__", None):
        # Notes travel in the exception's state, unless it does not pickle its __dict__.
        exc.__notes__ = notes
    return as_remote(exc, type_name, tb, addr, tb_full)


def _format_traceback(exc: BaseException) -> tuple[str, str]:
    """``exc``'s traceback without the hidden frames, and in full ("" when none are hidden).

    The exception's own notes are left out: they travel as notes, and are printed after it.
    Never raises: a traceback that cannot be formatted travels as "".
    """
    try:
        te = traceback.TracebackException.from_exception(exc)
        te.__notes__ = None
        origins = _origins(exc)
        for one in _chain(te):
            one.stack = traceback.StackSummary.from_list([_named(frame, origins) for frame in one.stack])
        full = "".join(te.format())
        hidden = False
        for one in _chain(te):
            kept = [frame for frame in one.stack if not frame.filename.startswith(_HIDDEN)]
            hidden = hidden or len(kept) < len(one.stack)
            one.stack = traceback.StackSummary.from_list(kept)
        return ("".join(te.format()), full) if hidden else (full, "")
    except Exception:
        return "", ""


def _chain(te: traceback.TracebackException) -> list[traceback.TracebackException]:
    """``te`` and every exception it prints with it: causes, contexts, members of a group."""
    out: list[traceback.TracebackException] = []
    todo = [te]
    while todo:
        one = todo.pop()
        if all(one is not seen for seen in out):
            out.append(one)
            todo += [other for other in (one.__cause__, one.__context__, *(one.exceptions or ())) if other]
    return out


# cloudpickle names the code of every function it pickles by value (the program's ``__main__``)
# "<dynamic-code>", so its frames would read ``File "<dynamic-code>"``, with no source line. The
# function's globals still hold its module's ``__file__``, and its line numbers are the file's.
_DYNAMIC_CODE = "<dynamic-code>"


def _origins(exc: BaseException) -> dict[tuple[str, int], str]:
    """The files that by-value code in ``exc``'s traceback came from, by (function, line)."""
    origins: dict[tuple[str, int], str] = {}
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        one = todo.pop()
        if one is None or any(one is e for e in seen):
            continue
        seen.append(one)
        for frame, line in traceback.walk_tb(one.__traceback__):
            path = frame.f_globals.get("__file__")
            if frame.f_code.co_filename == _DYNAMIC_CODE and isinstance(path, str):
                origins[(frame.f_code.co_name, line)] = path
        todo += [one.__cause__, one.__context__]
        if isinstance(one, BaseExceptionGroup):
            todo += one.exceptions
    return origins


def _named(frame: traceback.FrameSummary, origins: dict[tuple[str, int], str]) -> traceback.FrameSummary:
    """``frame``, named by the file its code came from if it travelled by value."""
    path = origins.get((frame.name, frame.lineno or 0)) if frame.filename == _DYNAMIC_CODE else None
    if path is None:
        return frame
    return traceback.FrameSummary(
        path,
        frame.lineno,
        frame.name,
        end_lineno=frame.end_lineno,
        colno=frame.colno,
        end_colno=frame.end_colno,
    )
