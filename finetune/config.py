"""Every setting of `clasp finetune reid|attributes|parsing|pose`, with its default, in one place.

Layers, later winning, as `clasp pretrain` has them: the defaults below, (with
`resume`) the settings saved in `OUT/config.json`, a `--config FILE` (YAML or
JSON, keys = field names; an unknown key is an error naming it and the file),
then the flags. `steps` wins over `epochs`. The resolved settings are saved
beside every checkpoint; `resume` refuses when a setting outside
`RESUMABLE_CHANGES` differs, naming each key with both values.

Learning rate: `lr` is used as given (the recipes' published rates are for
their batch: re-ID 16 identities x 4 images, attributes and parsing 32
images), scaled per layer by `layer_decay ** (depth + 1 - layer)` when
`layer_decay < 1` (the task head and the final norm are at depth + 1).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from clasp.errors import InputError
from clasp.hardware import PRECISIONS
from clasp.pretraining.tasks import TASKS as PROMPTS  # the backbone's task prompts
from clasp.runs.layout import RUN_CONFIG
from clasp.runs.saved_config import ResumeRule, load_saved
from clasp.runs.settings import STEPS, RunSettings, workers_problem
from clasp.runs.trackers import TrackerSettings, report_to_problem
from clasp.settings import check_value, same_as, setting, settings_of
from clasp.settings.layers import build_layered

TASKS = ("reid", "attributes", "parsing", "pose")
LAYOUTS = {"reid": ("market1501", "msmt17"), "attributes": ("pa100k", "peta"), "parsing": ("lip", "cihp"),
           "pose": ("coco",)}
SCHEDULES = ("cosine", "step")


class FinetuneConfigError(InputError, ValueError):
    """A setting or config file that cannot work; one line naming it."""


@dataclass
class FinetuneConfig(RunSettings, TrackerSettings):
    """Every setting of a fine-tuning run; `clasp finetune` offers each as a flag (`RECIPE_ONLY`: which recipe's).

    `limits` bound each number (docs/errors.md): beyond them no run is sane on any machine.
    """

    # --- what and where
    task: str = setting("", "reid | attributes | parsing | pose (set by the subcommand).", flag=False, hidden=True)
    backbone: str = setting("", "Folder written by `clasp export` (required).", resumable=True)
    data: str = setting("", "The benchmark folder, in its own layout (required).", resumable=True)
    out: str = setting("", "Run folder: config.json, metrics.jsonl, checkpoints/, results.json.", resumable=True,
                       inherited=False)
    layout: str = setting("", "Layout of --data (market1501 | msmt17 | pa100k | peta | lip | cihp | coco); none: "
                              "recognised from the folder.")
    prompt: str = setting("", "Task prompt of the backbone; none: the export's.", choices=PROMPTS)
    # --- length: `steps` wins when set, else `epochs` passes over the training split
    steps: int | None = setting(None, "Optimizer steps; wins over --epochs.", limits=STEPS)
    epochs: int | None = setting(60, "Passes over the training split (when --steps is not set).",
                                 limits=(1, 100_000))
    # --- batches (per process)
    batch_size: int = setting(32, "Images per process per step (attributes, parsing, pose).", limits=(1, 65_536))
    ids_per_batch: int = setting(16, "P: identities per batch.", limits=(1, 4096))
    images_per_id: int = setting(4, "K: images of each identity per batch.", limits=(1, 1024))
    # --- optimisation (AdamW; lr schedule precomputed per step)
    lr: float = setting(3.5e-4, "Peak learning rate (AdamW).", limits=(0, 1))
    min_lr: float = setting(1e-6, "Learning rate at the end of the cosine.", limits=(0, 1))
    warmup: float = setting(0.1, "Fraction of the steps with linear warm-up from 0.", limits=(0, 0.999))
    schedule: str = setting("cosine", "After the warm-up: cosine, or steps of x--gamma.", choices=SCHEDULES)
    milestones: str = setting("0.5,0.8", "Step schedule: fractions of the steps, comma-separated.")
    gamma: float = setting(0.1, "Step schedule: factor at each milestone.", limits=(0, 10))
    weight_decay: float = setting(0.05, "AdamW weight decay (weights only: biases, norms, position embedding, "
                                        "CLS token and task prompts are exempt).", limits=(0, 1))
    layer_decay: float = setting(1.0, "Layer-wise lr decay (1: off; BEiT/MAE use 0.65-0.75).", limits=(1e-6, 1))
    clip_grad: float = setting(0.0, "Max gradient norm (0: off).", limits=(0, 1e6))
    freeze_backbone: bool = setting(False, "Train the head only, backbone in eval mode (the frozen-probe baseline).")
    # --- re-ID recipe (BNNeck)
    label_smoothing: float = setting(0.1, "Identity cross-entropy smoothing.", limits=(0, 0.999))
    margin: float = setting(0.3, "Batch-hard triplet margin.", limits=(0, 100))
    w_triplet: float = setting(1.0, "Weight of the triplet loss.", limits=(0, 1000))
    rerank: bool = setting(False, "Also report k-reciprocal re-ranking (map_rerank, rank1_rerank).", resumable=True)
    k1: int = setting(20, "Re-ranking k1.", limits=(1, 10_000), resumable=True)
    k2: int = setting(6, "Re-ranking k2.", limits=(1, 10_000), resumable=True)
    rerank_lambda: float = setting(0.3, "Re-ranking: weight of the original distance.", limits=(0, 1),
                                   resumable=True)
    # --- attribute recipe
    attributes: str = setting("", "Comma-separated attribute names to train and score; none: the data set's "
                                  "evaluated set.")
    partition: int = setting(0, "PETA.mat: which of its random partitions.", limits=(0, math.inf))
    # --- parsing recipe
    head_dim: int = setting(128, "Channels of the segmentation head's convolutions.", limits=(1, 8192))
    # --- pose recipe
    detections: str = setting("", "Person boxes of val2017 in COCO's results format (a detector's JSON) to "
                                  "score instead of the ground-truth boxes.", resumable=True)
    # --- run
    # each image is read by its index, whatever the worker count: it may change on resume
    num_workers: int | None = same_as(RunSettings, "num_workers", resumable=True)
    eval_batch_size: int = setting(64, "Images per forward pass when evaluating.", limits=(1, 65_536),
                                   resumable=True)
    # the other run settings (precision, threads, seed, cadence, resume) are RunSettings' and TrackerSettings',
    # inherited; a fine-tuning run is short: it saves more often and keeps fewer checkpoints
    save_every: int = same_as(RunSettings, "save_every", default=500)
    keep_checkpoints: int = same_as(RunSettings, "keep_checkpoints", default=2)

    def validate(self) -> "FinetuneConfig":
        for name in ("task", "backbone", "data", "out"):
            if not getattr(self, name):
                raise FinetuneConfigError(f"`{name}` is required" + ("" if name == "task" else f" (--{name} DIR)"))
        if self.task not in TASKS:
            raise FinetuneConfigError(f"task must be one of {'|'.join(TASKS)}, got {self.task!r}")
        if self.layout and self.layout not in LAYOUTS[self.task]:
            raise FinetuneConfigError(f"layout for {self.task} must be one of {'|'.join(LAYOUTS[self.task])}, "
                                      f"got {self.layout!r}")
        if self.precision not in PRECISIONS:
            raise FinetuneConfigError(f"precision must be one of {'|'.join(PRECISIONS)}, got {self.precision!r}")
        if self.schedule not in SCHEDULES:
            raise FinetuneConfigError(f"schedule must be one of {'|'.join(SCHEDULES)}, got {self.schedule!r}")
        if self.steps is None and self.epochs is None:
            raise FinetuneConfigError("set `steps` or `epochs`")
        if self.steps is not None:
            self.epochs = None
        self.milestone_fractions()
        self.check_bounds()
        problem = report_to_problem(self.report_to)  # a missing tracker package: refused before any work
        if problem:
            raise FinetuneConfigError(problem)
        return self

    def check_bounds(self) -> None:
        """Numbers finite and within their declared limits (the rule of `clasp.settings.check_value`, as for
        `clasp pretrain`); `num_workers` within `clasp.hardware`'s per-core rule."""
        for name, info in SETTINGS.items():
            problem = check_value(info, getattr(self, name)) if info.limits is not None else None
            if problem:
                raise FinetuneConfigError(problem)
        problem = workers_problem(self.num_workers)
        if problem:
            raise FinetuneConfigError(problem)

    def milestone_fractions(self) -> list[float]:
        try:
            values = [float(x) for x in self.milestones.split(",") if x.strip()]
        except ValueError:
            values = [-1.0]
        if any(not 0 < v < 1 for v in values):
            raise FinetuneConfigError(f"milestones must be fractions in (0, 1) separated by commas, got {self.milestones!r}")
        return sorted(values)

    def attribute_names(self) -> list[str] | None:
        return [a.strip() for a in self.attributes.split(",") if a.strip()] or None


SETTINGS = {info.name: info for info in settings_of(FinetuneConfig)}
KEYS = tuple(SETTINGS)
DEFAULTS = FinetuneConfig()
# May change between a checkpoint and `resume`: where things are, saving/logging, stopping, precision, evaluation.
RESUMABLE_CHANGES = frozenset(k for k, i in SETTINGS.items() if i.resumable)
NOT_INHERITED_ON_RESUME = frozenset(k for k, i in SETTINGS.items() if not i.inherited)
# What `--resume` compares (clasp.runs.saved_config): every setting outside RESUMABLE_CHANGES.
RESUME_RULE = ResumeRule(KEYS, RESUMABLE_CHANGES, asdict(DEFAULTS))
# Settings that one recipe alone reads: `clasp finetune TASK` offers the shared settings and its own.
RECIPE_ONLY = {"reid": ("ids_per_batch", "images_per_id", "label_smoothing", "margin", "w_triplet", "rerank", "k1",
                        "k2", "rerank_lambda"),
               "attributes": ("attributes", "partition"), "parsing": ("head_dim",), "pose": ("detections",)}


def recipe_settings(task: str) -> tuple[str, ...]:
    """The command-line settings of `clasp finetune TASK`, in declaration order."""
    others = {name for other, names in RECIPE_ONLY.items() if other != task for name in names}
    return tuple(k for k, i in SETTINGS.items() if i.flag and k not in others)


def build_config(config_file: str | Path | None = None, **overrides: Any) -> FinetuneConfig:
    """Defaults <- [saved run settings with resume] <- config file <- overrides (None = not given); validated."""
    return build_layered(FinetuneConfig, config_file, overrides, FinetuneConfigError, RUN_CONFIG,
                         lambda path: load_saved(path, FinetuneConfigError), key_of=_refused_key)


def _refused_key(exc: Exception) -> str:
    """The setting a refusal names: its messages start with it (`lr must be ...`)."""
    return str(exc).split(" ", 1)[0].strip("`")
