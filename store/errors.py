"""Errors raised by the label store.

Every error names the file it is about, so a user with thousands of shards can
find the bad one without a debugger.
"""

from __future__ import annotations

from pathlib import Path


class StoreError(Exception):
    """A shard folder, manifest or shard that a reader must not accept."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
