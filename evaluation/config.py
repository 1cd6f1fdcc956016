"""Every setting of `clasp eval`, `clasp eval-labels` and `clasp truth-labels`, declared once.

The commands' options (and the docs' option tables) are derived from
`EvalConfig`, `LabelQualityConfig` and `TruthStoreConfig`; `run_eval.py`,
`label_quality.py` and `truth_store.py` do the work. This module imports no
torch, numpy or h5py, so the command line can read it at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from clasp.runs.settings import RunSettings
from clasp.settings import same_as, setting
from clasp.settings.parsers import names, size_hw

TASKS = ("attributes", "parsing", "reid", "pose")
TASK_PROMPT_MODES = ("export", "per-probe")
COUNT = (1, math.inf)  # bounds of a count that must be positive


@dataclass
class ProbeSettings:
    """How the linear probes are fitted; only `steps` is a command-line setting (`clasp eval --probe-steps`)."""

    steps: int = setting(300, "L-BFGS iterations (at most) of the linear probes.", limits=COUNT)
    l2: float = 1e-2  # weight penalty (features are standardised, the loss is a mean over rows)
    pixel_batch: int = 64  # images per step when upsampling parsing logits
    # The probes are small matrix products; on a shared CPU the synchronisation of
    # several threads costs more than it saves (measured: 4-8x slower with 2 threads).
    threads: int = 1


@dataclass
class EvalConfig:
    """A `clasp eval` run. `probe` holds every probe setting; its `steps` is `probe_steps` unless `probe` is given
    (then `probe_steps` reads it)."""

    backbone: Path = setting(None, "Folder written by `clasp export`.", required=True)
    data: Path = setting(None, "A `clasp synth` folder (all tasks), a COCO person-keypoints folder (annotations/, "
                         "train2017/, val2017/: pose), or a Market-1501 (query/, bounding_box_test/) or MSMT17 "
                         "(list_query.txt, list_gallery.txt) folder (reid).", required=True)
    tasks: tuple[str, ...] | None = setting(None, f"Comma-separated subset of {','.join(TASKS)}.",
                                            shown="every task the data supports", parse=names)
    out: Path | None = setting(None, "Write the results as JSON here.", shown="no file")
    batch_size: int = setting(64, "Images per forward pass when extracting features.", limits=COUNT)
    probe_steps: int = same_as(ProbeSettings, "steps")
    precision: str = same_as(RunSettings, "precision", note="Of feature extraction; the probes are fitted in "
                             "float32.", resumable=False)
    task_prompt: str = setting("export", "export: every probe reads the export's task prompt; per-probe: attributes "
                               "read the 'attribute' prompt, parsing and pose 'part', re-ID 'instance'.",
                               choices=TASK_PROMPT_MODES)
    detections: Path | None = setting(None, "COCO: person boxes of val2017 in COCO's results format (a detector's "
                                      "JSON) to score instead.", shown="ground-truth boxes")
    pose_train_instances: int = setting(20000, "COCO: training persons the pose probe is fitted on, at most (a "
                                        "fixed-seed sample).", limits=COUNT)
    probe: ProbeSettings | None = None

    def __post_init__(self) -> None:
        if self.probe is None:
            self.probe = ProbeSettings(steps=self.probe_steps)
        else:
            self.probe_steps = self.probe.steps


@dataclass
class LabelQualityConfig:
    """A `clasp eval-labels` run."""

    shards: Path = setting(None, "Shard folder written by `clasp label`.", required=True)
    truth: Path = setting(None, "The `clasp synth` folder the images came from.", required=True)
    out: Path | None = same_as(EvalConfig, "out")


@dataclass
class TruthStoreConfig:
    """A `clasp truth-labels` run; `world` is the command's argument."""

    world: Path
    out: Path = setting(None, "Shard folder to write (new or empty).", required=True)
    noise: float = setting(0.0, "Share of part cells and of attribute values replaced by another value, at random.",
                           limits=(0, 1))
    grid: tuple[int, int] = setting((16, 8), "Label grid HEIGHTxWIDTH (a `clasp label` store of a 224x112 CLIP "
                                    "input has 14x7).", metavar="HxW", parse=size_hw)
    seed: int = setting(0, "Seed of the corruption.")
    shard_size: int = setting(4096, "Rows per shard.", limits=COUNT)
