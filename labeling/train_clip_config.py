"""Every setting of `clasp train-clip`, declared once.

The command-line options and the table of docs/commands/train-clip.md are derived from `TrainClipConfig`
(the settings that only a program or a test changes are declared too, with
`flag=False`). This module imports no torch, so the command line can read it at once.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from clasp.labeling.config import check_settings
from clasp.labeling.errors import LabelingError
from clasp.runs.settings import RunSettings
from clasp.runs.trackers import TrackerSettings, report_to_problem
from clasp.settings import same_as, setting
from clasp.settings.parsers import size_hw

TILE_SCALES = ("native", "row")


@dataclass
class TrainClipConfig:
    corpus: Path = setting(None, "Folder of images plus captions.jsonl ({\"path\": ..., \"caption\": ...} a line), "
                           "e.g. from `clasp synth-corpus`.", required=True)
    out: Path = setting(None, "Folder for the trained CLIP (save_pretrained) and train_report.json.", required=True)
    arch: str = setting("tiny", "CLIP architecture preset from labeling/tiny_clip.py PRESETS (tiny, ViT-B/16, ...).")
    steps: int = setting(600, "Optimizer steps (about 0.3 s each for the tiny CLIP on two idle cores).",
                         limits=(1, 10_000_000))
    input_hw: tuple[int, int] = setting((224, 112), "Training input HxW; label with the same --clip-size.",
                                        flag_name="input-size", metavar="HxW", parse=size_hw)
    seed: int = same_as(RunSettings, "seed", note="The same seed gives the same files.")
    full_batch: int = setting(32, "Full views per step (image-level InfoNCE).", limits=(1, 65_536), flag=False)
    mosaic_batch: int = setting(16, "Mosaics per step (patch-level loss).", limits=(0, 65_536), flag=False)
    lr: float = setting(1e-3, "Peak learning rate (3e-3 and 5e-3 left the labels at chance).", limits=(0, 1),
                        open_low=True, flag=False)
    weight_decay: float = setting(0.05, "AdamW weight decay of the matrices.", limits=(0, 1), flag=False)
    warmup: float = setting(0.06, "Share of the steps spent warming the learning rate up.", limits=(0, 1),
                            flag=False)
    dense_weight: float = setting(1.0, "Weight of the patch loss on mosaics.", limits=(0, 1000), flag=False)
    dense_within_mosaic: bool = setting(False, "A patch chooses among its own mosaic's captions (on) or among "
                                        "every caption of the step (off).", flag=False)
    tiles_from_crops: bool = setting(True, "Mosaic tiles only from pictures smaller than the input (close-ups, "
                                     "crops).", flag=False)
    tile_scale: str = setting("native", "native: tiles keep the corpus scale; row: stretched to fill their row.",
                              choices=TILE_SCALES, flag=False)
    max_text_tokens: int = setting(48, "Caption tokens kept (longer captions are cut).", limits=(2, 77), flag=False)
    checkpoint_every: int = setting(0, "Also save the model to OUT/step-NNNNNN every this many steps (0: never).",
                                    limits=(0, 10_000_000), flag=False)
    report_to: str = same_as(TrackerSettings, "report_to")
    run_name: str = same_as(TrackerSettings, "run_name")
    vocab: Any = None  # a clasp.store.Vocabulary whose prompts the tokenizer must know; None: the default one
    progress: bool = True

    def check(self) -> None:
        """The one check of every declared value (choices, bounds) and that the trackers asked for are
        installed; a LabelingError names the first problem."""
        check_settings(self)
        problem = report_to_problem(self.report_to)
        if problem:
            raise LabelingError(problem)

    def record(self) -> dict[str, Any]:
        """The settings as train_report.json and the trackers record them: paths as text, no vocabulary object."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()
                if k not in ("vocab", "progress")}
