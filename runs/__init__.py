"""What every command that writes a folder of its own shares: the one-writer lock, metrics.jsonl, the trackers.

`clasp label` (a shard folder), `clasp pretrain` and `clasp finetune` (run
folders) take the same lock, so two commands never write one folder at once.
`clasp pretrain`, `clasp finetune` and `clasp train-clip` write metrics.jsonl
through one writer (`metrics_log.py`), which also logs each row to the trackers
of `--report-to` (`trackers.py`). This package imports nothing
of ours but `clasp.settings` (where the tracker settings are declared).
"""

from clasp.runs.folder_lock import LEGACY_LOCK_NAMES, LOCK_NAME, FolderLockError, exclusive_folder, exclusive_run_folder

__all__ = ["LEGACY_LOCK_NAMES", "LOCK_NAME", "FolderLockError", "exclusive_folder", "exclusive_run_folder"]
