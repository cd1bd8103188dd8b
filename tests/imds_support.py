"""A fake instance metadata service (IMDSv2) on loopback, for the tests of the worker's
client and of spot interruption notices: PUT for a token, then GETs that must carry it."""

from __future__ import annotations


class Metadata:
    """What the service answers: its tokens and their TTLs, its items, and a spot
    interruption notice once ``action`` is set."""

    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.ttls: list[str] = []
        self.action: str | None = None
        self.values = {"meta-data/instance-id": "i-0abc", "meta-data/local-ipv4": "10.1.2.3"}
