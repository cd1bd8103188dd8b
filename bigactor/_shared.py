"""Values put once in this host's shared memory and handed to many actors (``cluster.put``).

``await cluster.put(value)`` encodes ``value`` once, as any argument is encoded (large buffers
out of band), into an anonymous shared-memory file (``memfd``) that the putting process holds
open; it returns a :class:`Shared`. A ``Shared`` passed to any call or spawn on this host
travels as a few dozen bytes and arrives as the value itself: the receiver maps the file
copy-on-write and decodes it there. A numpy array comes back writable and backed by the mapping,
so four actors given a 100 MB model share one copy of its pages until one of them writes (and
then only the pages it writes are its own); ``bytes`` come back as ``bytes`` (one copy on
receipt, as a ``bytes`` must own its memory).

Where the memory goes: the kernel frees a ``memfd``'s pages when its last descriptor and
mapping are gone, so nothing is left behind whatever kills whom: the putting process holds the
file until :meth:`Shared.release` or its cluster closes (or it dies); a receiver's mapping lives
as long as the values decoded from it.

The receiver opens the file through ``/proc/<pid>/fd/<fd>`` of the putting process: only a
process of the same user on the same host (the same kernel boot) can, as only such a process
can reach a local machine's Unix socket. Anywhere else a ``Shared`` cannot be decoded and the
call fails with a :class:`~bigactor.CodecError` saying why: pass the value itself to machines on
other hosts. The file's contents are what an authenticated peer put there, decoded like any
argument it sends.

File layout: ``MAGIC``, the payload's flags (u32) and length (u64), the payload (see
``_codec``: for out-of-band values a header with the buffers' lengths, then the pickle), then
each out-of-band buffer at the next page boundary.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
from typing import Any, Generic, TypeVar

from . import _codec
from ._errors import CodecError

T = TypeVar("T")

MAGIC = b"bigactor-shared-1"
_HEAD = struct.Struct("<IQ")  # flags, payload length
PAGE = mmap.PAGESIZE


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def _aligned(n: int) -> int:
    return -(-n // PAGE) * PAGE


def _write(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def store(value: Any) -> tuple[int, int]:
    """Encode ``value`` into a new shared-memory file: its descriptor and size."""
    payload = _codec.encode(value, "the shared value")
    body = b"".join(payload.pieces)
    head = MAGIC + _HEAD.pack(payload.flags, len(body))
    offset = _aligned(len(head) + len(body))
    size = offset + sum(_aligned(b.nbytes) for b in payload.buffers)
    fd = os.memfd_create("bigactor-shared", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, size)
        _write(fd, head + body, 0)
        for buffer in payload.buffers:
            _write(fd, buffer, offset)
            offset += _aligned(buffer.nbytes)
    except BaseException:
        os.close(fd)
        raise
    return fd, size


def load(pid: int, fd: int, size: int, boot: str) -> Any:
    """Map the shared file ``fd`` of process ``pid`` copy-on-write and decode its value."""
    if boot != _boot_id():
        raise CodecError(
            "a bigactor.Shared value lives in the memory of its own host and cannot be read on "
            "another: pass the value itself to machines on other hosts"
        )
    path = f"/proc/{pid}/fd/{fd}"
    try:
        file = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise CodecError(
            f"cannot open the bigactor.Shared value of process {pid} ({exc.strerror}): it was "
            "released, its process ended, or this process may not read it"
        ) from None
    try:
        if os.fstat(file).st_size != size:
            raise CodecError(f"the bigactor.Shared value of process {pid} is not the file it names")
        # Private and writable: what a receiver writes stays its own (copy-on-write).
        mapping = mmap.mmap(file, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(file)
    view = memoryview(mapping)
    if bytes(view[: len(MAGIC)]) != MAGIC:
        raise CodecError(f"the bigactor.Shared value of process {pid} is not the file it names")
    flags, length = _HEAD.unpack_from(view, len(MAGIC))
    start = len(MAGIC) + _HEAD.size
    payload = view[start : start + length]
    if not flags & _codec.OOB:
        return _codec.decode(payload, flags, "a shared value")
    buffers = []
    offset = _aligned(start + length)
    for n in _codec.oob_lengths(payload):
        buffers.append(view[offset : offset + n])
        offset += _aligned(n)
    return _codec.decode((payload, buffers), flags, "a shared value")


class Shared(Generic[T]):
    """A value put in this host's shared memory (see the module docstring): pass it to calls
    and spawns on this host, where it arrives as the value; read it here with :meth:`get`.

    It holds the memory until :meth:`release` or its cluster closes; a ``Shared`` released or
    out of its cluster cannot be passed on (actors that received the value keep it).
    """

    __slots__ = ("_boot", "_fd", "_pid", "nbytes")

    def __init__(self, fd: int, size: int) -> None:
        self._fd = fd
        self._pid = os.getpid()
        self._boot = _boot_id()
        #: how many bytes of shared memory it holds
        self.nbytes = size

    @classmethod
    def put(cls, value: T) -> Shared[T]:
        """Encode ``value`` into new shared memory (blocking: call it from a thread)."""
        fd, size = store(value)
        return cls(fd, size)

    @property
    def released(self) -> bool:
        return self._fd < 0

    def get(self) -> T:
        """The value, decoded from the shared memory as a receiver would (mapped, not copied)."""
        self._check()
        value: T = load(self._pid, self._fd, self.nbytes, self._boot)
        return value

    def release(self) -> None:
        """Let the memory go once every receiver has let its values go. Idempotent."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _check(self) -> None:
        if self._fd < 0:
            raise CodecError("this bigactor.Shared value was released (or its cluster closed)")
        if self._pid != os.getpid():
            raise CodecError("a bigactor.Shared value belongs to the process that put it")

    def __reduce__(self) -> tuple[Any, ...]:
        self._check()
        return (load, (self._pid, self._fd, self.nbytes, self._boot))

    def __repr__(self) -> str:
        state = "released" if self._fd < 0 else f"{self.nbytes:,} bytes"
        return f"<bigactor.Shared {state}>"
