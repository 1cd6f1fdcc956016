"""Errors raised by the label store.

Every error names the file it is about, so a user with thousands of shards can
find the bad one without a debugger.
"""

from __future__ import annotations

from pathlib import Path

from clasp.errors import InputError


class StoreError(InputError):
    """A shard folder, manifest or shard that a reader must not accept."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class NotAStoreError(StoreError):
    """The path is not a shard folder at all (missing, not a folder, no manifest).

    Kept apart from damage to an existing store: commands treat it as a usage
    error (exit 2) while a damaged store is what `clasp verify` reports (exit 1).
    """
