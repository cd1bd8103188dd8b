"""Telling an OOM kill from any other SIGKILL, on Linux.

When a worker dies by SIGKILL, two witnesses may say the kernel's OOM killer did it:

* the kernel log (``/dev/kmsg``, readable by root or where ``dmesg_restrict`` is 0): newer
  kernels write ``Out of memory: Killed process <pid>`` or ``Memory cgroup out of memory:
  Killed process <pid>``, older ones ``Kill process <pid>`` (bigmachine matched only the old
  form, spec §2.8);
* the memory cgroup's OOM-kill counter (``memory.events`` on cgroup v2, ``memory.oom_control``
  on v1), read before the worker started and again after it died.

Either is enough; neither being readable just leaves the plain "killed by SIGKILL".
"""

from __future__ import annotations

import contextlib
import os
import re

_KILLED = re.compile(rb"(?:Killed|Kill) process (\d+)")


def _cgroup_dirs(pid: int) -> list[str]:
    """The memory cgroup directories of ``pid`` (v2 unified and v1 memory)."""
    dirs = []
    with contextlib.suppress(OSError), open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if controllers == "":
                for root in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
                    if os.path.exists(f"{root}{path}/memory.events"):
                        dirs.append(f"{root}{path}")
                        break
            elif "memory" in controllers.split(","):
                dirs.append(f"/sys/fs/cgroup/memory{path}")
    return dirs


def oom_kills(pid: int) -> dict[str, int]:
    """The OOM-kill counters of ``pid``'s memory cgroups, by directory (read while it lives)."""
    out = {}
    for d in _cgroup_dirs(pid):
        for name in ("memory.events", "memory.oom_control"):
            with contextlib.suppress(OSError, ValueError), open(os.path.join(d, name)) as f:
                for line in f:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        out[os.path.join(d, name)] = int(value)
    return out


def _kernel_log_names(pid: int) -> str | None:
    """The kernel log line saying ``pid`` was killed for memory, if the log is readable."""
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    found = None
    try:
        while True:
            try:
                record = os.read(fd, 8192)
            except BlockingIOError:
                break
            except OSError:  # EPIPE: a record was overwritten while reading; go on
                continue
            if not record:
                break
            match = _KILLED.search(record)
            if match and int(match.group(1)) == pid and b"memory" in record.lower():
                found = record.partition(b";")[2].strip().decode(errors="replace")
    finally:
        os.close(fd)
    return found


def oom_cause(pid: int, before: dict[str, int]) -> str | None:
    """Why ``pid`` died by SIGKILL if the kernel's OOM killer did it, else None (blocking)."""
    line = _kernel_log_names(pid)
    if line:
        return f"killed by the kernel's OOM killer (kernel log: {line})"
    for path, count in before.items():
        with contextlib.suppress(OSError, ValueError), open(path) as f:
            for text in f:
                key, _, value = text.partition(" ")
                if key == "oom_kill" and int(value) > count:
                    return f"killed by the kernel's OOM killer ({path}: oom_kill {count} -> {int(value)})"
    return None
