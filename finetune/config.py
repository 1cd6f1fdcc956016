"""Every setting of `clasp finetune reid|attributes|parsing`, with its default, in one place.

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

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from clasp.hardware import PRECISIONS

TASKS = ("reid", "attributes", "parsing")
LAYOUTS = {"reid": ("market1501", "msmt17"), "attributes": ("pa100k", "peta"), "parsing": ("lip", "cihp")}
SCHEDULES = ("cosine", "step")
CONFIG_NAME = "config.json"


class FinetuneConfigError(ValueError):
    """A setting or config file that cannot work; one line naming it."""


@dataclass
class FinetuneConfig:
    # --- what and where
    task: str = ""  # reid | attributes | parsing (set by the subcommand)
    backbone: str = ""  # folder written by `clasp export` (required)
    data: str = ""  # the benchmark folder in its own layout (required)
    out: str = ""  # run folder (required)
    layout: str = ""  # market1501 | msmt17 | pa100k | peta | lip | cihp; "" = recognised from the folder
    prompt: str = ""  # task prompt of the backbone (instance | part | attribute); "" = the export's
    # --- length: `steps` wins when set, else `epochs` passes over the training split
    steps: int | None = None
    epochs: int | None = 60
    # --- batches (per process)
    batch_size: int = 32  # attributes and parsing: images per step
    ids_per_batch: int = 16  # re-ID: P identities per step ...
    images_per_id: int = 4  # ... times K images of each
    # --- optimisation (AdamW; lr schedule precomputed per step)
    lr: float = 3.5e-4  # peak learning rate
    min_lr: float = 1e-6  # end of the cosine
    warmup: float = 0.1  # fraction of the steps with linear warm-up from 0
    schedule: str = "cosine"  # cosine | step (x gamma at each milestone)
    milestones: str = "0.5,0.8"  # step schedule: fractions of the steps
    gamma: float = 0.1  # step schedule: factor at each milestone
    weight_decay: float = 0.05  # biases, norms, position embedding, CLS token and task prompts exempt
    layer_decay: float = 1.0  # layer-wise lr decay (1 = off; BEiT/MAE use 0.65-0.75)
    clip_grad: float = 0.0  # max gradient norm (0 = off)
    freeze_backbone: bool = False  # train the head only, backbone in eval mode (the frozen-probe baseline)
    # --- re-ID recipe (BNNeck)
    label_smoothing: float = 0.1  # identity cross-entropy smoothing
    margin: float = 0.3  # batch-hard triplet margin
    w_triplet: float = 1.0  # weight of the triplet loss
    rerank: bool = False  # also report k-reciprocal re-ranking (map_rerank, rank1_rerank)
    k1: int = 20  # re-ranking k1
    k2: int = 6  # re-ranking k2
    rerank_lambda: float = 0.3  # weight of the original distance in re-ranking
    # --- attribute recipe
    attributes: str = ""  # comma-separated attribute names to train and score; "" = the data set's evaluated set
    partition: int = 0  # PETA.mat: which of its random partitions
    # --- parsing recipe
    head_dim: int = 128  # channels of the segmentation head's convolutions
    # --- run
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    num_workers: int | None = None  # image-loading workers per process; None: from the cores
    eval_batch_size: int = 64  # images per forward pass in the final evaluation
    save_every: int = 500  # steps between checkpoints (plus one at the end)
    keep_checkpoints: int = 2  # newest checkpoints kept
    log_every: int = 10  # steps between lines of OUT/metrics.jsonl
    stop_at: int | None = None  # stop after this step with a checkpoint; schedule unchanged
    seed: int = 0  # head init, data order, augmentation
    resume: bool = False  # continue from the newest checkpoint in `out`
    force: bool = False  # start over in an `out` that holds another run

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
        for name in ("batch_size", "ids_per_batch", "images_per_id", "eval_batch_size", "save_every",
                     "keep_checkpoints", "log_every", "k1", "k2", "head_dim",
                     "steps" if self.steps is not None else "epochs"):
            if getattr(self, name) < 1:
                raise FinetuneConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("lr", "min_lr", "weight_decay", "clip_grad", "margin", "w_triplet", "gamma", "partition", "seed"):
            if getattr(self, name) < 0:
                raise FinetuneConfigError(f"{name} must not be negative, got {getattr(self, name)}")
        for name, low, high in (("warmup", 0, 0.999), ("layer_decay", 1e-6, 1), ("label_smoothing", 0, 0.999),
                                ("rerank_lambda", 0, 1)):
            if not low <= getattr(self, name) <= high:
                raise FinetuneConfigError(f"{name} must be in [{low}, {high}], got {getattr(self, name)}")
        self.milestone_fractions()
        if self.stop_at is not None and self.stop_at < 1:
            raise FinetuneConfigError(f"stop_at must be at least 1, got {self.stop_at}")
        self.check_bounds()
        return self

    def check_bounds(self) -> None:
        """Numbers finite and within BOUNDS; `num_workers` at most 4 per available core (as `clasp pretrain`)."""
        from clasp.hardware import available_cores

        for name, (low, high) in BOUNDS.items():
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, float) and not math.isfinite(value):
                raise FinetuneConfigError(f"{name} must be a finite number, got {value}")
            if not low <= value <= high:
                raise FinetuneConfigError(f"{name} must be in [{_number(low)}, {_number(high)}], got {_number(value)}")
        cores = available_cores()
        if self.num_workers is not None and self.num_workers > 4 * cores:
            raise FinetuneConfigError(f"num_workers {self.num_workers} is more than 4 per available core "
                                      f"(4 x {cores} = {4 * cores})")

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


# Bounds of the numbers (README "Errors and bad input"): beyond them no run is sane on any machine.
BOUNDS: dict[str, tuple[float, float]] = {
    "steps": (1, 10_000_000), "epochs": (1, 100_000), "batch_size": (1, 65_536), "ids_per_batch": (1, 4096),
    "images_per_id": (1, 1024), "eval_batch_size": (1, 65_536), "head_dim": (1, 8192), "k1": (1, 10_000),
    "k2": (1, 10_000), "save_every": (1, 10_000_000), "log_every": (1, 10_000_000), "keep_checkpoints": (1, 1000),
    "stop_at": (1, 10_000_000), "seed": (0, 2**32 - 1), "num_workers": (0, 1_000_000),
    "lr": (0, 1), "min_lr": (0, 1), "weight_decay": (0, 1), "clip_grad": (0, 1e6), "margin": (0, 100),
    "w_triplet": (0, 1000), "gamma": (0, 10), "warmup": (0, 0.999), "layer_decay": (1e-6, 1),
    "label_smoothing": (0, 0.999), "rerank_lambda": (0, 1),
}

def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else f"{value:g}"


KEYS = tuple(f.name for f in fields(FinetuneConfig))
DEFAULTS = FinetuneConfig()
OPTIONAL_INTS = frozenset({"steps", "epochs", "stop_at", "num_workers"})
# May change between a checkpoint and `resume`: where things are, saving/logging, stopping, precision, evaluation.
RESUMABLE_CHANGES = frozenset({"backbone", "data", "out", "resume", "force", "stop_at", "save_every", "log_every",
                               "keep_checkpoints", "precision", "num_workers", "eval_batch_size", "rerank", "k1", "k2",
                               "rerank_lambda"})
NOT_INHERITED_ON_RESUME = frozenset({"out", "resume", "force", "stop_at"})


def _coerce(key: str, value: Any, source: str) -> Any:
    kind = type(getattr(DEFAULTS, key))
    if value is None:
        if key in OPTIONAL_INTS:
            return None
        raise FinetuneConfigError(f"{source}: setting {key!r} cannot be empty")
    ok = True
    if key in OPTIONAL_INTS or kind is int:
        ok = not isinstance(value, bool) and (isinstance(value, int) or (isinstance(value, float) and value.is_integer()))
        value = int(value) if ok else value
    elif kind is float:
        try:
            value, ok = (float(value), True) if not isinstance(value, bool) else (value, False)
        except (TypeError, ValueError):
            ok = False
    elif kind is bool:
        ok = isinstance(value, bool)
    elif kind is str:
        ok = isinstance(value, (str, Path))
        value = str(value) if ok else value
    if not ok:
        raise FinetuneConfigError(f"{source}: setting {key!r} must be {'an integer' if key in OPTIONAL_INTS else kind.__name__}, "
                                  f"got {value!r}")
    return value


def load_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FinetuneConfigError(f"{path}: config file not found")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise FinetuneConfigError(f"{path}: does not parse ({' '.join(str(exc).split())})") from None
    data = data or {}
    if not isinstance(data, dict):
        raise FinetuneConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    if set(data) >= {"config", "derived"} and isinstance(data["config"], dict):
        data = data["config"]  # a saved run config seeds a new run
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise FinetuneConfigError(f"{path}: unknown setting {unknown[0]!r}; known settings: {', '.join(KEYS)}")
    return {k: _coerce(k, v, str(path)) for k, v in data.items()}


def build_config(config_file: str | Path | None = None, **overrides: Any) -> FinetuneConfig:
    """Defaults <- [saved run settings with resume] <- config file <- overrides (None = not given); validated."""
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(given) - set(KEYS))
    if unknown:
        raise FinetuneConfigError(f"unknown setting {unknown[0]!r}")
    layers = [load_config_file(config_file) if config_file is not None else {},
              {k: _coerce(k, v, "command line") for k, v in given.items()}]
    sources = [str(config_file), "command line"]
    merged = {**layers[0], **layers[1]}
    saved_path = Path(merged.get("out", "")) / CONFIG_NAME
    if merged.get("resume") and merged.get("out") and saved_path.is_file():
        saved, _ = load_saved(saved_path)
        layers.insert(0, {k: _coerce(k, v, str(saved_path)) for k, v in saved.items()
                          if k in KEYS and k not in NOT_INHERITED_ON_RESUME})
        sources.insert(0, str(saved_path))
    values: dict[str, Any] = {}
    for layer in layers:
        if "steps" in layer and "epochs" not in layer:
            values["epochs"] = None
        if "epochs" in layer and "steps" not in layer:
            values["steps"] = None
        values.update(layer)
    try:
        return FinetuneConfig(**values).validate()
    except FinetuneConfigError as exc:  # name the file (or the command line) that set the refused key
        key = str(exc).split(" ", 1)[0].strip("`")
        given_in = [source for layer, source in zip(layers, sources) if key in layer]
        if not given_in:
            raise
        raise FinetuneConfigError(f"{given_in[-1]}: {exc}") from None


def saved_form(config: FinetuneConfig, derived: dict[str, Any]) -> dict[str, Any]:
    from clasp import __version__

    return {"clasp_version": __version__, "config": asdict(config), "derived": dict(derived)}


def load_saved(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return dict(data["config"]), dict(data.get("derived", {}))
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise FinetuneConfigError(f"{path}: not a saved fine-tuning config ({type(exc).__name__}: {exc})") from None


def resume_differences(saved: dict, saved_derived: dict, config: FinetuneConfig, derived: dict) -> list[str]:
    """'key: checkpoint X, now Y' for every difference that forbids an exact resume."""
    now = asdict(config)
    out = [f"{k}: checkpoint {saved.get(k, getattr(DEFAULTS, k))!r}, now {now[k]!r}" for k in KEYS
           if k not in RESUMABLE_CHANGES and saved.get(k, getattr(DEFAULTS, k)) != now[k]]
    out += [f"derived.{k}: checkpoint {saved_derived.get(k)!r}, now {derived.get(k)!r}"
            for k in sorted(set(saved_derived) | set(derived)) if saved_derived.get(k) != derived.get(k)]
    return out
