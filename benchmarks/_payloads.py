"""Values that real programs send, and what it costs to serialise them and to echo them.

The payloads are the ones the values issue measured (ported Ray and Dask programs): a
parameter server's 31 KiB dict of numpy arrays, 5,000 ``(str, int)`` tuples, 10,000 small dicts,
and one large numpy array (100 MB; 8 MB with ``--quick``).

* ``codec_time``: bigactor's codec alone, encode then decode, as the receiver gets it (the
  frame's payload in one piece, out-of-band buffers as objects of their own); its floor,
  ``pickle_time``: ``pickle.dumps`` + ``pickle.loads`` (protocol 5) of the same value, and
  ``pickle_oob_time`` the same with out-of-band buffers, the zero-copy floor for arrays.
* :class:`PipeEcho`: the floor of a whole call, a ``multiprocessing.Pipe`` to a child process
  that echoes what it receives (``conn.send`` / ``conn.recv`` pickle with the C pickler).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import pickle
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from bigactor import _codec

#: (key, label, unit of the echo figure) for each payload, in the order they run.
PAYLOADS = (
    ("numpy_dict", "dict of 4 numpy arrays, 31 KiB", "µs"),
    ("tuples", "5,000 (str, int) tuples", "ms"),
    ("dicts", "10,000 small dicts", "ms"),
    ("array", "numpy array", "ms"),
)


def make_payloads(array_bytes: int) -> dict[str, Any]:
    """The payloads by key; the large array has ``array_bytes`` bytes (float64, pages touched)."""
    import numpy as np

    rng = np.random.default_rng(8)
    return {
        "numpy_dict": {f"layer{i}": rng.random(1000) for i in range(4)},
        "tuples": [(f"word{i}", i) for i in range(5000)],
        "dicts": [{"id": i, "name": f"item{i}", "score": i / 7} for i in range(10_000)],
        "array": np.full(array_bytes // 8, 1.5),
    }


def equal(a: Any, b: Any) -> bool:
    """Whether two payloads are equal (numpy arrays compared element-wise)."""
    import numpy as np

    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.shape == b.shape and bool((a == b).all())
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    return bool(a == b)


def _timed(run: Callable[[], Any], seconds: float) -> float:
    """CPU seconds of this thread per call of ``run``, called until ``seconds`` of it have passed
    (at least twice). Serialising is pure computation: the thread's CPU time, unlike the wall
    clock, does not count the time other processes on the box took the core away."""
    n = 0
    t0 = time.thread_time()
    while True:
        run()
        n += 1
        elapsed = time.thread_time() - t0
        if n >= 2 and elapsed >= seconds:
            return elapsed / n


def codec_round_trip(value: Any) -> Any:
    """``_codec.encode`` then ``_codec.decode``, the decoder given what a receiver holds."""
    payload = _codec.encode(value)
    pieces = payload.pieces
    data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
    if payload.buffers:
        return _codec.decode((data, list(payload.buffers)), payload.flags)
    return _codec.decode(data, payload.flags)


def pickle_round_trip(value: Any) -> Any:
    """``pickle.dumps`` + ``pickle.loads``, protocol 5, everything in band."""
    return pickle.loads(pickle.dumps(value, 5))


def pickle_oob_round_trip(value: Any) -> Any:
    """``pickle.dumps`` + ``pickle.loads``, protocol 5, every buffer out of band (no copy)."""
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(value, 5, buffer_callback=buffers.append)
    return pickle.loads(data, buffers=buffers)


def codec_time(value: Any, seconds: float) -> float:
    """Seconds per encode + decode of ``value`` through bigactor's codec."""
    return _timed(lambda: codec_round_trip(value), seconds)


def pickle_time(value: Any, seconds: float) -> float:
    """Seconds per ``pickle.dumps`` + ``pickle.loads`` of ``value``."""
    return _timed(lambda: pickle_round_trip(value), seconds)


def pickle_oob_time(value: Any, seconds: float) -> float:
    """Seconds per ``pickle.dumps`` + ``pickle.loads`` of ``value``, buffers out of band."""
    return _timed(lambda: pickle_oob_round_trip(value), seconds)


def _echo(conn: Connection) -> None:
    """The child of :class:`PipeEcho`: send back whatever arrives, until ``None``."""
    while True:
        value = conn.recv()
        if value is None:
            return
        conn.send(value)


class PipeEcho:
    """A child process (``spawn``: a fresh interpreter) echoing over a ``multiprocessing.Pipe``.

    ``round_trip`` blocks the calling thread: the benchmark's trio loop has nothing else to do
    while it runs, and a thread hop would only add to the floor.
    """

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, theirs = ctx.Pipe()
        self._process = ctx.Process(target=_echo, args=(theirs,), daemon=True)
        self._process.start()
        theirs.close()

    def round_trip(self, value: Any) -> Any:
        """Send ``value`` to the child and return what it sent back."""
        self._conn.send(value)
        return self._conn.recv()

    def close(self) -> None:
        """Stop the child (it exits on ``None``; killed if it does not within 10 s)."""
        with contextlib.suppress(OSError):  # the child is gone already
            self._conn.send(None)
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._conn.close()
