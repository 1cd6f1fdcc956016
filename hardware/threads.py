"""How many torch threads a compute process runs, and where the count came from: one pure rule.

    choose_threads(cores, processes_on_host, busy, explicit, omp) -> ThreadChoice

The first of these that applies decides:

1. `--threads N` (`explicit`): the count typed for this run, as given, even
   above the available cores (a warning says so);
2. `OMP_NUM_THREADS` (`omp`, a positive integer): a user who sets it means it;
3. this process's share of the available cores (`cores.py`: affinity and cgroup
   quota, divided by the processes on the host), less the cores other work keeps
   busy at the start (`load.py`).

`--threads` wins over `OMP_NUM_THREADS`: the flag is typed for this one command,
the variable is often set once for every job of a shell or a cluster. An
`OMP_NUM_THREADS` that is not a positive integer is ignored, as torch ignores it.

Nothing here reads the machine: `cores.thread_choice` gathers the inputs (and
samples the load only when rules 1 and 2 do not apply) and calls this.
"""

from __future__ import annotations

from dataclasses import dataclass

from clasp.hardware.load import free_cores

THREADS_HELP = ("Torch threads of each compute process; wins over OMP_NUM_THREADS, which wins over the default: "
                "the process's share of the available cores, less those other work keeps busy at the start.")
THREADS_SHOWN = "from the free cores"
THREADS_LIMITS = (1, 4096)

EXPLICIT, ENVIRONMENT, FREE_CORES, CORES = "--threads", "OMP_NUM_THREADS", "free cores", "cores"


@dataclass(frozen=True)
class ThreadChoice:
    """A thread count and its source (`EXPLICIT`, `ENVIRONMENT`, `FREE_CORES` or `CORES`), with what it saw."""

    threads: int
    source: str
    cores: int  # available to this process (affinity, quota)
    share: int  # cores // processes on the host
    busy: float | None = None  # cores other work kept busy; None: not measured

    def line(self) -> str:
        """One line for the hardware summary, e.g. `torch threads 3 (free cores: 1.0 of 4 busy, share 4)`."""
        if self.source == EXPLICIT:
            why = f"--threads, {self.cores} cores available"
        elif self.source == ENVIRONMENT:
            why = f"OMP_NUM_THREADS, {self.cores} cores available"
        elif self.source == FREE_CORES:
            why = f"free cores: {self.busy:.1f} of {self.cores} busy with other work, share {self.share}"
        else:
            why = f"cores: share {self.share} of {self.cores} available"
        return f"torch threads {self.threads} ({why})"

    def warning(self) -> str | None:
        """A line worth a warning: fewer threads than the share because of load, or more than the cores."""
        if self.source == FREE_CORES:
            return (f"other work keeps {self.busy:.1f} of {self.cores} cores busy: {self.threads} torch thread"
                    f"{'s' if self.threads > 1 else ''} instead of {self.share} (set --threads or OMP_NUM_THREADS "
                    f"to choose)")
        if self.threads > self.cores:
            return (f"{self.threads} torch threads ({self.source}) on {self.cores} available cores: threads that "
                    f"share a core stall each other at every barrier")
        return None


def _positive(value: str | int | None) -> int | None:
    try:
        n = int(value) if value is not None else None
    except ValueError:
        return None
    return n if n is not None and n > 0 else None


def choose_threads(cores: int, processes_on_host: int = 1, busy: float | None = None,
                   explicit: int | None = None, omp: str | None = None) -> ThreadChoice:
    """The rule of the module docstring. `busy`: cores other work keeps busy (None: unknown, count none)."""
    share = max(1, cores // max(1, processes_on_host))
    if _positive(explicit) is not None:
        return ThreadChoice(int(explicit), EXPLICIT, cores, share)
    if _positive(omp) is not None:
        return ThreadChoice(_positive(omp), ENVIRONMENT, cores, share)
    threads = min(share, free_cores(cores, busy))
    if threads < share:
        return ThreadChoice(threads, FREE_CORES, cores, share, busy)
    return ThreadChoice(threads, CORES, cores, share, busy)


def needs_load_sample(explicit: int | None, omp: str | None) -> bool:
    """Whether the rule will look at the load: only when neither --threads nor OMP_NUM_THREADS decides."""
    return _positive(explicit) is None and _positive(omp) is None
