"""How many cores this process may use, and how a run divides them.

`os.cpu_count()` counts the machine, not what the process is allowed: a job
pinned to some cores (`taskset`, Slurm, `os.sched_setaffinity`) or a container
with a CPU quota (cgroup `cpu.max` / `cpu.cfs_quota_us`) gets less, and torch,
which sizes its thread pool from the machine, then runs more threads than cores.
Every count below starts from `available_cores()`:

- `available_cores()` = min(affinity, ceil(cgroup quota / period)), at least 1;
- `cores_per_process(n)` = available cores // processes on this machine, at least 1
  (`clasp pretrain` under `accelerate launch`, dask workers of one host);
- torch threads of a compute process = its cores per process, or fewer when other
  work keeps some of the cores busy at the start (`load.py`: a thread the scheduler
  parks beside another busy process stalls every barrier), unless
  `OMP_NUM_THREADS` is set: a user who sets it means it (`use_available_cores`);
- DataLoader workers (`dataloader_workers`): on a GPU the loader feeds the device,
  so it gets every core but one (at most 8); on a CPU the model needs the cores
  and one worker per 8 cores is plenty (a worker delivers ~110 images/s, a CPU
  step consumes far fewer).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

from clasp.hardware.load import busy_cores, free_cores

CGROUP_ROOT = Path("/sys/fs/cgroup")
MAX_GPU_LOADER_WORKERS = 8
CPU_CORES_PER_LOADER_WORKER = 8


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


def available_cores(root: Path = CGROUP_ROOT) -> int:
    quota = cgroup_quota_cores(root)
    cores = affinity_cores()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return cores


def cores_per_process(processes_on_host: int = 1, cores: int | None = None) -> int:
    """This process's share of `cores` (by default the available cores)."""
    cores = available_cores() if cores is None else cores
    return max(1, cores // max(1, processes_on_host))


def torch_threads(processes_on_host: int = 1) -> int:
    """Threads for a compute process: `OMP_NUM_THREADS` when set, else its share of the cores that are free."""
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):
        pass
    cores = available_cores()  # affinity and cgroup files, read once
    share = cores_per_process(processes_on_host, cores)
    busy = busy_cores()
    threads = min(share, free_cores(cores, busy))
    if threads < share:
        logging.getLogger("clasp").warning(
            f"other work keeps {busy:.1f} of {cores} cores busy: {threads} torch thread"
            f"{'s' if threads > 1 else ''} instead of {share} (set OMP_NUM_THREADS to choose)")
    return threads


def use_available_cores(processes_on_host: int = 1) -> int:
    """Set torch's thread pool by `torch_threads`; returns the count."""
    import torch

    threads = torch_threads(processes_on_host)
    torch.set_num_threads(threads)
    return threads


def dataloader_workers(device_type: str, processes_on_host: int = 1) -> int:
    """The default DataLoader worker count per training process (rule in the module docstring)."""
    cores = cores_per_process(processes_on_host)
    if device_type == "cpu":
        return max(1, cores // CPU_CORES_PER_LOADER_WORKER)
    return max(1, min(MAX_GPU_LOADER_WORKERS, cores - 1))
