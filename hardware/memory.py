"""How much memory this process may still take: the smaller of the machine's and its cgroup's.

`available_memory()` = min(MemAvailable from /proc/meminfo, cgroup `memory.max`
minus `memory.current` (v2) or `memory.limit_in_bytes` minus
`memory.usage_in_bytes` (v1)); where none of these can be read,
`os.sysconf("SC_AVPHYS_PAGES") x SC_PAGE_SIZE`; None when nothing is known.
Settings that size buffers from counts (`clasp pretrain`'s batch and crops,
model widths) are checked against it before anything is allocated.
"""

from __future__ import annotations

import os
from pathlib import Path

MEMINFO = Path("/proc/meminfo")
CGROUP_ROOT = Path("/sys/fs/cgroup")


def _meminfo_available(path: Path = MEMINFO) -> int | None:
    try:
        for line in path.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_room(root: Path = CGROUP_ROOT) -> int | None:
    for limit_file, usage_file in (("memory.max", "memory.current"),
                                   ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        try:
            limit = (root / limit_file).read_text().strip()
            if limit == "max":
                return None
            room = int(limit) - int((root / usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if int(limit) >= 1 << 60:  # v1 reports "unlimited" as a huge number
            return None
        return max(0, room)
    return None


def available_memory(meminfo: Path = MEMINFO, cgroup_root: Path = CGROUP_ROOT) -> int | None:
    """Bytes this process may still allocate (rule in the module docstring); None when unknown."""
    known = [v for v in (_meminfo_available(meminfo), _cgroup_room(cgroup_root)) if v is not None]
    if not known:
        try:
            known = [os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")]
        except (ValueError, OSError, AttributeError):
            return None
    return min(known)
