"""The rows each process of a pre-training run read (`RowLog`), for tests; it follows metrics.jsonl's
truncate-on-resume rule (`clasp.runs.metrics_log`, the log every training command writes).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TextIO

import torch

from clasp.pretraining.layout import ROWS_LOG
from clasp.runs.metrics_log import truncate_jsonl


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
