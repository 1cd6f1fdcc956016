"""The settings every training command shares, declared once: precision, loader workers, threads, compiling,
seed, cadence, resume.

`clasp pretrain` and `clasp finetune TASK` inherit all of them (their configs
derive from `RunSettings` and `TrackerSettings`; `settings_of` lists a command's
own settings first); `clasp train-clip`, `clasp label` and `clasp eval` take the
few they have with `same_as(RunSettings, name)`. So a setting's name, type,
help, bounds and resume rule are written here only. What a command must say
otherwise it says by redeclaring the setting with `same_as` and nothing else:
its own default (`default=`), a sentence of its own (`note=`), or a resume rule
(finetune's loader reads each image by index, so its worker count may change on
resume; pre-training's data order depends on it, so it may not). The experiment trackers' `report_to` and `run_name` are declared the same
way in `runs/trackers.py` (`TrackerSettings`).

Invariant: a setting named here is declared nowhere else; `tests/test_settings_shared.py`
fails when a config of a training command declares one of these names by itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from clasp.hardware.compile import COMPILE_CHOICES
from clasp.hardware.cores import beyond_cores
from clasp.hardware.precision import DEFAULT_PRECISION, PRECISION_HELP, PRECISIONS
from clasp.hardware.threads import THREADS_HELP, THREADS_LIMITS, THREADS_SHOWN
from clasp.settings import setting

STEPS = (1, 10_000_000)  # bounds of any count of optimizer steps
SEEDS = (0, 2**32 - 1)  # numpy's and torch's seed range


@dataclass
class RunSettings:
    """The shared settings of a training run: inherited by the configs of pretrain and finetune, taken one by
    one with `same_as(RunSettings, name)` elsewhere."""

    precision: str = setting(DEFAULT_PRECISION, PRECISION_HELP, choices=PRECISIONS, resumable=True)
    num_workers: int | None = setting(
        None, "DataLoader worker processes per training process; from the cores: 1 per 8 cores on a CPU, cores - 1 "
        "(at most 8) on a GPU, counting only the cores this process may use.",
        shown="from the cores", limits=(0, math.inf))
    threads: int | None = setting(None, THREADS_HELP, shown=THREADS_SHOWN, limits=THREADS_LIMITS, resumable=True)
    compile: str = setting("auto", "torch.compile the model: on, off, or auto (on only where it was measured to "
                           "pay, docs/hardware.md: nowhere at present). Where compiling fails: eager, with one "
                           "warning line.", choices=COMPILE_CHOICES, resumable=True)
    seed: int = setting(0, "Seed of the model init, data order and augmentation.", limits=SEEDS)
    save_every: int = setting(1000, "Optimizer steps between checkpoints (there is always one at the end).",
                              limits=STEPS, resumable=True)
    keep_checkpoints: int = setting(3, "Newest checkpoints kept in OUT/checkpoints.", limits=(1, 1000),
                                    resumable=True)
    log_every: int = setting(10, "Optimizer steps between lines of OUT/metrics.jsonl.", limits=STEPS,
                             resumable=True)
    stop_at: int | None = setting(None, "Stop cleanly after this step with a checkpoint (schedule unchanged); "
                                  "--resume continues.", limits=STEPS, resumable=True, inherited=False)
    resume: bool = setting(False, "Continue the run in --out from its newest checkpoint, with its saved settings.",
                           resumable=True, inherited=False)
    force: bool = setting(False, "Start over in an --out that holds another run (deletes that run's files).",
                          resumable=True, inherited=False)


def workers_problem(num_workers: int | None) -> str | None:
    """Why `num_workers` cannot run on this machine (more than `clasp.hardware`'s per-core rule allows),
    one phrase naming it; None: it can."""
    problem = beyond_cores(num_workers)
    return None if problem is None else f"num_workers {num_workers} {problem}"
