"""The settings of `clasp export`, declared once: the command's options are derived from them.

Free of torch, so that `clasp --help` reads them without importing the model
(export.py does the work).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from clasp.pretraining.tasks import TASKS
from clasp.settings import setting

FORMATS = ("safetensors", "onnx")


@dataclass
class ExportConfig:
    run: Path  # run folder of `clasp pretrain` (the command's argument)
    out: Path = setting(None, "Export folder: model.safetensors, config.json and README.md (or model.onnx).",
                        required=True, metavar="DIR")
    task: str = setting("instance", "Task prompt the exported backbone is fixed to.", choices=TASKS)
    checkpoint: int | None = setting(None, "Step of the checkpoint to export.", shown="the newest",
                                     limits=(0, math.inf), metavar="STEP")
    student: bool = setting(False, "Export the student backbone instead of the EMA teacher.")
    format: str = setting("safetensors", "safetensors: weights, config.json and a model card (README.md); onnx: "
                          "one graph with a dynamic batch axis (pip install 'clasp[onnx]').", choices=FORMATS)
    eval_results: Path | None = setting(None, "results.json of `clasp eval` on this backbone: its scores go into "
                                        "the model card (safetensors only).", metavar="FILE")
