"""A module next to the program: the driver imports it, so it travels in the code bundle."""

from __future__ import annotations

import socket


class Square:
    """An actor class defined outside ``__main__``: the worker imports it from the bundle."""

    def __init__(self, side: float) -> None:
        self.side = side

    def area(self) -> float:
        return self.side * self.side

    def module_file(self) -> str:
        return __file__

    def host(self) -> str:
        return socket.gethostname()
