"""The run folder (`--out`, drawn in layout.py): whether a new run may use it, and taking it.

A start first plans (`plan_run_folder`, which writes nothing), then, after every input check, takes the
folder (`take_run_folder`). The plan, for a folder holding anything but error.log and the lock:

- fresh (neither flag): refused with one line, naming the run files found ("holds another run (...); pass
  --resume to continue it or --force to start over") or, when none is a run file, "is not empty and not a
  clasp run";
- `resume`: continue the newest complete checkpoint (or a run stopped before its first), when the command's
  `ResumeRule` finds no difference with the saved config.json; "holds no clasp run to resume" without one;
- `force`: delete the run files (`RunFiles`: the common ones and the command's own), leave the rest.

Invariants: a refused start has written nothing but error.log; taking the folder happens once every
process agreed (a barrier before), and only the main process writes: mkdir, wipe, clear error.log,
config.json atomically (`--resume` reads it), then metrics.jsonl truncated after the resumed step.
"""

from __future__ import annotations

import fnmatch
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from clasp.common.durable import write_json_atomic
from clasp.errors import InputError
from clasp.runs.checkpoint import find_checkpoint
from clasp.runs.error_log import clear_error_log
from clasp.runs.layout import COMMON_RUN_FILES, ERROR_LOG, LOCK_NAME, METRICS_FILE, RUN_CONFIG
from clasp.runs.metrics_log import truncate_jsonl
from clasp.runs.saved_config import ResumeRule, describe_differences, load_saved


class RunFolderError(InputError):
    """The run folder cannot be used as asked; the message is one line naming it."""


@dataclass(frozen=True)
class RunFiles:
    """The names `--force` deletes: every run's (layout.COMMON_RUN_FILES) and the command's own (fnmatch patterns)."""

    own: tuple[str, ...] = ()

    def __contains__(self, name: str) -> bool:
        return name in COMMON_RUN_FILES or any(fnmatch.fnmatchcase(name, pattern) for pattern in self.own)


@dataclass
class RunPlan:
    """What the start of a run will do with its folder."""

    out: Path
    resume_from: Path | None  # checkpoint folder to continue from
    wipe: bool  # delete the previous run's files first (force)
    resume: bool = False  # continuing a run (with or without a checkpoint)


def plan_run_folder(out: str | Path, resume: bool, force: bool, files: RunFiles, rule: ResumeRule,
                    settings: Mapping[str, Any], derived: Mapping[str, Any]) -> RunPlan:
    """Decide, without writing anything, how to use `out`; RunFolderError if it may not be used."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"{out}: exists and is not a folder")
    if resume:
        return _resume_plan(out, rule, settings, derived)
    names = sorted(p.name for p in out.iterdir() if p.name not in (ERROR_LOG, LOCK_NAME)) if out.exists() else []
    ours = [n for n in names if n in files]
    if not names:
        return RunPlan(out, None, False)
    if force:
        return RunPlan(out, None, bool(ours))
    if ours:
        raise RunFolderError(f"{out}: holds another run ({', '.join(ours)}); "
                             "pass --resume to continue it or --force to start over")
    raise RunFolderError(f"{out}: is not empty and not a clasp run ({', '.join(names[:3])}…); "
                         "choose an empty folder or pass --force")


def _resume_plan(out: Path, rule: ResumeRule, settings: Mapping[str, Any], derived: Mapping[str, Any]) -> RunPlan:
    """Continue the newest checkpoint (or a run stopped before its first one) if the settings allow it."""
    checkpoint = find_checkpoint(out) if out.exists() else None
    saved_config = (checkpoint or out) / RUN_CONFIG
    if not saved_config.is_file():
        raise RunFolderError(f"{out}: holds no clasp run to resume (no {RUN_CONFIG}); "
                             "drop --resume to start a run there")
    saved, saved_derived = load_saved(saved_config, RunFolderError)
    diffs = rule.differences(saved, saved_derived, settings, derived)
    if diffs:
        raise RunFolderError(describe_differences(diffs, saved_config))
    return RunPlan(out, checkpoint, False, resume=True)


def wipe_run_files(out: Path, files: RunFiles) -> None:
    """Delete what a previous run wrote (force); leave everything else."""
    for child in out.iterdir():
        if child.name in files:
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()


def take_run_folder(accelerator, plan: RunPlan, files: RunFiles, saved_config: dict[str, Any],
                    start_step: int) -> None:
    """Main process, once every process got here: create (or wipe) the folder, clear error.log, write
    config.json, drop metrics lines after the resumed step."""
    out = plan.out
    accelerator.wait_for_everyone()  # nothing has been written yet; from here on the folder is ours
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        if plan.wipe:
            wipe_run_files(out, files)
        clear_error_log(out)
        write_json_atomic(out / RUN_CONFIG, saved_config)  # --resume reads it: never half-written
        if plan.resume_from is not None:
            truncate_jsonl(out / METRICS_FILE, start_step)
    accelerator.wait_for_everyone()
