"""What every command that writes a folder of its own shares: for now, the one-writer lock.

`clasp label` (a shard folder), `clasp pretrain` and `clasp finetune` (run
folders) take the same lock, so two commands never write one folder at once.
This package imports nothing of ours.
"""

from clasp.runs.folder_lock import LEGACY_LOCK_NAMES, LOCK_NAME, FolderLockError, exclusive_folder, exclusive_run_folder

__all__ = ["LEGACY_LOCK_NAMES", "LOCK_NAME", "FolderLockError", "exclusive_folder", "exclusive_run_folder"]
