"""The error tree: flags, messages, pickling, and rebuilt remote exceptions."""

import pickle

import dill
import pytest
import trio

import bigactor
from bigactor._errors import as_remote

ALL = [
    bigactor.BigActorError("boom"),
    bigactor.MachineError("unix:/x", "went away"),
    bigactor.MachineStartError("unix:/x", "init failed"),
    bigactor.MachineLost("unix:/x", "killed by SIGKILL"),
    bigactor.TransportError("unix:/x", "connection reset"),
    bigactor.RemoteError("KeyError", "'k'", "Traceback...", "unix:/x"),
    bigactor.CodecError("cannot serialise arg 0", "arg 0 -> .lock -> lock"),
    bigactor.ServiceNotFound("unix:/x", "svc.m", "no actor named 'svc'"),
    bigactor.ProtocolError("truncated frame"),
    bigactor.ClusterClosed("closed"),
    bigactor.BigActorInternalError("oops"),
]


@pytest.mark.parametrize("exc", ALL, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("lib", [pickle, dill], ids=["pickle", "dill"])
def test_every_error_round_trips(exc: BaseException, lib: object) -> None:
    """Each error pickles and comes back with the same type, text and attributes."""
    back = lib.loads(lib.dumps(exc))  # type: ignore[attr-defined]
    assert type(back) is type(exc)
    assert str(back) == str(exc)
    assert back.__dict__ == exc.__dict__


def test_tree_and_retriable_flags() -> None:
    """The tree of STYLE.md holds; only transport loss is retriable."""
    assert issubclass(bigactor.MachineLost, bigactor.MachineError)
    assert issubclass(bigactor.CodecError, TypeError)
    assert issubclass(bigactor.ServiceNotFound, LookupError)
    assert issubclass(bigactor.ClusterClosed, trio.ClosedResourceError)
    assert bigactor.TransportError.retriable
    assert not bigactor.MachineLost.retriable
    assert not bigactor.RemoteError.retriable


def test_messages_name_the_machine() -> None:
    """Machine errors say which machine and what happened."""
    assert str(bigactor.MachineLost("unix:/a", "killed")) == "machine unix:/a: killed"
    assert "arg 0 -> .x" in str(bigactor.CodecError("cannot serialise", "arg 0 -> .x"))


class Custom(Exception):
    def __init__(self, code: int, text: str) -> None:
        super().__init__(code, text)
        self.code = code


def test_rebuilt_remote_error_is_both_types_and_pickles() -> None:
    """A remote exception is its own type and RemoteError, carries the traceback, and pickles."""
    exc = as_remote(Custom(7, "bad"), "tests.Custom", "Traceback: here", "unix:/m")
    assert isinstance(exc, Custom)
    assert isinstance(exc, bigactor.RemoteError)
    assert exc.code == 7  # type: ignore[attr-defined]
    assert exc.remote_traceback == "Traceback: here"  # type: ignore[attr-defined]
    assert any("Traceback: here" in note for note in exc.__notes__)
    assert str(exc) == str(Custom(7, "bad"))
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is type(exc)
    assert back.code == 7
    with pytest.raises(Custom):
        raise back


def test_builtin_remote_error_keeps_builtin_behaviour() -> None:
    """A remote KeyError is caught by ``except KeyError`` and prints like one."""
    exc = as_remote(KeyError("k"), "KeyError", "tb", "unix:/m")
    assert isinstance(exc, KeyError)
    assert str(exc) == "'k'"
