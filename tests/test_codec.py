"""Serialisation: the plain-data fast path, by-value classes and their identity, culprit
paths, out-of-band buffers."""

import copyreg
import enum
import pickle
import socket
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import pytest

from bigactor import CodecError, _codec
from bigactor._codec import dumps, encode_call, loads

PLAIN = [None, True, 1, 2.5, "s", b"b", (1, "a"), [1, [2, {"k": (3,)}]], {1, 2}, frozenset({3}), 1j]


@pytest.mark.parametrize("value", PLAIN, ids=repr)
def test_plain_values_round_trip_identically(value: object) -> None:
    """Plain data takes the fast path and gives the bytes plain pickle gives."""
    assert loads(dumps(value)) == value
    assert dumps(value) == pickle.dumps(value, 5)


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


def test_functions_travel_by_value_and_plain_pickle_reads_them() -> None:
    """A lambda and a closure travel by value; what the pickler writes, pickle.loads reads."""
    k = 10
    blob = dumps([lambda x: x + 1, lambda x: x + k])
    inc, add_k = pickle.loads(blob)
    assert (inc(1), add_k(1)) == (2, 11)


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


def test_out_of_band_buffers_work_inside_values_that_travel_by_value() -> None:
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


def _make_class() -> type:
    """A class with no importable home (it lives in a function), so it travels by value."""

    registry: list[Any] = []

    class Local:
        tag = 1

        def __init__(self, x: int) -> None:
            self.x = x

        def register(self) -> None:
            registry.append(self)

    Local.registry = registry  # type: ignore[attr-defined]
    return Local


def test_class_by_value_comes_back_as_itself_and_unchanged() -> None:
    """An instance of a by-value class comes back as an instance of the very class, whose
    methods and attributes arriving copies do not overwrite."""
    Local = _make_class()
    register = Local.register
    blob = dumps(Local(3))
    Local.tag = 2  # changed since it was sent
    back = loads(blob)
    assert type(back) is Local
    assert back.x == 3
    assert Local.register is register  # not replaced by the copy's
    assert Local.tag == 2  # not reset to what was sent
    back.register()
    assert Local.registry == [back]  # type: ignore[attr-defined]


def test_class_by_value_in_a_new_process_is_filled_in_once() -> None:
    """A class this process never saw is built from what arrives; later arrivals reuse it."""
    Local = _make_class()
    blob = dumps(Local(1))
    # What another process sees: the same pickle, with this process's class forgotten.
    tracker_id = cloudpickle.cloudpickle._DYNAMIC_CLASS_TRACKER_BY_CLASS.pop(Local)
    del cloudpickle.cloudpickle._DYNAMIC_CLASS_TRACKER_BY_ID[tracker_id]
    first = loads(blob)
    assert type(first) is not Local
    assert first.x == 1
    assert type(first).tag == 1
    type(first).tag = 5
    second = loads(blob)
    assert type(second) is type(first)
    assert type(second).tag == 5


def test_enum_by_value_keeps_its_members() -> None:
    """Members of a by-value enum come back as the very members."""
    Color = enum.Enum("Color", ["RED", "GREEN"], module=__name__ + ".nowhere")
    assert loads(dumps([Color.RED, Color.GREEN])) == [Color.RED, Color.GREEN]
    assert loads(dumps(Color.RED)) is Color.RED


def test_module_registered_by_value_after_use_travels_by_value() -> None:
    """A function first found importable goes by value once its module is registered so."""
    module = types.ModuleType("codec_test_module")
    exec("def triple(x):\n    return 3 * x\n", module.__dict__)
    sys.modules[module.__name__] = module
    try:
        by_reference = dumps(module.triple)
        assert len(by_reference) < 100  # a reference: module and name
        cloudpickle.register_pickle_by_value(module)
        try:
            by_value = dumps(module.triple)
        finally:
            cloudpickle.unregister_pickle_by_value(module)
    finally:
        del sys.modules[module.__name__]
    assert len(by_value) > len(by_reference)
    assert loads(by_value)(2) == 6  # the module is gone: only a copy by value can run


def test_class_rebound_in_its_module_travels_as_itself() -> None:
    """A class found importable once, whose name its module rebinds later (a reload, a class
    made again), travels as itself, not as whatever the name now holds."""
    module = types.ModuleType("codec_rebind_module")
    sys.modules[module.__name__] = module
    try:
        exec("class Row:\n    fields = 'a'\n", module.__dict__)
        old = module.Row
        assert type(loads(dumps(old()))) is old  # by reference
        exec("class Row:\n    fields = 'b'\n", module.__dict__)
        back = loads(dumps(old()))
    finally:
        del sys.modules[module.__name__]
    assert type(back) is old
    assert type(back).fields == "a"


class Celsius:
    def __init__(self, degrees: float) -> None:
        self.degrees = degrees


def test_copyreg_registration_made_after_import_is_used() -> None:
    """A reducer registered with copyreg while the program runs is honoured."""

    def reduce(c: Celsius) -> tuple[Any, ...]:
        return Celsius, (c.degrees + 1000,)

    copyreg.pickle(Celsius, reduce)
    try:
        assert loads(dumps([Celsius(1.0)]))[0].degrees == 1001.0
    finally:
        del copyreg.dispatch_table[Celsius]
    assert loads(dumps([Celsius(1.0)]))[0].degrees == 1.0


def test_numpy_arrays_small_in_band_large_out_of_band() -> None:
    """Small arrays travel in the pickle (and arrive writable); a large one goes out of band
    without a copy."""
    small = {f"layer{i}": np.arange(1000, dtype=np.float64) for i in range(4)}
    payload = _codec.encode(small)
    assert payload.flags == 0
    back = _round_trip(small)
    assert all(np.array_equal(back[k], small[k]) for k in small)
    assert back["layer0"].flags.writeable
    large = np.arange(1 << 20, dtype=np.float64)  # 8 MiB
    payload = _codec.encode(("echo.echo", (large,), {}))
    assert payload.flags & _codec.OOB
    assert [b.nbytes for b in payload.buffers] == [large.nbytes]
    assert sum(len(p) for p in payload.pieces) < 1024
    assert np.array_equal(_round_trip(large), large)


def test_encoding_plain_data_never_calls_back_into_python() -> None:
    """Containers of built-in data are written by the C pickler alone: the pickler's Python
    hook is never called for them, only for the by-value class beside them."""
    seen: list[type] = []
    hook = _codec._Pickler.reducer_override

    def spy(self: Any, obj: Any) -> Any:
        seen.append(type(obj))
        return hook(self, obj)

    value = [[(f"w{i}", i, i / 3, None, b"b") for i in range(500)], {"k": {1, 2}}, _make_class()(1)]
    _codec._Pickler.reducer_override = spy
    try:
        assert _round_trip(value)[0] == value[0]
    finally:
        _codec._Pickler.reducer_override = hook
    assert seen  # the class travelled by value
    assert not {tuple, list, dict, set, str, int, float, bytes, type(None)} & set(seen)
    assert len(seen) < 100  # a constant for the class, not one per item


def test_codec_benchmark_section_runs(tmp_path: Path) -> None:
    """``python -m benchmarks --only codec`` (figure g) runs and meets its own shape."""
    out = tmp_path / "bench.json"
    argv = [sys.executable, "-m", "benchmarks", "--quick", "--only", "codec", "--json", str(out)]
    repo = Path(__file__).resolve().parent.parent
    run = subprocess.run(argv, cwd=repo, capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    assert "g. codec encode + decode: dict of 4 numpy arrays" in run.stdout
    import json

    results = json.loads(out.read_text())["results"]
    assert set(results) == {"codec_numpy_dict", "codec_tuples", "codec_dicts", "codec_array"}
    for figure in results.values():
        assert figure["bigactor"]["median"] > 0
        assert figure["target"]["x_floor_of"] == "pickle"
