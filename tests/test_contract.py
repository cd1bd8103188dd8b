"""The contract between driver and worker: WorkerConfig, and the layers it keeps apart."""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
import textwrap

import pytest

import bigactor
import bigactor.supervisor
from bigactor import _contract
from bigactor._contract import WatchdogConfig, WorkerConfig

KEY = bytes(range(32))


def config() -> WorkerConfig:
    """A configuration with every field set."""
    return WorkerConfig(
        key=KEY,
        addr="unix:/tmp/m1",
        sys_path=["/a", "/b"],
        argv=["prog", "--flag"],
        watchdog=WatchdogConfig(tick=1.5, boot_grace=2.0),
        log_level=10,
        extra={"region": "eu-west-1"},
    )


def raw(**changes: object) -> bytes:
    """The JSON of ``config()`` with fields changed (None removes one)."""
    data = json.loads(config().to_json())
    for k, v in changes.items():
        if v is None:
            del data[k]
        else:
            data[k] = v
    return json.dumps(data).encode()


def test_worker_config_round_trips_through_one_line_of_json() -> None:
    """to_json gives one line without a newline; from_json gives back an equal config."""
    c = config()
    data = c.to_json()
    assert b"\n" not in data
    back = WorkerConfig.from_json(data)
    assert back == c
    assert back.sys_path == ("/a", "/b")
    assert back.extra == {"region": "eu-west-1"}
    assert back.watchdog == WatchdogConfig(tick=1.5, boot_grace=2.0)


def test_worker_config_fills_optional_fields_with_defaults() -> None:
    """Only key and addr are required; the rest take their defaults."""
    c = WorkerConfig.from_json(json.dumps({"key": KEY.hex(), "addr": "tcp:10.0.0.1:9000"}))
    assert c == WorkerConfig(key=KEY, addr="tcp:10.0.0.1:9000")
    assert c.watchdog == WatchdogConfig()
    assert c.sys_path == ()
    assert c.extra == {}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (raw(key=None), "field 'key' is missing"),
        (raw(addr=None), "field 'addr' is missing"),
        (raw(key="zz" + KEY.hex()), "field 'key': expected a hex string"),
        (raw(key=""), "field 'key': the cluster key is empty"),
        (raw(key=7), "field 'key': expected a hex string, got int"),
        (raw(addr="nowhere"), "field 'addr': expected an address scheme:rest"),
        (raw(sys_path="/a"), "field 'sys_path': expected a list of strings, got str"),
        (raw(argv=["x", 3]), "field 'argv': item 1: expected a string, got int"),
        (raw(watchdog={"tick": "soon"}), "field 'watchdog': 'tick': expected a number, got str"),
        (raw(watchdog={"tock": 1}), "field 'watchdog': unknown field 'tock'"),
        (raw(watchdog=[1]), "field 'watchdog': expected an object, got list"),
        (raw(log_level=True), "field 'log_level': expected an integer, got bool"),
        (raw(extra={"zone": 1}), "field 'extra': 'zone': expected a string, got int"),
        (raw(colour="blue"), "unknown field 'colour'"),
        (b"[1, 2]", "expected a JSON object, got list"),
        (b"{not json", "not JSON"),
    ],
)
def test_a_bad_worker_config_names_the_bad_field(data: bytes, message: str) -> None:
    """from_json raises a ValueError that names the field and what was wrong with it."""
    with pytest.raises(ValueError, match=r"^worker configuration: ") as info:
        WorkerConfig.from_json(data)
    assert message in str(info.value)


def test_a_bad_key_is_never_quoted() -> None:
    """The cluster key is a secret: an error about it does not repeat its value."""
    secret = "q" + KEY.hex()
    with pytest.raises(ValueError, match="field 'key'") as info:
        WorkerConfig.from_json(raw(key=secret))
    assert secret not in str(info.value)


@pytest.mark.slow
def test_a_worker_given_a_bad_config_exits_naming_the_field() -> None:
    """``python -m bigactor.supervisor`` with a bad configuration exits 1 with one clear line."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    r, w = os.pipe()
    try:
        os.write(w, raw(watchdog={"tick": "soon"}) + b"\n")
        os.close(w)
        out = subprocess.run(
            [sys.executable, "-m", "bigactor.supervisor", "--listen-fd", str(listener.fileno()),
             "--lifeline-fd", str(r)],
            pass_fds=(listener.fileno(), r), capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    finally:
        listener.close()
        os.close(r)
    assert out.returncode == 1
    assert out.stderr.strip() == (
        "bigactor worker: worker configuration: field 'watchdog': 'tick': expected a number, got str"
    )


def test_supervisor_re_exports_the_contract() -> None:
    """The names that moved to _contract are the same objects under bigactor.supervisor."""
    moved = ("Info", "MemInfo", "DiskInfo", "LoadInfo", "KeepaliveReply", "SYNC_MARKER", "WatchdogConfig")
    for name in moved:
        assert getattr(bigactor.supervisor, name) is getattr(_contract, name), name
    assert bigactor.supervisor.WorkerConfig is WorkerConfig
    assert bigactor.Info is _contract.Info


def test_contract_values_pickle() -> None:
    """What a supervisor sends back comes back equal through pickle."""
    values = [
        _contract.Info("3.12", "1", "cloudpickle 3", "linux", "d", 1, "h", 2.0),
        _contract.MemInfo(1, 2, 3, 4.0, 5),
        _contract.DiskInfo("/tmp", 1, 2, 3, 4.0),
        _contract.LoadInfo(1.0, 2.0, 3.0),
        _contract.KeepaliveReply(300.0, True),
        config(),
    ]
    for value in values:
        assert pickle.loads(pickle.dumps(value)) == value


def imported_after(statement: str) -> set[str]:
    """The bigactor modules a fresh interpreter has imported after running ``statement``."""
    script = textwrap.dedent(
        f"""
        import sys
        {statement}
        print(" ".join(sorted(m for m in sys.modules if m.startswith("bigactor"))))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    return set(out.stdout.split())


def test_the_contract_imports_nothing_of_bigactor_above_it() -> None:
    """bigactor._contract stands alone: importing it loads no other bigactor module but the
    package (whose own __init__ is not run here: the module is loaded from its file)."""
    path = os.path.join(os.path.dirname(bigactor.__file__), "_contract.py")
    loaded = imported_after(
        "import importlib.util\n"
        f"        spec = importlib.util.spec_from_file_location('bigactor_contract', {path!r})\n"
        "        spec.loader.exec_module(importlib.util.module_from_spec(spec))"
    )
    assert loaded == set()


def test_the_driver_core_does_not_import_the_supervisor() -> None:
    """Machine, Cluster and status use the contract, not the worker's package."""
    path = os.path.dirname(os.path.dirname(bigactor.__file__))
    loaded = imported_after(
        # A stand-in package, so that bigactor/__init__.py (which re-exports the supervisor's
        # Context) does not run: what is left is what the core modules import.
        "import types\n"
        f"        pkg = types.ModuleType('bigactor'); pkg.__path__ = [{path!r} + '/bigactor']\n"
        "        sys.modules['bigactor'] = pkg\n"
        "        import bigactor._machine, bigactor._cluster, bigactor._status, bigactor._open"
    )
    assert "bigactor._machine" in loaded
    assert not {m for m in loaded if m.startswith(("bigactor.supervisor", "bigactor.testing"))}, loaded


def test_importing_the_systems_does_not_import_the_test_system() -> None:
    """bigactor.systems finds the test system by entry point, never by import."""
    loaded = imported_after("import bigactor.systems; bigactor.systems.lookup('local')")
    assert "bigactor.systems" in loaded
    assert not {m for m in loaded if m.startswith("bigactor.testing")}, loaded
