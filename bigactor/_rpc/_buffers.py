"""Receive buffers for large messages: ``bytes`` objects written in place, and reused.

A large message is received straight into a ``bytes`` object of its own, which then *is* the
value an out-of-band ``bytes`` argument or reply decodes to (see ``_codec._bytes_from``), with
no copy. Fresh memory is what makes that slow: glibc serves every allocation over 32 MiB with a
new ``mmap`` and returns it to the kernel on ``free``, so each 64 MiB message costs 16,384 page
faults, each one the kernel zeroing a page: 35-40 ms on the project's VM, as long as moving the
bytes themselves (benchmarks/README.md, figure i).

So the process keeps a few of the large ``bytes`` it received in a :class:`Pool`. Once the
program has dropped every reference to one (its reference count is back to the pool's own), it
is no longer anyone's value and the next large message of a size it holds is written into it:
memory already faulted in. The program never sees a value change: a buffer is reused only when
nothing outside the pool refers to it, and every view of a ``bytes`` (a ``memoryview``, a NumPy
array decoded from it) holds a reference. At most :data:`ENTRIES` buffers of at most
:data:`LARGEST` bytes, :data:`TOTAL` in all, are kept, and one left unused for :data:`IDLE` seconds is let go
(:meth:`Pool.trim`, which the keepalives of both ends call), so an idle process gives its
memory back.

The pool relies on the layout of CPython's ``bytes`` (length, cached hash, characters after a
fixed header) and checks it once at import; on any other layout, or another implementation,
every buffer is a fresh ``bytearray`` (decoding then copies once) and nothing is pooled.
"""

from __future__ import annotations

import ctypes
import platform
import sysconfig
import threading
import time
from typing import Any

ENTRIES = 4  # buffers kept at most
LARGEST = 256 << 20  # larger messages get memory of their own, given back when dropped
TOTAL = 512 << 20  # bytes of buffers kept at most
IDLE = 30.0  # seconds a buffer nobody uses is kept

_WORD = ctypes.sizeof(ctypes.c_ssize_t)


def _layout() -> Any:
    """``PyBytes_FromStringAndSize`` when ``bytes`` is laid out as this module assumes, else None.

    The header is the reference count, the type, the length and the cached hash, one word each;
    the characters follow, then a NUL.
    """
    if platform.python_implementation() != "CPython" or sysconfig.get_config_var("Py_GIL_DISABLED"):
        return None
    fn = ctypes.pythonapi.PyBytes_FromStringAndSize
    fn.restype = ctypes.py_object
    fn.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)
    probe = fn(b"bigactor", 8)
    base = id(probe)
    digest = hash(probe)  # cached in the object from now on
    if (
        bytes.__basicsize__ != 4 * _WORD + 1
        or ctypes.string_at(base + 4 * _WORD, 9) != b"bigactor\0"
        or ctypes.c_ssize_t.from_address(base + 2 * _WORD).value != 8
        or ctypes.c_ssize_t.from_address(base + 3 * _WORD).value != digest
    ):
        return None
    return fn


def _references(obj: object) -> int:
    return ctypes.c_ssize_t.from_address(id(obj)).value


_from_size = _layout()


def _view(whole: bytes, n: int) -> memoryview:
    """A writable view of the first ``n`` characters of ``whole`` (which must outlive it)."""
    return memoryview((ctypes.c_char * n).from_address(id(whole) + 4 * _WORD)).cast("B")


def fresh(n: int) -> tuple[bytes | bytearray, memoryview]:
    """A new ``n``-byte object to receive into, and a writable view of it.

    On CPython it is a ``bytes``, filled before anyone else can see it; elsewhere a
    ``bytearray``. Raises MemoryError (or OverflowError) when there is no memory for it.
    """
    if _from_size is None:
        buffer = bytearray(n)
        return buffer, memoryview(buffer)
    whole: bytes = _from_size(None, n)
    return whole, _view(whole, n)


class _Entry:
    __slots__ = ("capacity", "used", "whole")

    def __init__(self, whole: bytes, used: float) -> None:
        self.whole = whole
        self.capacity = len(whole)
        self.used = used  # when last handed out

    def unused(self) -> bool:
        """Whether only the pool refers to the buffer (asked as :data:`_ALONE` was measured)."""
        return _references(self.whole) == _ALONE


class Pool:
    """Large receive buffers, reused once the program has let go of them (see the module).

    Receivers on several threads (one Trio run each) may share a pool.
    """

    def __init__(
        self, entries: int = ENTRIES, largest: int = LARGEST, total: int = TOTAL, idle: float = IDLE
    ) -> None:
        self._limit = entries
        self._largest = largest
        self._total = total
        self._idle = idle
        self._entries: list[_Entry] = []
        self._lock = threading.Lock()

    def take(self, n: int) -> tuple[bytes | bytearray, memoryview]:
        """An ``n``-byte object to receive into, and a writable view of it.

        A buffer of the pool nobody else refers to, of ``n`` to ``2n`` bytes, when there is one;
        else :func:`fresh` memory, which the pool keeps for next time if it has room. Raises
        MemoryError (or OverflowError) when there is no memory for it, even after letting go of
        every buffer nobody uses.
        """
        if _from_size is None or n > self._largest:
            return fresh(n)
        now = time.monotonic()
        with self._lock:
            best: _Entry | None = None
            for entry in self._entries:
                fits = n <= entry.capacity <= 2 * n and (best is None or entry.capacity < best.capacity)
                if fits and entry.unused():
                    best = entry
            if best is not None:
                best.used = now
                return best.whole, _reuse(best.whole, n)
            # Make room for a new buffer: unused ones go, those handed out longest ago first.
            self._drop_unused(now, room=n)
            try:
                whole, view = fresh(n)
            except MemoryError:
                self._drop_unused(now, room=self._total)
                whole, view = fresh(n)
            held = sum(e.capacity for e in self._entries)
            if len(self._entries) < self._limit and held + n <= self._total:
                self._entries.append(_Entry(whole, now))  # type: ignore[arg-type]
            return whole, view

    def trim(self) -> None:
        """Let go of the buffers nobody has used for the idle time; cancellation plays no part."""
        with self._lock:
            self._drop_unused(time.monotonic(), room=0)

    def _drop_unused(self, now: float, room: int) -> None:
        """Let go of the unused buffers idle too long, then of more until a new one of ``room``
        bytes fits (``room=0``: none asked for)."""
        free = sorted((e for e in self._entries if e.unused()), key=lambda e: e.used)
        held = sum(e.capacity for e in self._entries)
        count = len(self._entries)
        for entry in free:
            crowded = room and (count >= self._limit or held + room > self._total)
            if crowded or now - entry.used >= self._idle:
                self._entries.remove(entry)
                held -= entry.capacity
                count -= 1

    def statistics(self) -> tuple[int, int]:
        """(buffers held, bytes of those nobody but the pool refers to)."""
        with self._lock:
            return len(self._entries), sum(e.capacity for e in self._entries if e.unused())


def _reuse(whole: bytes, n: int) -> memoryview:
    """Make the unreferenced ``whole`` an ``n``-byte ``bytes`` again and return its view."""
    base = id(whole)
    ctypes.c_ssize_t.from_address(base + 2 * _WORD).value = n
    ctypes.c_ssize_t.from_address(base + 3 * _WORD).value = -1  # no cached hash
    ctypes.c_char.from_address(base + 4 * _WORD + n).value = b"\0"
    return _view(whole, n)


def _alone() -> int:
    """What :func:`_references` says of a buffer only its pool entry refers to, asked as
    :meth:`_Entry.unused` asks: the count includes the references the call itself holds."""
    entry = _Entry(bytes(bytearray(16)), 0.0)
    return _references(entry.whole)


_ALONE = _alone()

#: the process's pool, shared by every connection in it
POOL = Pool()
