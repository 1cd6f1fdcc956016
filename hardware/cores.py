"""How many cores this process may use, and how a run divides them.

`os.cpu_count()` counts the machine, not what the process is allowed: a job
pinned to some cores (`taskset`, Slurm, `os.sched_setaffinity`) or a container
with a CPU quota (cgroup `cpu.max` / `cpu.cfs_quota_us`) gets less, and torch,
which sizes its thread pool from the machine, then runs more threads than cores.
Every count below starts from `available_cores()`:

- `available_cores()` = min(affinity, ceil(cgroup quota / period)), at least 1;
- `cores_per_process(n)` = available cores // processes on this machine, at least 1
  (`clasp pretrain` under `accelerate launch`, dask workers of one host);
- torch threads of a compute process = `--threads` when given, else
  `OMP_NUM_THREADS` when set (a user who sets it means it), else its cores per
  process, or fewer when other work keeps some of the cores busy at the start
  (`load.py`: a thread the scheduler parks beside another busy process stalls
  every barrier); the rule is `threads.choose_threads`, `thread_choice` feeds it;
- DataLoader workers (`dataloader_workers`): on a GPU the loader feeds the device,
  so it gets every core but one (at most 8); on a CPU the model needs the cores
  and one worker per 8 cores is plenty (a worker delivers ~110 images/s, a CPU
  step consumes far fewer);
- a count of local worker processes someone asks for (a loader's `num_workers`,
  `clasp label --workers`) is refused above WORKERS_PER_CORE per available core
  (`beyond_cores`): more only wait for each other.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

from clasp.hardware.load import busy_cores
from clasp.hardware.threads import ThreadChoice, choose_threads, needs_load_sample

CGROUP_ROOT = Path("/sys/fs/cgroup")
MAX_GPU_LOADER_WORKERS = 8
CPU_CORES_PER_LOADER_WORKER = 8
WORKERS_PER_CORE = 4  # local worker processes per available core, at most


def affinity_cores() -> int:
    """Cores this process may be scheduled on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def cgroup_quota_cores(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota of this process's cgroup in cores (v2 `cpu.max`, v1 `cpu.cfs_quota_us`); None if unlimited."""
    try:
        fields = (root / "cpu.max").read_text().split()
        if fields and fields[0] != "max":
            return int(fields[0]) / int(fields[1])
        return None
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def cores_from(affinity: int, quota: float | None) -> int:
    """min(affinity, ceil(quota)), at least 1; an unlimited quota (None) leaves the affinity."""
    cores = max(1, affinity)
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return cores


def available_cores(root: Path = CGROUP_ROOT) -> int:
    return cores_from(affinity_cores(), cgroup_quota_cores(root))


def cores_per_process(processes_on_host: int = 1, cores: int | None = None) -> int:
    """This process's share of `cores` (by default the available cores)."""
    cores = available_cores() if cores is None else cores
    return max(1, cores // max(1, processes_on_host))


def thread_choice(processes_on_host: int = 1, explicit: int | None = None) -> ThreadChoice:
    """The thread rule (`threads.choose_threads`) on this machine: the load is sampled only when it decides."""
    omp = os.environ.get("OMP_NUM_THREADS")
    cores = available_cores()  # affinity and cgroup files, read once
    busy = busy_cores() if needs_load_sample(explicit, omp) else None
    return choose_threads(cores, processes_on_host, busy, explicit, omp)


def torch_threads(processes_on_host: int = 1, explicit: int | None = None) -> int:
    """Threads for a compute process: `explicit` (--threads), else `OMP_NUM_THREADS`, else its share of the free
    cores; a count below the share, or above the cores, is logged as a warning."""
    choice = thread_choice(processes_on_host, explicit)
    if choice.warning():
        logging.getLogger("clasp").warning(choice.warning())
    return choice.threads


def set_torch_threads(processes_on_host: int = 1, threads: int | None = None) -> ThreadChoice:
    """Set torch's thread pool by `thread_choice` (`threads`: an explicit --threads); returns the choice, whose
    `source` a run may record beside the count.

    The choice and its source go to the `clasp` logger as one line (INFO; a warning when it says one).
    """
    import torch

    choice = thread_choice(processes_on_host, threads)
    log = logging.getLogger("clasp")
    log.warning(choice.warning()) if choice.warning() else log.info(choice.line())
    torch.set_num_threads(choice.threads)
    return choice


def use_available_cores(processes_on_host: int = 1, threads: int | None = None) -> int:
    """`set_torch_threads`, returning the count only."""
    return set_torch_threads(processes_on_host, threads).threads


def dataloader_workers(device_type: str, processes_on_host: int = 1) -> int:
    """The default DataLoader worker count per training process (rule in the module docstring)."""
    cores = cores_per_process(processes_on_host)
    if device_type == "cpu":
        return max(1, cores // CPU_CORES_PER_LOADER_WORKER)
    return max(1, min(MAX_GPU_LOADER_WORKERS, cores - 1))


def beyond_cores(count: int | None, cores: int | None = None) -> str | None:
    """Why `count` local worker processes are too many here, as the words after the count
    ("is more than 4 per available core (4 x 2 = 8)"); None: not too many (or no count)."""
    if count is None:
        return None
    cores = available_cores() if cores is None else cores
    if count <= WORKERS_PER_CORE * cores:
        return None
    return f"is more than {WORKERS_PER_CORE} per available core ({WORKERS_PER_CORE} x {cores} = {WORKERS_PER_CORE * cores})"
