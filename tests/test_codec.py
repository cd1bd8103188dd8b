"""Serialisation: the plain-data fast path, by-value classes, and culprit paths."""

import pickle
import socket

import dill
import pytest

from bigactor import CodecError
from bigactor._codec import dumps, encode_call, loads

PLAIN = [None, True, 1, 2.5, "s", b"b", (1, "a"), [1, [2, {"k": (3,)}]], {1, 2}, frozenset({3}), 1j]


@pytest.mark.parametrize("value", PLAIN, ids=repr)
def test_plain_values_round_trip_identically(value: object) -> None:
    """Plain data takes the fast path and comes back equal, as dill would give it."""
    assert loads(dumps(value)) == value
    assert loads(dumps(value)) == dill.loads(dill.dumps(value))


def test_non_plain_values_travel_by_value() -> None:
    """A class defined here (not importable by reference elsewhere) still round-trips."""

    class Point:
        def __init__(self, x: int) -> None:
            self.x = x

    back = loads(dumps(Point(3)))
    assert back.x == 3


class Holder:
    def __init__(self) -> None:
        self.conn = socket.socket()


def test_unpicklable_argument_names_its_path() -> None:
    """An unserialisable argument fails in the caller, naming the path to the culprit."""
    h = Holder()
    try:
        with pytest.raises(CodecError) as info:
            encode_call("svc.m", (1, h), {})
        assert info.value.path == "arg 1 -> .conn -> socket"
        with pytest.raises(CodecError) as info:
            encode_call("svc.m", (), {"gen": [(i for i in range(3))]})
        assert info.value.path == "kwarg 'gen' -> [0] -> generator"
    finally:
        h.conn.close()


def test_unpicklable_value_names_its_path() -> None:
    """dumps names the culprit relative to what it was told the value is."""
    with pytest.raises(CodecError) as info:
        dumps({"a": (i for i in range(3))}, "service 'x'")
    assert info.value.path == "service 'x' -> ['a'] -> generator"
    assert "service 'x'" in str(info.value)


def test_loads_reads_dill_output() -> None:
    """What dill writes, the C unpickler reads."""
    f = dill.dumps(lambda x: x + 1, protocol=5)
    assert pickle.loads(f)(1) == 2
    assert loads(f)(2) == 3


def _round_trip(value: object) -> object:
    from bigactor._codec import decode, encode

    payload = encode(value)
    data = memoryview(b"".join(bytes(p) for p in payload.pieces))
    if not payload.buffers:
        return decode(data, payload.flags)
    # What a receiver has: the frame's payload, and each buffer as an object of its own.
    return decode((data, [memoryview(bytes(b)) for b in payload.buffers]), payload.flags)


BIG = bytes(range(256)) * 1024  # 256 KiB: above OOB_MIN


def test_large_buffers_go_out_of_band_and_keep_their_types() -> None:
    """Big bytes/bytearray/memoryview travel out of band and come back as their own types."""
    from bigactor._codec import OOB, encode

    payload = encode(("echo.echo", (BIG,), {}))
    assert payload.flags & OOB
    assert [b.nbytes for b in payload.buffers] == [len(BIG)]  # not copied into the pickle
    assert payload.buffers[0].obj is BIG
    assert sum(len(p) for p in payload.pieces) < 1024
    for value in [BIG, bytearray(BIG), [1, BIG], {"k": bytearray(BIG)}, ("t", (BIG, 2), {})]:
        back = _round_trip(value)
        assert back == value
        assert type(back) is type(value)
    view = _round_trip(memoryview(BIG))
    assert isinstance(view, memoryview)
    assert view == memoryview(BIG)


def test_out_of_band_bytes_decode_to_the_received_object_itself() -> None:
    """A received buffer that is a whole bytes object becomes the value, with no copy."""
    from bigactor._codec import decode, encode

    payload = encode(BIG)
    received = bytes(BIG)  # what the websocket layer receives into
    back = decode(
        (memoryview(b"".join(bytes(p) for p in payload.pieces)), [memoryview(received)]), payload.flags
    )
    assert back is received


def test_out_of_band_buffers_work_inside_values_that_need_dill() -> None:
    """A by-value object beside a big buffer still round-trips."""

    class Local:
        def __init__(self) -> None:
            self.x = 1

    back = _round_trip([Local(), BIG])
    assert back[0].x == 1
    assert back[1] == BIG


def test_small_buffers_stay_in_band() -> None:
    """Below OOB_MIN, buffers are pickled in band (no out-of-band flag)."""
    from bigactor._codec import encode

    assert encode(b"x" * 100).flags == 0
