"""Serialisation of calls, replies, services and errors.

Values travel as dill pickles (protocol 5), so classes and functions defined in the driver's
``__main__`` travel by value and workers never run the user's ``__main__``. Reading uses the C
unpickler (``pickle.loads`` reads dill's output once dill is imported), which is as fast as plain
pickle.

dill's pickler is written in Python and costs ~30 µs even for a tiny tuple, so values made only of
plain built-in data (None, bool, int, float, str, bytes and tuples/lists/dicts/sets of them) take
the C pickler: for those, both give the same value back.

Large buffers travel out of band (pickle protocol 5): a ``bytes``, ``bytearray`` or contiguous
``memoryview`` of at least ``OOB_MIN`` bytes, as a value, an argument, or an element of a
top-level list, tuple or dict, is not copied into the pickle but sent as it is after it::

    OOB payload = count: u32 | length: u64 x count | pickle     (then: buffer 0, buffer 1, ...)

Each buffer travels as a websocket message of its own right after its frame's message, and the
receiver reads it straight into a ``bytes`` object of its own: a ``bytes`` value arrives as that
very object and a ``memoryview`` as a view of it (no copy at all); a ``bytearray`` is rebuilt
with one copy, so every value comes back with its own type.
"""

from __future__ import annotations

import pickle
import struct
from typing import Any, NamedTuple

import dill

from ._errors import CodecError

PROTOCOL = 5
OOB = 4  # frame flag: the payload carries out-of-band buffers
OOB_MIN = 64 * 1024

Piece = bytes | bytearray | memoryview
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class Payload(NamedTuple):
    """An encoded value: the frame's pieces, its flags, and its out-of-band buffers (each sent
    as a websocket message of its own right after the frame's message)."""

    pieces: list[Piece]
    flags: int
    buffers: tuple[memoryview, ...] = ()

    @property
    def size(self) -> int:
        return sum(len(p) for p in self.pieces) + sum(b.nbytes for b in self.buffers)


def _bytes_from(buffer: Any) -> bytes:
    """Rebuild an out-of-band ``bytes``: the received object itself when the buffer is all of
    one (the receiver reads each buffer into a ``bytes`` of its own), else a copy."""
    whole = getattr(buffer, "obj", None)
    if type(whole) is bytes and buffer.nbytes == len(whole):
        return whole
    return bytes(buffer)


class _Buffer:
    """A large buffer to pickle out of band; unpickles as its original type."""

    __slots__ = ("data",)

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self.data = data

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        t = type(self.data)
        return (_bytes_from if t is bytes else t, (pickle.PickleBuffer(self.data),))


def _is_big(v: Any) -> bool:
    t = type(v)
    if t is bytes or t is bytearray:
        return len(v) >= OOB_MIN
    return t is memoryview and v.nbytes >= OOB_MIN and v.contiguous


def _lift(value: Any, depth: int = 2) -> tuple[Any, bool]:
    """Wrap the large buffers of ``value`` (itself or in top-level containers) for out of band."""
    if _is_big(value):
        return _Buffer(value), True
    if depth:
        t = type(value)
        if (t is tuple or t is list) and len(value) <= _PLAIN_LIMIT:
            items = [_lift(v, depth - 1) for v in value]
            if any(found for _, found in items):
                return t(v for v, _ in items), True
        elif t is dict and len(value) <= _PLAIN_LIMIT:
            pairs = {k: _lift(v, depth - 1) for k, v in value.items()}
            if any(found for _, found in pairs.values()):
                return {k: v for k, (v, _) in pairs.items()}, True
    return value, False


_ATOMS = frozenset({type(None), bool, int, float, str, bytes, bytearray, complex})
_SEQUENCES = frozenset({tuple, list, set, frozenset})
_PLAIN_LIMIT = 256


SMALL, BIG, OTHER = 0, 1, 2  # what _scan finds


def _scan(value: Any) -> int:
    """Classify ``value``: SMALL (plain built-in data), BIG (plain, with buffers to send out of
    band) or OTHER (needs dill). Looks at most ``_PLAIN_LIMIT`` nodes.

    Runs for every call and reply, so it is one flat loop, not a recursion of generators.
    """
    stack = [value]
    budget = _PLAIN_LIMIT
    found = SMALL
    while stack:
        budget -= 1
        if budget < 0:
            return OTHER
        v = stack.pop()
        t = type(v)
        if t in _ATOMS:
            if (t is bytes or t is bytearray) and len(v) >= OOB_MIN:
                found = BIG
        elif t in _SEQUENCES:
            stack.extend(v)
        elif t is dict:
            stack.extend(v)
            stack.extend(v.values())
        elif t is memoryview and v.nbytes >= OOB_MIN and v.contiguous:
            found = BIG
        else:
            return OTHER
    return found


def _is_plain(value: Any) -> bool:
    return _scan(value) != OTHER


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


def _pickle(value: Any, kind: int) -> Payload:
    if kind == SMALL:
        return Payload([pickle.dumps(value, PROTOCOL)], 0)
    buffers: list[pickle.PickleBuffer] = []
    value, _ = _lift(value)
    if kind == BIG:
        body = pickle.dumps(value, PROTOCOL, buffer_callback=buffers.append)
    else:
        body = dill.dumps(value, protocol=PROTOCOL, recurse=True, buffer_callback=buffers.append)
    if not buffers:
        return Payload([body], 0)
    views = tuple(b.raw() for b in buffers)
    head = _U32.pack(len(views)) + b"".join(_U64.pack(v.nbytes) for v in views)
    return Payload([head, body], OOB, views)


def encode(value: Any, what: str = "value") -> Payload:
    """Encode a value for a frame (large buffers out of band); CodecError names the culprit."""
    try:
        return _pickle(value, _scan(value))
    except Exception as exc:
        path = find_unpicklable(value, what)
        raise CodecError(f"cannot serialise {what}: {type(exc).__name__}: {exc}", path) from exc


def oob_lengths(data: bytes | bytearray | memoryview) -> list[int]:
    """The lengths of the out-of-band buffers announced at the start of an OOB payload.

    Raises CodecError (also a ValueError) if the header is truncated.
    """
    size = len(data)
    if size < _U32.size:
        raise CodecError(f"truncated out-of-band header: {size} bytes, no buffer count")
    (n,) = _U32.unpack_from(data, 0)
    if size < _U32.size + _U64.size * n:
        raise CodecError(f"truncated out-of-band header: {n} buffers announced in {size} bytes")
    return list(struct.unpack_from(f"<{n}Q", data, _U32.size))


def decode(data: Any, flags: int, what: str = "a payload") -> Any:
    """Decode what :func:`encode` made: a payload, or for OOB a (payload, buffers) pair.

    Only ever on authenticated bytes: unpickling runs whatever the pickle names. Any failure
    raises CodecError naming ``what`` and the cause (chained as ``__cause__``).
    """
    try:
        return _unpickle(data, flags)
    except Exception as exc:
        detail = str(exc) if isinstance(exc, CodecError) else f"{type(exc).__name__}: {exc}"
        raise CodecError(f"cannot decode {what}: {detail}") from exc


def _unpickle(data: Any, flags: int) -> Any:
    if not flags & OOB:
        return pickle.loads(data)
    payload, buffers = data
    lengths = oob_lengths(payload)
    sizes = [memoryview(b).nbytes for b in buffers]
    if lengths != sizes:
        raise CodecError(
            f"its out-of-band header announces {len(lengths)} buffers of {sum(lengths)} bytes, "
            f"{len(sizes)} of {sum(sizes)} bytes arrived"
        )
    return pickle.loads(payload[_U32.size + _U64.size * len(lengths) :], buffers=buffers)


def encode_call(target: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Payload:
    """Encode a call; an unpicklable argument raises CodecError naming it (``arg 0 -> .x``)."""
    value = (target, args, kwargs)
    try:
        return _pickle(value, _scan(value))
    except Exception as exc:
        parts = [(f"arg {i}", a) for i, a in enumerate(args)]
        parts += [(f"kwarg {k!r}", v) for k, v in kwargs.items()]
        path = next((find_unpicklable(v, n) for n, v in parts if not _try(v)), "")
        raise CodecError(
            f"cannot serialise the arguments of {target}: {type(exc).__name__}: {exc}", path
        ) from exc
