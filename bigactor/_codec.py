"""Serialisation of calls, replies, services and errors.

Values travel as dill pickles (protocol 5), so classes and functions defined in the driver's
``__main__`` travel by value and workers never run the user's ``__main__``. Reading uses the C
unpickler (``pickle.loads`` reads dill's output once dill is imported), which is as fast as plain
pickle.

dill's pickler is written in Python and costs ~30 µs even for a tiny tuple, so values made only of
plain built-in data (None, bool, int, float, str, bytes and tuples/lists/dicts/sets of them) take
the C pickler: for those, both give the same value back.
"""

from __future__ import annotations

import pickle
from typing import Any

import dill

from ._errors import CodecError

PROTOCOL = 5

_ATOMS = frozenset({type(None), bool, int, float, str, bytes, complex})
_SEQUENCES = frozenset({tuple, list, set, frozenset})
_PLAIN_LIMIT = 256


def _is_plain(value: Any) -> bool:
    """Return whether ``value`` is built-in data only (looks at most ``_PLAIN_LIMIT`` nodes).

    Runs for every call and reply, so it is a flat loop, not a recursion of generators.
    """
    stack = [value]
    budget = _PLAIN_LIMIT
    while stack:
        budget -= 1
        if budget < 0:
            return False
        v = stack.pop()
        t = type(v)
        if t in _ATOMS:
            continue
        if t in _SEQUENCES:
            stack.extend(v)
        elif t is dict:
            stack.extend(v)
            stack.extend(v.values())
        else:
            return False
    return True


def dumps(value: Any, what: str = "value") -> bytes:
    """Serialise ``value``; raise CodecError naming the unpicklable part.

    ``what`` names the value in the error (``arg 0``, ``service 'counter'``).
    """
    if _is_plain(value):
        return pickle.dumps(value, PROTOCOL)
    try:
        data: bytes = dill.dumps(value, protocol=PROTOCOL, recurse=True)
    except Exception as exc:
        path = find_unpicklable(value, what)
        raise CodecError(f"cannot serialise {what}: {type(exc).__name__}: {exc}", path) from exc
    return data


def loads(data: bytes | bytearray | memoryview) -> Any:
    """Deserialise what :func:`dumps` wrote. Only ever call this on authenticated bytes."""
    return pickle.loads(data)


def _try(value: Any) -> bool:
    try:
        dill.dumps(value, protocol=PROTOCOL, recurse=True)
    except Exception:
        return False
    return True


def find_unpicklable(value: Any, path: str, depth: int = 0) -> str:
    """Return the path to the innermost part of ``value`` that cannot be serialised.

    The path reads like ``arg 0 -> .conn -> socket``: attribute names, indexes and dict keys,
    ending with the type name of the culprit.
    """
    if depth > 20:
        return f"{path} -> {type(value).__name__}"
    children: list[tuple[str, Any]] = []
    if isinstance(value, (list, tuple, set, frozenset)):
        children = [(f"[{i}]", v) for i, v in enumerate(value)]
    elif isinstance(value, dict):
        children = [(f"[{k!r}]", v) for k, v in value.items()]
    else:
        state = getattr(value, "__dict__", None)
        if isinstance(state, dict) and not isinstance(value, type):
            children = [(f".{k}", v) for k, v in state.items()]
    for name, child in children:
        if not _try(child):
            return find_unpicklable(child, f"{path} -> {name}", depth + 1)
    return f"{path} -> {type(value).__name__}"


def dumps_call(target: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """Serialise a call; an unpicklable argument raises CodecError naming it (``arg 0 -> .x``)."""
    value = (target, args, kwargs)
    if _is_plain(value):
        return pickle.dumps(value, PROTOCOL)
    try:
        data: bytes = dill.dumps(value, protocol=PROTOCOL, recurse=True)
    except Exception as exc:
        parts = [(f"arg {i}", a) for i, a in enumerate(args)]
        parts += [(f"kwarg {k!r}", v) for k, v in kwargs.items()]
        path = next((find_unpicklable(v, n) for n, v in parts if not _try(v)), "")
        raise CodecError(
            f"cannot serialise the arguments of {target}: {type(exc).__name__}: {exc}", path
        ) from exc
    return data
