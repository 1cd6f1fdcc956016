"""The run log of `clasp train-clip`: OUT/metrics.jsonl, a row per step, and the experiment trackers.

A row: `step` (steps done, from 1), `loss`, `lr`, `logit_scale` (CLIP's learnt inverse temperature,
exp of the parameter) and `pairs_per_s` (pairs shown per second since the first step). The held-out
retrieval goes to the trackers at the last step as `heldout/NAME` (train_report.json holds it too).
train-clip has no resume: a run starts metrics.jsonl and OUT/trackers anew, and removes the error.log of
a previous start (`clasp.runs.error_log`). Only `train_clip` opens a log, once the inputs are known to be
good; `train` alone writes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clasp.labeling.train_clip_config import TrainClipConfig
from clasp.runs.error_log import clear_error_log
from clasp.runs.metrics_log import MetricsLog
from clasp.runs.trackers import Trackers, accelerator_options, chosen, start_trackers

PROJECT = "clasp-train-clip"


class TrainClipLog:
    """metrics.jsonl in `config.out`, each row also logged to the trackers of `config.report_to`."""

    def __init__(self, config: TrainClipConfig) -> None:
        out = Path(config.out)
        out.mkdir(parents=True, exist_ok=True)
        clear_error_log(out)
        self.trackers = open_trackers(config)
        self._log = MetricsLog(out, is_main=True, trackers=self.trackers, fresh=True)
        self.steps_done = 0

    def write(self, row: dict[str, Any]) -> None:
        self._log.write(row)
        self.steps_done = row["step"]

    def close(self) -> None:
        self._log.close()
        self.trackers.finish()


def open_trackers(config: TrainClipConfig) -> Trackers:
    """The trackers of a run, through an Accelerator that serves only them (training runs on its own)."""
    if not chosen(config.report_to):
        return Trackers()
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True, **accelerator_options(config.report_to, config.out))
    return start_trackers(accelerator, PROJECT, config.run_name, config.out, {"config": config.record()}, None)
