"""The error tree: flags, messages, pickling, and rebuilt remote exceptions."""

import pickle
from typing import Any

import cloudpickle
import pytest
import trio
from support import Failing, start_one

import bigactor
from bigactor import RemoteError
from bigactor._errors import as_remote


def test_tree_and_retriable_flags() -> None:
    """The tree of STYLE.md holds; only a call that never left (CallNotSent) is retriable."""
    assert issubclass(bigactor.MachineLost, bigactor.MachineError)
    assert issubclass(bigactor.CodecError, TypeError)
    assert issubclass(bigactor.ServiceNotFound, LookupError)
    assert issubclass(bigactor.ClusterClosed, trio.ClosedResourceError)
    assert issubclass(bigactor.CallNotSent, bigactor.TransportError)
    assert bigactor.CallNotSent.retriable
    assert not bigactor.TransportError.retriable  # the call may have run
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


ERRORS = [
    bigactor.BigActorError("boom"),
    bigactor.MachineError("test:1-1", "went away"),
    bigactor.MachineStartError("test:1-1", "init failed"),
    bigactor.MachineLost("test:1-1", "keepalive failed after 2.0 s"),
    bigactor.TransportError("test:1-1", "connection reset"),
    bigactor.CallNotSent("test:1-1", "cannot connect"),
    bigactor.RemoteError("KeyError", "'k'", "Traceback ...", "test:1-1"),
    bigactor.RemoteError("KeyError", "'k'", "Traceback ...", "test:1-1", "Traceback ... in full"),
    bigactor.CodecError("cannot serialise arg 0", "arg 0 -> .conn -> socket"),
    bigactor.ServiceNotFound("test:1-1", "svc.nope", "no public method"),
    bigactor.ServiceNotFound("", "nope", "no actor has this name"),
    bigactor.ProtocolError("truncated frame"),
    bigactor.ClusterClosed("the cluster is closed"),
    bigactor.BigActorInternalError("oops"),
    bigactor.MethodCancelled(),
]


def test_every_error_class_is_covered() -> None:
    """The list below holds one instance of every error class bigactor exports."""
    exported = {
        obj
        for name in bigactor.__all__
        if isinstance(obj := getattr(bigactor, name), type) and issubclass(obj, BaseException)
    }
    assert exported == {type(e) for e in ERRORS}


@pytest.mark.parametrize("exc", ERRORS, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("lib", [pickle, cloudpickle], ids=["pickle", "cloudpickle"])
def test_errors_round_trip_through_pickle_and_cloudpickle(exc: BaseException, lib: Any) -> None:
    """Every error comes back with its type, text, args and attributes."""
    back = lib.loads(lib.dumps(exc))
    assert type(back) is type(exc)
    assert str(back) == str(exc)
    assert back.args == exc.args
    assert back.__dict__ == exc.__dict__


@pytest.mark.parametrize("lib", [pickle, cloudpickle], ids=["pickle", "cloudpickle"])
async def test_rebuilt_remote_exception_round_trips(
    cluster: bigactor.Cluster, autojump_clock: trio.testing.MockClock, lib: Any
) -> None:
    """A remote KeyError (KeyError and RemoteError) pickles back to the same class and data."""
    machine = await start_one(cluster, failing=Failing())
    with pytest.raises(KeyError) as info:
        await machine.call("failing.key_error", "k")
    exc = info.value
    back = lib.loads(lib.dumps(exc))
    assert type(back) is type(exc)
    assert isinstance(back, KeyError)
    assert isinstance(back, RemoteError)
    assert str(back) == str(exc) == "'k'"
    assert back.args == exc.args
    assert back.type_name == "KeyError"
    assert back.remote_traceback == exc.remote_traceback
    assert back.addr == machine.addr
