"""How many of this process's cores other work keeps busy right now.

torch's intra-op threads meet at a barrier after every parallel region. When
another busy process holds one of the cores, the thread the scheduler parked
there makes every other thread wait for it at each barrier: a 2-thread
`clasp pretrain` beside one busy process on a 2-core machine ran 17x slower
than idle (0.67 against 11.5 images/s), while one thread ran at 65 % of idle
(7.5 images/s), near the fair half. So the thread count is taken from the
cores that are free, not only from those the process may use (`cores.py`).

`busy_cores()` first reads how many tasks are runnable at this instant
(`/proc/loadavg`): when this process is the only one, nothing else is busy and
the answer costs nothing. Otherwise it samples `/proc/stat` twice,
`SAMPLE_SECONDS` apart, over the CPUs of this process's affinity: the busy share of each (user, nice, system,
irq, softirq, steal: time the CPU was not ours to use) summed, minus this
process's own CPU time in the window. `free_cores` counts a core as taken when
other work uses at least half of it.

The wait policy of OpenMP stays as it is: `OMP_WAIT_POLICY=PASSIVE` saved less
under load than one thread fewer (6.9 against 7.5 images/s) and cost 28 % idle.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Callable

PROC_STAT = Path("/proc/stat")
PROC_LOADAVG = Path("/proc/loadavg")
SAMPLE_SECONDS = 0.25
IDLE_FIELDS = (3, 4)  # idle, iowait: the CPU had nothing to run
COUNTED_FIELDS = 8  # user nice system idle iowait irq softirq steal (guest time is inside user)

CpuTimes = dict[int, tuple[int, int]]  # cpu index -> (busy ticks, total ticks)


def cpu_times(stat: Path = PROC_STAT) -> CpuTimes:
    """Busy and total ticks of every CPU since boot, from the `cpuN` lines of /proc/stat."""
    times: CpuTimes = {}
    for line in stat.read_text().splitlines():
        name, *fields = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        ticks = [int(v) for v in fields[:COUNTED_FIELDS]]
        idle = sum(ticks[i] for i in IDLE_FIELDS)
        times[int(name[3:])] = (sum(ticks) - idle, sum(ticks))
    return times


def busy_share(before: CpuTimes, after: CpuTimes, cpus: set[int]) -> float:
    """Busy cores (0..len(cpus)) between two samples, over `cpus`."""
    busy = 0.0
    for cpu in cpus & before.keys() & after.keys():
        total = after[cpu][1] - before[cpu][1]
        if total > 0:
            busy += (after[cpu][0] - before[cpu][0]) / total
    return busy


def _own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def others_runnable(loadavg: Path = PROC_LOADAVG) -> int | None:
    """Tasks runnable at this instant besides the reader (the 4th field of /proc/loadavg is running/total)."""
    try:
        return max(0, int(loadavg.read_text().split()[3].split("/")[0]) - 1)
    except (OSError, ValueError, IndexError):
        return None


def busy_cores(sample_seconds: float = SAMPLE_SECONDS, stat: Path = PROC_STAT, loadavg: Path = PROC_LOADAVG,
               sleep: Callable[[float], None] = time.sleep) -> float | None:
    """Cores of this process's affinity kept busy by other work; None where /proc/stat cannot be read."""
    if others_runnable(loadavg) == 0:
        return 0.0
    cpus = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    try:
        before, own_before, started = cpu_times(stat), _own_cpu_seconds(), time.monotonic()
        sleep(sample_seconds)
        after, own_after, elapsed = cpu_times(stat), _own_cpu_seconds(), time.monotonic() - started
    except (OSError, ValueError, IndexError):
        return None
    own = (own_after - own_before) / elapsed if elapsed > 0 else 0.0
    return max(0.0, busy_share(before, after, cpus) - own)


def free_cores(cores: int, busy_others: float | None) -> int:
    """`cores` less those other work keeps busy (half a core or more counts as one), at least 1."""
    if busy_others is None:
        return cores
    return max(1, cores - math.floor(busy_others + 0.5))
