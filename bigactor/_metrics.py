"""Per-method call counters, kept by both ends of every call (bigmachine's rpc stats, §3.8,
without its server-side gaps: request bytes and method errors are counted too)."""

from __future__ import annotations

from typing import Any


class MethodStats:
    """Counters of one method on one side: calls, errors, time and bytes."""

    __slots__ = ("bytes_in", "bytes_out", "count", "errors", "max_seconds", "seconds")

    def __init__(self) -> None:
        self.count = 0
        self.errors = 0
        self.seconds = 0.0
        self.max_seconds = 0.0
        self.bytes_in = 0
        self.bytes_out = 0

    def record(self, seconds: float, ok: bool, bytes_in: int, bytes_out: int) -> None:
        self.count += 1
        self.errors += not ok
        self.seconds += seconds
        if seconds > self.max_seconds:
            self.max_seconds = seconds
        self.bytes_in += bytes_in
        self.bytes_out += bytes_out

    def snapshot(self) -> dict[str, Any]:
        """Plain data (for JSON): counts, mean and max latency in ms, bytes each way."""
        return {
            "count": self.count,
            "errors": self.errors,
            "mean_ms": round(self.seconds / self.count * 1e3, 3) if self.count else 0.0,
            "max_ms": round(self.max_seconds * 1e3, 3),
            "seconds": self.seconds,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
        }


class Registry:
    """Method name -> MethodStats, created on first use."""

    def __init__(self) -> None:
        self.methods: dict[str, MethodStats] = {}

    def get(self, method: str) -> MethodStats:
        stats = self.methods.get(method)
        if stats is None:
            stats = self.methods[method] = MethodStats()
        return stats

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return {name: s.snapshot() for name, s in sorted(self.methods.items())}


def payload_size(data: Any) -> int:
    """Bytes of a received payload: bytes-like, or (payload, out-of-band buffers)."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return len(data)
    payload, buffers = data
    return len(payload) + sum(len(b) for b in buffers)
