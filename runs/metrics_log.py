"""metrics.jsonl, the one line-per-step log every training command writes in its run folder.

Rows are JSON objects keyed by `step`, written by the main process only (the others hold a log that writes
nothing) and also sent to the run's experiment trackers (`clasp.runs.trackers`). On resume, lines after the
checkpoint's step (logged by a run that died after its last save) are dropped first (`truncate_jsonl`), so
a resumed run's log reads as one uninterrupted run's; the first row a resumed run writes carries
`resumed_after` (RESUMED_AFTER): the last step logged before the resume, for the loss charts to mark.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TextIO

from clasp.runs.trackers import Trackers

METRICS_FILE = "metrics.jsonl"
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
    row it writes also goes to the run's experiment trackers, when it has any. A run that cannot resume
    (`fresh`) starts the file anew."""

    def __init__(self, out: Path, is_main: bool, trackers: Trackers | None = None, fresh: bool = False) -> None:
        self._trackers = trackers or Trackers()
        if fresh and is_main:
            (out / METRICS_FILE).unlink(missing_ok=True)
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
