"""Re-checking the load during a long run: when to re-measure, and the thread count that follows.

The thread count is chosen once at the start (`threads.py`), from the cores other
work keeps busy then. A run of hours outlives that picture: a job that starts
beside it later parks one of its threads (every barrier waits for it), a job
that ends leaves cores idle. `LoadRecheck` watches the step times a loop hands
it and decides when to sample the load again (`load.busy_cores`, 0.25 s):

- every `every` steps, whatever the times (cores freed do not slow a step);
- sooner when the median of the last `window` steps exceeds the reference
  median by `slowdown` (a new neighbour), at most once per `window` steps.

The reference is the median of the first `window` steps timed after `skip`
warm-up steps, and again after every re-check (a new count, or the same count
under a new normal: a slower phase of the data must not trigger a sample every
window). The new count is the same rule as at the start, `choose_threads` on
the re-measured load; `step()` returns it when it differs from the current one
(the caller sets `torch.set_num_threads`), else None. With `--threads` or
`OMP_NUM_THREADS` the user chose: the load never decides, nothing is sampled.

A loop wraps its step function once (`watch_load`: a CPU run only; on a GPU
the host threads do not bound the step):

    take_step = watch_load(take_step, device_type, processes_on_host=on_host, explicit=config.threads)
"""

from __future__ import annotations

import functools
import logging
import os
import statistics
import time
from collections import deque
from typing import Callable, TypeVar

from clasp.hardware.threads import choose_threads, needs_load_sample

EVERY = 500  # steps between re-checks at the latest
WINDOW = 20  # steps whose median is compared with the reference
SLOWDOWN = 1.5  # median step time / reference that triggers an early re-check
SKIP = 3  # first steps not timed (compilation, allocator warm-up, the first batches' loading)

Step = TypeVar("Step")


class LoadRecheck:
    """Feed it each step's seconds; it returns a new torch thread count when a re-measured load asks for one."""

    def __init__(self, threads: int, cores: int, measure: Callable[[], float | None], processes_on_host: int = 1,
                 every: int = EVERY, window: int = WINDOW, slowdown: float = SLOWDOWN, skip: int = SKIP,
                 enabled: bool = True) -> None:
        if every < 1 or window < 1 or slowdown <= 1.0 or skip < 0:
            raise ValueError(f"LoadRecheck needs every >= 1, window >= 1, slowdown > 1, skip >= 0; got "
                             f"{every}, {window}, {slowdown}, {skip}")
        self.threads, self.cores, self.measure, self.processes = threads, cores, measure, processes_on_host
        self.every, self.window, self.slowdown, self.skip, self.enabled = every, window, slowdown, skip, enabled
        self.steps = 0  # steps seen
        self.since_check = 0  # steps timed since the last re-check (or the start)
        self.recent: deque[float] = deque(maxlen=window)
        self.reference: float | None = None
        self.checks = 0  # re-measurements made

    @classmethod
    def for_process(cls, threads: int, processes_on_host: int = 1, explicit: int | None = None,
                    **options) -> "LoadRecheck":
        """A re-check of this process's load (`busy_cores`), disabled where --threads or OMP_NUM_THREADS decide."""
        from clasp.hardware.cores import available_cores
        from clasp.hardware.load import busy_cores

        enabled = needs_load_sample(explicit, os.environ.get("OMP_NUM_THREADS"))
        return cls(threads, available_cores(), busy_cores, processes_on_host, enabled=enabled, **options)

    def step(self, seconds: float) -> int | None:
        """Record one step; the new thread count when a re-check changes it, else None."""
        self.steps += 1
        if not self.enabled or self.steps <= self.skip:
            return None
        self.recent.append(seconds)
        self.since_check += 1
        if self.reference is None:
            if len(self.recent) == self.window:
                self.reference = statistics.median(self.recent)
            return None
        if self.since_check >= self.every or self._slower():
            return self.recheck()
        return None

    def _slower(self) -> bool:
        return (self.since_check >= self.window and len(self.recent) == self.window
                and statistics.median(self.recent) > self.slowdown * self.reference)

    def recheck(self) -> int | None:
        """Measure the load now; the new thread count if it differs from the current one, else None."""
        self.checks += 1
        busy = self.measure()
        choice = choose_threads(self.cores, self.processes, busy)
        self.since_check = 0
        self.recent.clear()
        self.reference = None  # the next `window` steps set the new reference
        if choice.threads == self.threads:
            return None
        logging.getLogger("clasp").warning(f"load re-checked after step {self.steps}: {choice.line()}, "
                                           f"was {self.threads}")
        self.threads = choice.threads
        return choice.threads


def watch_load(take_step: Callable[[], Step], device_type: str, processes_on_host: int = 1,
               explicit: int | None = None, **options) -> Callable[[], Step]:
    """`take_step` timed and followed by a `LoadRecheck` that sets torch's threads when it returns a count.

    Returned unchanged on a device other than the CPU, or where --threads or OMP_NUM_THREADS decide.
    """
    import torch

    if device_type != "cpu":
        return take_step
    recheck = LoadRecheck.for_process(torch.get_num_threads(), processes_on_host, explicit, **options)
    if not recheck.enabled:
        return take_step

    @functools.wraps(take_step)
    def step() -> Step:
        started = time.perf_counter()
        done = take_step()
        threads = recheck.step(time.perf_counter() - started)
        if threads is not None:
            torch.set_num_threads(threads)
        return done

    step.recheck = recheck  # type: ignore[attr-defined]
    return step
