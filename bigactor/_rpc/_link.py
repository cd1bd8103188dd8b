"""Link: calls from a machine back to its driver, over the connection the driver opened.

A driver may not be reachable by dialing (on a cloud, workers cannot connect to the program's
host), so a machine never dials its driver: the driver tells each of its machines which
connection is its own (``Supervisor.attach_driver``, the first call on every connection it
opens), serves calls on it, and the machine calls back over it. The driver authenticated the
machine before it opened the connection, and the machine the driver before it answered.
"""

from __future__ import annotations

from typing import Any

from .. import _codec
from .._errors import CallNotSent
from ._connection import Connection
from ._frames import Kind
from ._remote import decode_error

DRIVER = "driver"


class Link:
    """A machine's way back to its driver (unattached until the driver says hello)."""

    def __init__(self) -> None:
        self._conn: Connection | None = None

    def attach(self, conn: Connection) -> None:
        """Make ``conn`` the driver's connection (a newer one replaces an older)."""
        self._conn = conn

    @property
    def attached(self) -> bool:
        return self._conn is not None and not self._conn.broken

    async def call(self, target: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``"service.method"`` on the driver; raise what it raised (as a RemoteError)."""
        conn = self._conn
        if conn is None or conn.broken:
            raise CallNotSent(DRIVER, "no connection from the driver (this machine was not started by one)")
        kind, flags, data = await conn.call(_codec.encode_call(target, args, kwargs))
        if kind == Kind.REPLY:
            return _codec.decode(data, flags, f"the reply of {target} from the driver")
        raise decode_error(data, DRIVER)
