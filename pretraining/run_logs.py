"""The two line-per-step logs of a run folder: metrics.jsonl, and (for tests) the rows each process read.

Both are JSON lines keyed by `step`; on resume, lines after the checkpoint's
step (logged by a run that died after its last save) are dropped first, so a
resumed run's log reads as one uninterrupted run's. `truncate_jsonl` is that
rule; a fine-tuning run's metrics.jsonl follows it too. The first row a
resumed pre-training writes carries `resumed_after` (RESUMED_AFTER): the last
step logged before the resume, for the loss charts to mark.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, TextIO

import torch

from clasp.pretraining.layout import METRICS_FILE, ROWS_LOG
from clasp.runs.trackers import Trackers

RESUMED_AFTER = "resumed_after"


def truncate_jsonl(path: Path, after_step: int) -> None:
    """Drop lines logged after `after_step` by a run that died after its last checkpoint."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if int(json.loads(line)["step"]) <= after_step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line cut by a kill
    path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")


def last_step(path: Path) -> int | None:
    """The step of the last whole line of a JSON-lines log; None without one."""
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue
    return None


class MetricsLog:
    """OUT/metrics.jsonl, written by the main process only (the others hold a log that writes nothing); each
    row it writes also goes to the run's experiment trackers (`clasp.runs.trackers`), when it has any."""

    def __init__(self, out: Path, is_main: bool, trackers: Trackers | None = None) -> None:
        self._trackers = trackers or Trackers()
        # rows already there: a resumed run appends to the log truncate_jsonl trimmed to its checkpoint
        self._resumed_after = last_step(out / METRICS_FILE) if is_main else None
        self._file: TextIO | None = open(out / METRICS_FILE, "a", encoding="utf-8") if is_main else None

    def write(self, row: dict[str, Any]) -> None:
        if self._file is not None:
            if self._resumed_after is not None:
                row, self._resumed_after = {**row, RESUMED_AFTER: self._resumed_after}, None
            self._file.write(json.dumps(row) + "\n")
            self._file.flush()
            self._trackers.log_row(row["step"], row)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class RowLog:
    """OUT/rows-rankR.jsonl: the row ids process R read at each step, and a digest of its final weights.

    A debugging and test aid (`log_rows`): with it a test checks that the
    processes read disjoint rows and end with the same weights. Unless asked
    for, every method does nothing.
    """

    def __init__(self, out: Path, rank: int, start_step: int, enabled: bool) -> None:
        self.path = out / ROWS_LOG.format(rank=rank)
        self.enabled = enabled
        self._file: TextIO | None = None
        if enabled:
            truncate_jsonl(self.path, start_step)
            self._file = open(self.path, "a", encoding="utf-8")

    def batch(self, step: int, row_ids: torch.Tensor) -> None:
        """Record the rows of one micro-batch of optimizer step `step` (1-based)."""
        if self._file is not None:
            self._file.write(json.dumps({"step": step, "rows": row_ids.tolist()}) + "\n")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def final_state(self, step: int, module: torch.nn.Module) -> None:
        """Append the digest of `module`'s weights after the last step (the log may already be closed)."""
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": step, "state_sha256": state_digest(module)}) + "\n")


def state_digest(module: torch.nn.Module) -> str:
    """sha256 of every tensor of the module's state, in key order."""
    digest = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
