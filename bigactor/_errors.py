"""The error tree of bigactor.

::

    BigActorError(Exception)
    ├── MachineError(addr, message)
    │   ├── MachineStartError        the machine never reached RUNNING (boot, versions, init)
    │   ├── MachineLost              the machine stopped: process exit, keepalive lapse, cancel
    │   └── TransportError           the connection broke; the call may have run
    │       └── CallNotSent          the call never left the caller: safe to re-send
    ├── RemoteError                  an exception raised by the remote method
    ├── CodecError(TypeError)        a value could not be serialised or deserialised
    ├── ServiceNotFound(LookupError) no such actor or method on the machine
    ├── ProtocolError                a peer sent bytes that break the wire protocol
    │   ├── AuthError                the peer failed the handshake (wrong key, relayed)
    │   ├── VersionMismatch          driver and worker run different versions
    │   ├── HandshakeFailed          the peer did not speak the websocket upgrade
    │   └── TLSError                 the TLS handshake failed (the peer is not TLS or not
    │                                certified by the cluster CA)
    ├── ClusterClosed(trio.ClosedResourceError)
    ├── EC2Error(operation, code)    an EC2 operation failed (the EC2 system's own error)
    └── BigActorInternalError        should never happen; please report

The wire's own classes (``AuthError``, ``VersionMismatch`` in ``_rpc._auth``, ``HandshakeFailed``
in ``_rpc._websocket``, ``TLSError`` in ``_rpc._tls``) reach users only inside the errors above:
a failed handshake makes the machine fail to start or the call ``CallNotSent``.
``_rpc._websocket.WebSocketClosed`` (the connection ended) and ``Unallocatable`` (no memory for a
message) never leave the wire: they become ``TransportError`` and ``CodecError``.
``MethodCancelled`` (in ``_rpc._threads``), a ``BaseException`` like ``trio.Cancelled``, is
raised inside a sync method whose caller gave up; the caller never sees it. A system's own
errors (``EC2Error`` in ``systems.ec2._errors``: a launch, a tag or a termination that AWS
refused) come from ``open_cluster`` and ``cluster.start``.

Every class has a ``retriable`` flag: ``Machine.retry_call`` re-sends a call only when the
error it got says so (bigmachine's severity) — only :class:`CallNotSent`, whose call never left
the caller — or, for a :class:`TransportError` (the call may have run), when the method is
marked safe to repeat with ``@bigactor.idempotent``. Every error pickles: constructors pass all their
arguments to ``super().__init__`` and ``__str__`` formats them, so pickle rebuilds them exactly.

A remote exception arrives as an instance of a subclass of both its original type and
:class:`RemoteError` (so ``except KeyError:`` works in the caller); when the original type cannot
be rebuilt it arrives as a plain :class:`RemoteError` carrying the type name and message. Either
way the remote traceback is printed with it, as a PEP 678 note, and kept as
``RemoteError.remote_traceback``. That traceback shows the program's own frames: the machine
leaves out the frames of bigactor and trio (how a call reaches a method is the same every
time), and ``RemoteError.remote_traceback_full`` keeps them. With ``BIGACTOR_TRACEBACK=full`` in
the caller's environment the note shows the full traceback.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

import trio


class BigActorError(Exception):
    """Base class of every error bigactor raises itself."""

    retriable: ClassVar[bool] = False


class MachineError(BigActorError):
    """A machine failed; ``addr`` names it."""

    def __init__(self, addr: str, message: str) -> None:
        super().__init__(addr, message)
        self.addr = addr
        self.message = message

    def __str__(self) -> str:
        return f"machine {self.addr}: {self.message}"


class MachineStartError(MachineError):
    """The machine failed before it reached RUNNING (boot, version check, service init)."""


class MachineLost(MachineError):
    """The machine has stopped; calls on it can never succeed."""


class TransportError(MachineError):
    """The connection to a machine broke while a call was on it; the machine may be alive.

    The call may or may not have reached the machine and run, so it is not retriable:
    ``retry_call`` re-sends it only for methods marked ``@bigactor.idempotent``.
    """


class CallNotSent(TransportError):
    """The call never left the caller: no connection could be made, or it broke first.

    Nothing of the call reached the machine, so it is safe to re-send: retriable.
    """

    retriable: ClassVar[bool] = True


class CodecError(BigActorError, TypeError):
    """A value could not be serialised (in the caller) or deserialised (on arrival).

    ``path`` names the culprit inside the value, e.g. ``arg 0 -> .conn -> socket``.
    """

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message, path)
        self.message = message
        self.path = path

    def __str__(self) -> str:
        where = f" (at {self.path})" if self.path else ""
        return f"{self.message}{where}"


class ServiceNotFound(BigActorError, LookupError):
    """The machine hosts no such actor, or the actor has no such public method."""

    def __init__(self, addr: str, target: str, message: str) -> None:
        super().__init__(addr, target, message)
        self.addr = addr
        self.target = target
        self.message = message

    def __str__(self) -> str:
        # The driver's own lookups (``cluster.actor(name)``) have no machine to name.
        where = f"machine {self.addr}: " if self.addr else ""
        return f"{where}{self.target}: {self.message}"


class ProtocolError(BigActorError):
    """A peer sent bytes that do not follow the wire protocol; the connection is closed."""


class ClusterClosed(BigActorError, trio.ClosedResourceError):
    """The cluster has been closed; it starts and dials nothing more."""


class BigActorInternalError(BigActorError):
    """Should never happen; please report it with the traceback."""


class RemoteError(BigActorError):
    """An exception raised by a remote method, re-raised in the caller.

    The remote traceback is printed with it (a PEP 678 note). It shows the frames of the
    program and the libraries it calls; the frames of bigactor and trio, through which every
    call reaches its method, are left out unless ``BIGACTOR_TRACEBACK=full`` is set in the
    caller's environment.

    Attributes:
        type_name: the qualified name of the original exception type.
        message: ``str()`` of the original exception.
        remote_traceback: the traceback on the machine, as the note shows it.
        addr: the machine that raised it.
        remote_traceback_full: the same traceback with bigactor's and trio's frames.
    """

    def __init__(
        self,
        type_name: str,
        message: str,
        remote_traceback: str = "",
        addr: str = "",
        remote_traceback_full: str = "",
    ) -> None:
        super().__init__(type_name, message, remote_traceback, addr, remote_traceback_full)
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback
        self.addr = addr
        self.remote_traceback_full = remote_traceback_full or remote_traceback

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}" if self.message else self.type_name


_remote_types: dict[type[BaseException], type[BaseException]] = {}


def safe_str(exc: BaseException) -> str:
    """``str(exc)``, or a stand-in when the exception's own ``__str__`` fails."""
    try:
        return str(exc)
    except Exception as err:
        return f"<str() of {type(exc).__name__} failed: {type(err).__name__}>"


def _str_of(orig: type[BaseException]) -> Any:
    def __str__(self: BaseException) -> str:
        try:
            return orig.__str__(self)
        except Exception:
            return str(self.__dict__.get("message", "")) or f"<str() of {orig.__name__} failed>"

    return __str__


def _remote_subclass(orig: type[BaseException]) -> type[BaseException] | None:
    """Return a class deriving from both ``orig`` and RemoteError, or None if impossible.

    Never for a BaseException that is not an Exception (``SystemExit``, ``KeyboardInterrupt``,
    ``GeneratorExit``): a method's ``SystemExit(3)`` is an error of its call, and re-raised as
    itself it would end the caller's program. Those arrive as a plain RemoteError naming them.
    """
    if issubclass(orig, RemoteError):
        return orig
    if not issubclass(orig, Exception):
        return None
    sub = _remote_types.get(orig)
    if sub is None:
        try:
            sub = type(
                orig.__name__,
                (orig, RemoteError),
                {
                    "__module__": orig.__module__,
                    "__qualname__": orig.__qualname__,
                    "__reduce__": _remote_reduce,
                    "__str__": _str_of(orig),
                    # It ran remotely: never re-send it, whatever the original type says.
                    "retriable": False,
                },
            )
        except TypeError:
            return None
        _remote_types[orig] = sub
    return sub


def _remote_reduce(self: BaseException) -> tuple[Any, ...]:
    orig = type(self).__mro__[1]
    return (_rebuild_remote, (orig, self.args, dict(self.__dict__)))


def _rebuild_remote(orig: type[BaseException], args: tuple[Any, ...], state: dict[str, Any]) -> BaseException:
    sub = _remote_subclass(orig)
    assert sub is not None
    exc = sub.__new__(sub, *args)
    exc.args = args
    exc.__dict__.update(state)
    return exc


def full_tracebacks() -> bool:
    """Whether ``BIGACTOR_TRACEBACK=full`` asks to see the frames bigactor hides by default."""
    return os.environ.get("BIGACTOR_TRACEBACK", "").strip().lower() == "full"


def as_remote(
    exc: BaseException,
    type_name: str,
    remote_traceback: str,
    addr: str,
    remote_traceback_full: str = "",
) -> BaseException:
    """Turn an exception rebuilt from a remote machine into one that is also a RemoteError.

    ``remote_traceback`` leaves out bigactor's and trio's frames, ``remote_traceback_full``
    (empty when there were none to leave out) keeps them; the note printed with the exception
    shows the first unless :func:`full_tracebacks`. The note comes before the notes the
    exception already carries: those were added on the machine (or further away, for an error
    that crossed several machines), and read after the traceback they belong to.
    """
    sub = _remote_subclass(type(exc))
    message = safe_str(exc)
    notes = list(getattr(exc, "__notes__", ()))
    full = remote_traceback_full or remote_traceback
    if full_tracebacks():
        remote_traceback = full
    if sub is None:
        out: BaseException = RemoteError(type_name, message, remote_traceback, addr, full)
    elif sub is type(exc):
        out = exc
    else:
        out = sub.__new__(sub, *exc.args)
        out.args = exc.args
        out.__dict__.update(exc.__dict__)
    # The original's own attributes win (a remote MachineLost keeps the machine it names).
    out.__dict__.update(type_name=type_name, remote_traceback=remote_traceback, remote_traceback_full=full)
    out.__dict__.setdefault("addr", addr)
    out.__dict__.setdefault("message", message)
    if remote_traceback:
        notes.insert(0, _remote_note(remote_traceback, addr, hidden=remote_traceback != full))
    if notes:
        out.__notes__ = notes
    return out


def _remote_note(remote_traceback: str, addr: str, hidden: bool) -> str:
    """The note that prints ``remote_traceback`` of machine ``addr`` with its exception.

    ``hidden`` says that frames were left out, and how to see them.
    """
    how = "; BIGACTOR_TRACEBACK=full shows bigactor's and trio's frames" if hidden else ""
    return f"remote traceback (machine {addr}{how}):\n{remote_traceback.rstrip()}"
