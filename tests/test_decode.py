"""Decoding payloads: any failure is a CodecError that names what failed and why."""

from __future__ import annotations

import struct

import pytest

from bigactor import CodecError, _codec
from bigactor._codec import OOB, decode, encode, oob_lengths


def test_bytes_that_are_not_a_pickle_raise_codec_error_naming_them() -> None:
    """Garbage, truncated and empty payloads fail as CodecError naming the payload, the cause
    chained."""
    whole = b"".join(bytes(p) for p in encode({"k": [1, 2]}).pieces)
    for data in (b"garbage", whole[:-3], b""):
        with pytest.raises(CodecError, match="cannot decode the reply of x: ") as info:
            decode(memoryview(data), 0, "the reply of x")
        assert info.value.__cause__ is not None


def test_truncated_out_of_band_header_is_a_codec_error() -> None:
    """A header too short for its count, or for its lengths, is a CodecError (the connection's
    reader turns it into a protocol error)."""
    for header in (b"\x01", struct.pack("<I", 2) + struct.pack("<Q", 5)):
        with pytest.raises(CodecError, match="truncated out-of-band header") as info:
            oob_lengths(memoryview(header))
        assert type(info.value) is CodecError
        with pytest.raises(CodecError, match="cannot decode a payload: truncated out-of-band header"):
            decode((memoryview(header), []), OOB)


def test_buffers_that_do_not_match_their_announcement_are_named() -> None:
    """Out-of-band buffers of other sizes than announced fail, naming both."""
    saved, _codec.OOB_MIN = _codec.OOB_MIN, 4
    try:
        payload = encode([b"abcdef", b"ghijkl"])
    finally:
        _codec.OOB_MIN = saved
    head = memoryview(b"".join(bytes(p) for p in payload.pieces))
    assert oob_lengths(head) == [6, 6]
    assert decode((head, [bytes(b) for b in payload.buffers]), payload.flags) == [b"abcdef", b"ghijkl"]
    with pytest.raises(CodecError, match="announces 2 buffers of 12 bytes, 1 of 6 bytes arrived"):
        decode((head, [b"abcdef"]), payload.flags)
