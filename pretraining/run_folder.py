"""The run folder (`--out`, drawn in layout.py): what belongs to a run, and whether a new run may use it.

A folder that holds another run is only reused with `resume` (continue it,
after checking the settings are compatible) or `force` (delete the run's files
listed above and start over; other files are left alone).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clasp.pretraining.checkpoint import find_checkpoint
from clasp.pretraining.config import PretrainConfig, describe_differences, incompatible_differences, load_saved
from clasp.pretraining.layout import CHECKPOINTS_DIR, ERROR_LOG, METRICS_FILE, ROWS_LOG, RUN_CONFIG
from clasp.runs import LOCK_NAME
from clasp.runs.error_log import write_error_log  # noqa: F401 - the run's one error.log writer
from clasp.runs.trackers import TRACKERS_DIR


class RunFolderError(Exception):
    """The run folder cannot be used as asked; the message is one line naming it."""


def _is_run_file(name: str) -> bool:
    return (name in (RUN_CONFIG, METRICS_FILE, CHECKPOINTS_DIR, ERROR_LOG, TRACKERS_DIR)
            or (name.startswith("rows-rank") and name.endswith(".jsonl")))


@dataclass
class RunPlan:
    """What the start of a run will do with its folder."""

    out: Path
    resume_from: Path | None  # checkpoint folder to continue from
    wipe: bool  # delete the previous run's files first (force)


def plan_run_folder(config: PretrainConfig, derived: dict[str, Any]) -> RunPlan:
    """Decide, without writing anything, how to use `config.out`; raise RunFolderError if it may not be used."""
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"{out}: exists and is not a folder")
    names = [p.name for p in out.iterdir() if p.name not in (ERROR_LOG, LOCK_NAME)] if out.exists() else []
    if config.resume:
        return _resume_plan(config, derived, out)
    if not names:
        return RunPlan(out, None, False)
    if config.force:
        return RunPlan(out, None, any(_is_run_file(n) for n in names))
    if any(_is_run_file(n) for n in names):
        raise RunFolderError(f"{out}: holds another run ({', '.join(sorted(n for n in names if _is_run_file(n)))}); "
                             "pass --resume to continue it or --force to start over")
    raise RunFolderError(f"{out}: is not empty and not a clasp run ({', '.join(sorted(names)[:3])}…); "
                         "choose an empty folder or pass --force")


def _resume_plan(config: PretrainConfig, derived: dict[str, Any], out: Path) -> RunPlan:
    """Continue the newest checkpoint (or a run stopped before its first one) if the settings allow it."""
    checkpoint = find_checkpoint(out) if out.exists() else None
    saved_config = (checkpoint / RUN_CONFIG) if checkpoint else out / RUN_CONFIG
    if not saved_config.is_file():
        raise RunFolderError(f"{out}: holds no clasp run to resume (no {RUN_CONFIG}); "
                             "drop --resume to start a run there")
    saved, saved_derived = load_saved(saved_config)
    diffs = incompatible_differences(saved, saved_derived, config, derived)
    if diffs:
        raise RunFolderError(describe_differences(diffs, saved_config))
    return RunPlan(out, checkpoint, False)


def wipe_run_files(out: Path) -> None:
    """Delete what a previous run wrote (force); leave everything else."""
    for child in out.iterdir():
        if _is_run_file(child.name):
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()
