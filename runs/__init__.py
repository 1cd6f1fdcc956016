"""What every training command shares; each command supplies only its model, its batches and its step.

One module per concern, each the only place that concern is implemented:

- `layout.py`: the names of a run folder's common files and of a checkpoint's files, drawn once.
- `run_folder.py`: the plan (fresh, `--resume`, `--force`; which names are run files, with each command's
  own as `RunFiles`; the one-line refusals) and taking the folder (mkdir, wipe, clear error.log,
  config.json written atomically, metrics.jsonl truncated after the resumed step).
- `saved_config.py`: config.json's saved form (settings + derived values), reading it back, and the resume
  rule (`ResumeRule`: which differences forbid `--resume`) with its one-line refusal.
- `checkpoint.py`: checkpoints without pickle, written as `.tmp` and renamed when complete, read strictly
  (shapes, trainer.json, RNG), the full RNG state restored.
- `stop_signals.py`: the watcher thread; the first SIGTERM/SIGINT stops after the step, the second exits at
  once with 128 + its number, its line in error.log.
- `accelerator.py`: the Accelerator from the resolved precision.
- `schedules.py`: DINO's warm-up + cosine, and warm-up + step decay, one value per global step.
- `step_stats.py`: the per-step all-reduce carrying the stop flag, and the non-finite check
  (`NonFiniteLossError`).
- `step_loop.py`: the loop skeleton (log when due, save when due, stop on the flag or `stop_at`).
- `folder_lock.py`: one writer per folder (`clasp label` takes it for a shard folder too).
- `error_log.py`, `metrics_log.py`, `trackers.py`: OUT/error.log, OUT/metrics.jsonl and the experiment
  trackers of `--report-to`.

Who uses what: `clasp pretrain` and `clasp finetune` all of it; `clasp train-clip` the folder lock,
error.log, metrics.jsonl and trackers, the schedules and the stop signals (it has no checkpoints and no
resume); `clasp label` the folder lock and error.log. This package imports nothing of ours but
`clasp.errors`, `clasp.common` (atomic writes), `clasp.settings` (the shared training settings of `settings.py`, the tracker settings) and
`clasp.hardware` (the precision).
"""

from clasp.runs.folder_lock import LEGACY_LOCK_NAMES, LOCK_NAME, FolderLockError, exclusive_folder, exclusive_run_folder

__all__ = ["LEGACY_LOCK_NAMES", "LOCK_NAME", "FolderLockError", "exclusive_folder", "exclusive_run_folder"]
