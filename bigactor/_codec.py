"""Serialisation of calls, replies, services and errors.

Values are pickled by the C pickler (protocol 5) through cloudpickle's ``Pickler``, a subclass of
the C ``pickle.Pickler`` whose ``reducer_override`` pickles by value only what the receiver
cannot import: classes and functions of the driver's ``__main__`` (workers never run it), or
defined inside a function, or no longer found under their name in their module, or of a module
registered with ``cloudpickle.register_pickle_by_value``. Everything else, built-in containers
included, is written by C code at ``pickle.dumps`` speed: the C pickler never calls back into
Python for an exact int, float, str, bytes, tuple, list, dict, set or frozenset. Reading is
plain ``pickle.loads``.

Values keep their identity. cloudpickle gives each class it sends by value a tracker id, and
a process that unpickles a class whose id it knows gets back the class it already has: so an
instance of the driver's ``Point`` that comes back from a worker is a ``Point`` of the
driver's, an exception class it raises is caught by ``except MyError``, and an enum member is
the very member (``is``), also after travelling from worker A to worker B and back. A class is
filled in once per process, on first arrival: a known class is never overwritten by what
arrives (cloudpickle alone would reset its attributes to the copy's, replacing the driver's
own methods by copies whose globals are copies too; see ``_set_class_state``).

Objects that cannot mean anything in another process are refused before anything is sent,
with the path to them and why: ``threading``'s locks and other synchronisation primitives,
threads, open files, generators and coroutines, trio tasks, sockets, sqlite3 connections. The
C pickler refuses most of them too, but with a message about the lock inside a thread rather
than about the thread; see ``_REFUSALS``.

Values made only of plain built-in data (None, bool, int, float, str, bytes and
tuples/lists/dicts/sets of them, at most ``_SCAN_LIMIT`` nodes) skip the pickler's setup
and take ``pickle.dumps`` directly: a call's tiny tuple costs ~1.3 µs instead of ~1.7 µs.

Large buffers travel out of band (pickle protocol 5): a ``bytes``, ``bytearray`` or contiguous
``memoryview`` of at least ``OOB_MIN`` bytes, as a value, an argument, or an element of a
top-level list, tuple or dict, and any buffer a value's own reduction hands the pickler
(a numpy array's data) of at least ``OOB_MIN`` bytes, is not copied into the pickle but sent
as it is after it::

    OOB payload = count: u32 | length: u64 x count | pickle     (then: buffer 0, buffer 1, ...)

Each buffer travels as a websocket message of its own right after its frame's message, and the
receiver reads it straight into a ``bytes`` object of its own: a ``bytes`` value arrives as that
very object and a ``memoryview`` as a view of it (no copy at all); a ``bytearray`` is rebuilt
with one copy, so every value comes back with its own type. A large numpy array arrives as a
read-only view of the received bytes (no copy; ``array.copy()`` gives a writable one); a
smaller buffer travels in band and arrives writable.
"""

from __future__ import annotations

import _thread
import copyreg
import io
import pickle
import socket
import struct
import sys
import threading
import types
import weakref
from typing import Any, ClassVar, NamedTuple, NoReturn

import cloudpickle
import trio
from cloudpickle import cloudpickle as _cloudpickle

from ._errors import CodecError

PROTOCOL = 5
OOB = 4  # frame flag: the payload carries out-of-band buffers
OOB_MIN = 64 * 1024

#: The pickler's name and version: driver and worker must run the same one (the handshake
#: compares them), since a by-value pickle names the pickler's own helper functions.
PICKLER = "cloudpickle"
PICKLER_VERSION: str = cloudpickle.__version__

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


# -- what cannot cross a process ---------------------------------------------------------------

_LOCK = "a lock cannot cross a process: each process has its own locks; create it in the actor"
_SYNC = (
    "a {name} cannot cross a process: it coordinates the threads of this process only; create it in the actor"
)
_THREAD = "a thread cannot cross a process: it runs in this one; start threads in the actor"
_LOCAL = "a threading.local cannot cross a process: its values belong to this process's threads"
_FILE = (
    "an open file cannot cross a process: its descriptor means nothing in another one; send its "
    "path (or its contents) and open it in the actor"
)
_GENERATOR = (
    "a {name} cannot cross a process: its frame runs in this one; send its values (a list), or "
    "have the actor make it (a generator method streams its values to the caller)"
)
_COROUTINE = "a coroutine cannot cross a process: await it here, or send the function and its arguments"
_TASK = (
    "a {name} cannot cross a process: it runs in this process's Trio loop (a held trio.Lock "
    "or a waited-on trio primitive refers to its tasks); create the primitive in the actor"
)
_SOCKET = "a socket cannot cross a process: send its address and connect in the actor"
_DATABASE = (
    "a database {name} cannot cross a process: send what it takes to connect (the database's "
    "path) and connect in the actor"
)

#: Refused types (and their subclasses) -> why. The C pickler refuses all but one of them too,
#: with a message about what they hold (a thread's inner lock) rather than about them; and
#: cloudpickle would pickle a text file open for reading by value, its contents and position.
#: Trio's primitives are not here: an unused one (a service built in the driver creates its
#: ``trio.Event`` in ``__init__``) travels as a fresh one, as it always has; one in use holds a
#: task, whose coroutine is refused.
_REFUSALS: dict[type, str] = {
    _thread.LockType: _LOCK,
    _thread.RLock: _LOCK,
    threading.Condition: _SYNC,
    threading.Semaphore: _SYNC,
    threading.BoundedSemaphore: _SYNC,
    threading.Event: _SYNC,
    threading.Barrier: _SYNC,
    threading.Thread: _THREAD,
    threading.local: _LOCAL,
    io.FileIO: _FILE,
    io.BufferedReader: _FILE,
    io.BufferedWriter: _FILE,
    io.BufferedRandom: _FILE,
    io.BufferedRWPair: _FILE,
    io.TextIOWrapper: _FILE,
    types.GeneratorType: _GENERATOR,
    types.AsyncGeneratorType: _GENERATOR,
    types.CoroutineType: _COROUTINE,
    trio.lowlevel.Task: _TASK,
    socket.socket: _SOCKET,
}
_NAMES: dict[type, str] = {types.GeneratorType: "generator", types.AsyncGeneratorType: "async generator"}


def _refusals() -> dict[type, str]:
    """``_REFUSALS``, with sqlite3's connections and cursors once the program has imported it
    (only a program that did can hold one; importing it here would cost every process ~5 ms)."""
    sqlite3 = sys.modules.get("sqlite3")
    if sqlite3 is not None and sqlite3.Connection not in _REFUSALS:
        _REFUSALS[sqlite3.Connection] = _DATABASE.format(name="connection")
        _REFUSALS[sqlite3.Cursor] = _DATABASE.format(name="cursor")
    return _REFUSALS


def refusal(value: Any) -> str | None:
    """Why ``value`` cannot cross a process, or None if nothing says it cannot."""
    if _stream_name(value) is not None:
        return None  # pickled by name: the receiver's own stream (see _reduce_file)
    refused = _refusals()
    for t in type(value).__mro__:
        why = refused.get(t)
        if why is not None:
            return why.format(name=_NAMES.get(t) or f"{t.__module__}.{t.__qualname__}")
    return None


class Unsendable(pickle.PicklingError):
    """A value holds an object that cannot cross a process (see :func:`refusal`)."""


def _refuse(obj: Any) -> NoReturn:
    raise Unsendable(refusal(obj) or f"a {type(obj).__name__} cannot cross a process")


def _stream_name(obj: Any) -> str | None:
    if obj is sys.stdout or obj is sys.__stdout__:
        return "stdout"
    if obj is sys.stderr or obj is sys.__stderr__:
        return "stderr"
    return None


def _reduce_file(obj: Any) -> Any:
    # The standard streams travel by name, as cloudpickle sends them: the receiver's own
    # stdout/stderr (what a worker prints reaches the driver's stderr). A function whose
    # default argument is ``sys.stderr`` can so still be sent. Any other file is refused.
    name = _stream_name(obj)
    if name is None:
        _refuse(obj)
    return getattr, (sys, name)


# -- the pickler -------------------------------------------------------------------------------

#: By-value classes this process made, filled in or sent: the ones an arrival must not change.
_COMPLETE: weakref.WeakSet[type] = weakref.WeakSet()


def _set_class_state(cls: type, state: Any) -> None:
    """Fill in a class that arrived by value, unless this process already has it complete.

    cloudpickle's tracker hands back the class this process already holds under the sender's
    tracker id (its own original, or one filled in by an earlier arrival), and cloudpickle's
    ``_class_setstate`` would then reset its attributes to the copy's: the driver's own methods
    replaced by copies whose globals are copies (a module-level registry a method appends to
    would silently become another dict), and a class attribute set since reset. A known class
    stays as it is, as an importable class does.
    """
    if cls in _COMPLETE:
        return
    _cloudpickle._class_setstate(cls, state)
    _COMPLETE.add(cls)


def _flat_dispatch_table() -> dict[type, Any]:
    # One plain dict: the C pickler looks every non-built-in object's type up in it, and the
    # ChainMap cloudpickle uses costs a Python call and a caught KeyError for each of them.
    # copyreg's table can grow while the program runs, so this is rebuilt when it changed.
    table: dict[type, Any] = dict(copyreg.dispatch_table)
    table.update(cloudpickle.Pickler._dispatch_table)
    table.update(dict.fromkeys(_refusals(), _refuse))
    table[io.TextIOWrapper] = _reduce_file
    return table


#: Classes and functions found importable (pickled by reference), by id -> (the object, its
#: module's name, its qualified name). Asking cloudpickle costs ~1 µs each time (its module
#: lookups run in Python); checking that the module still holds the very object under that
#: name costs a few dict lookups, so a name rebound since (a reloaded module, a class made
#: again) is asked about again. Emptied when the set of modules pickled by value changes.
_by_reference: dict[int, tuple[Any, str, list[str]]] = {}


def _still_importable(obj: Any) -> bool:
    entry = _by_reference.get(id(obj))
    if entry is None or entry[0] is not obj:
        return False
    found = sys.modules.get(entry[1])
    for name in entry[2]:
        found = getattr(found, name, None)
    return found is obj


def _remember_importable(obj: Any) -> None:
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if isinstance(module, str) and isinstance(qualname, str) and "<" not in qualname:
        _by_reference[id(obj)] = (obj, module, qualname.split("."))


class _Pickler(cloudpickle.Pickler):  # type: ignore[misc]  # cloudpickle has no type hints
    dispatch_table: ClassVar[dict[type, Any]] = {}  # set by _pickler before the first use

    def reducer_override(self, obj: Any) -> Any:
        # Called by the C pickler for every object but exact built-in data; only classes and
        # functions concern cloudpickle, everything else goes on to the dispatch table.
        t = type(obj)
        if t is not types.FunctionType and not issubclass(t, type):
            return NotImplemented
        if _still_importable(obj):
            return NotImplemented
        reduced = super().reducer_override(obj)
        if reduced is NotImplemented:
            _remember_importable(obj)
        elif type(reduced) is tuple and len(reduced) == 6 and reduced[5] is _cloudpickle._class_setstate:
            # A class by value: remember it is complete here, and have the receiver fill in
            # only a class it does not already have (see _set_class_state).
            _COMPLETE.add(obj)
            return (*reduced[:5], _set_class_state)
        return reduced


#: What the dispatch table and ``_by_reference`` were made from: copyreg's table, whether
#: sqlite3 was loaded, and cloudpickle's set of modules to pickle by value.
_made_from: tuple[dict[Any, Any], bool] | None = None
_by_value_modules: set[str] = set()


def _pickler(file: io.BytesIO, buffer_callback: Any = None) -> _Pickler:
    global _made_from, _by_value_modules
    sqlite = "sqlite3" in sys.modules
    if _made_from is None or _made_from[0] != copyreg.dispatch_table or _made_from[1] != sqlite:
        _made_from = (dict(copyreg.dispatch_table), sqlite)
        _Pickler.dispatch_table = _flat_dispatch_table()
    if _by_value_modules != _cloudpickle._PICKLE_BY_VALUE_MODULES:
        _by_value_modules = set(_cloudpickle._PICKLE_BY_VALUE_MODULES)
        _by_reference.clear()
    return _Pickler(file, PROTOCOL, buffer_callback=buffer_callback)


def _dumps(value: Any, buffer_callback: Any = None) -> bytes:
    file = io.BytesIO()
    _pickler(file, buffer_callback).dump(value)
    return file.getvalue()


class _OutOfBand(list[pickle.PickleBuffer]):
    """The pickler's buffer callback: keeps buffers of at least ``OOB_MIN`` bytes out of band
    (returns False) and lets smaller ones go in band (True), where they cost no message."""

    def __call__(self, buffer: pickle.PickleBuffer) -> bool:
        if memoryview(buffer).nbytes < OOB_MIN:
            return True
        self.append(buffer)
        return False


# -- large buffers -----------------------------------------------------------------------------


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


def _lift(value: Any) -> Any:
    """Wrap the large buffers of ``value`` (itself, or in a container at most two levels down)
    for out of band.

    Looks first, within ``_LIFT_LIMIT`` nodes, and builds only if it found one: most values
    have none, and a value that is mostly many small items must not pay a pass over them (a
    large buffer past the limit still travels, in band).
    """
    if not _has_big(value):
        return value
    return _lifted(value, 2)


def _has_big(value: Any) -> bool:
    # Two explicit levels, no stack: this runs for every call and reply that is not small.
    t = type(value)
    if t is bytes or t is bytearray or t is memoryview:
        return _is_big(value)
    if t is dict:
        items: Any = value.values()
    elif t is tuple or t is list:
        items = value
    else:
        return False
    budget = _LIFT_LIMIT
    for v in items:
        budget -= 1
        if budget < 0:
            return False
        tv = type(v)
        if tv is bytes or tv is bytearray or tv is memoryview:
            if _is_big(v):
                return True
        elif tv is dict or tv is tuple or tv is list:
            for w in v.values() if tv is dict else v:
                budget -= 1
                if budget < 0:
                    return False
                tw = type(w)
                if (tw is bytes or tw is bytearray or tw is memoryview) and _is_big(w):
                    return True
    return False


def _lifted(value: Any, depth: int) -> Any:
    if _is_big(value):
        return _Buffer(value)
    t = type(value)
    if depth and (t is tuple or t is list):
        return t(_lifted(v, depth - 1) for v in value)
    if depth and t is dict:
        return {k: _lifted(v, depth - 1) for k, v in value.items()}
    return value


_LIFT_LIMIT = 64


# -- the plain-data fast path ------------------------------------------------------------------

_ATOMS = frozenset({type(None), bool, int, float, str, bytes, bytearray, complex})
_SEQUENCES = frozenset({tuple, list, set, frozenset})
#: Scanning costs ~0.1 µs a node and the fast path saves ~1.5 µs (setting the pickler up), so
#: the scan gives up early: past this many nodes, the pickler's setup is noise anyway.
_SCAN_LIMIT = 16


def _is_small(value: Any) -> bool:
    """Whether ``value`` is plain built-in data of at most ``_SCAN_LIMIT`` nodes with no large
    buffer: such a value takes ``pickle.dumps`` directly (both picklers give the same bytes).

    Runs for every call and reply, so it is one flat loop, not a recursion of generators.
    """
    stack = [value]
    budget = _SCAN_LIMIT
    while stack:
        budget -= 1
        if budget < 0:
            return False
        v = stack.pop()
        t = type(v)
        if t in _ATOMS:
            if (t is bytes or t is bytearray) and len(v) >= OOB_MIN:
                return False
        elif t in _SEQUENCES:
            stack.extend(v)
        elif t is dict:
            stack.extend(v)
            stack.extend(v.values())
        else:
            return False
    return True


# -- encoding ----------------------------------------------------------------------------------


def dumps(value: Any, what: str = "value") -> bytes:
    """Serialise ``value`` (in band); raise CodecError naming the part that cannot be.

    ``what`` names the value in the error (``arg 0``, ``service 'counter'``).
    """
    try:
        if _is_small(value):
            return pickle.dumps(value, PROTOCOL)
        return _dumps(value)
    except Exception as exc:
        raise _failure(f"cannot serialise {what}", exc, [(what, value)]) from exc


def loads(data: bytes | bytearray | memoryview) -> Any:
    """Deserialise what :func:`dumps` wrote. Only ever call this on authenticated bytes."""
    return pickle.loads(data)


def _pickles(value: Any) -> bool:
    try:
        _dumps(value)
    except Exception:
        return False
    return True


def _culprit(value: Any, path: str, depth: int = 0) -> tuple[str, Any]:
    """The path to the innermost part of ``value`` that cannot be serialised, and that part."""
    if depth > 20 or refusal(value) is not None:
        return f"{path} -> {type(value).__name__}", value
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
        if not _pickles(child):
            return _culprit(child, f"{path} -> {name}", depth + 1)
    return f"{path} -> {type(value).__name__}", value


def find_unpicklable(value: Any, path: str) -> str:
    """Return the path to the innermost part of ``value`` that cannot be serialised.

    The path reads like ``arg 0 -> .conn -> socket``: attribute names, indexes and dict keys,
    ending with the type name of the culprit. It stops at an object that cannot cross a
    process at all (a thread, not the lock inside it).
    """
    return _culprit(value, path)[0]


def _failure(message: str, exc: Exception, parts: list[tuple[str, Any]]) -> CodecError:
    """The CodecError for ``exc``, raised pickling ``parts`` (name, value): it names the first
    part that fails alone, the path to the culprit in it, and why that culprit is refused."""
    found = next(((name, v) for name, v in parts if not _pickles(v)), None)
    path, culprit = _culprit(found[1], found[0]) if found is not None else ("", None)
    why = refusal(culprit) if found is not None else None
    if why is None:
        why = str(exc) if isinstance(exc, Unsendable) else f"{type(exc).__name__}: {exc}"
    return CodecError(f"{message}: {why}", path)


def _pickle(value: Any) -> Payload:
    if _is_small(value):
        return Payload([pickle.dumps(value, PROTOCOL)], 0)
    buffers = _OutOfBand()
    body = _dumps(_lift(value), buffers)
    if not buffers:
        return Payload([body], 0)
    views = tuple(b.raw() for b in buffers)
    head = _U32.pack(len(views)) + b"".join(_U64.pack(v.nbytes) for v in views)
    return Payload([head, body], OOB, views)


def encode(value: Any, what: str = "value") -> Payload:
    """Encode a value for a frame (large buffers out of band); CodecError names the culprit."""
    try:
        return _pickle(value)
    except Exception as exc:
        raise _failure(f"cannot serialise {what}", exc, [(what, value)]) from exc


def encode_call(target: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Payload:
    """Encode a call; an unpicklable argument raises CodecError naming it (``arg 0 -> .x``)."""
    value = (target, args, kwargs)
    try:
        return _pickle(value)
    except Exception as exc:
        parts = [(f"arg {i}", a) for i, a in enumerate(args)]
        parts += [(f"kwarg {k!r}", v) for k, v in kwargs.items()]
        raise _failure(f"cannot serialise the arguments of {target}", exc, parts) from exc


# -- decoding ----------------------------------------------------------------------------------


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
