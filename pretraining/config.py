"""Every setting of `clasp pretrain`, with its default, in one place.

A run is configured by, in increasing priority: the defaults below, (with
`--resume`) the settings saved in the run folder, a `--config FILE` (YAML or
JSON, keys = field names), and command-line flags.
The resolved config is saved as JSON beside every checkpoint; `--resume`
compares it with the new one and refuses when a setting that decides the
model's shape, the data, the batch or the schedule differs
(`RESUME_RULE`, applied by `clasp.runs.run_folder`).

Learning rate: `lr` is the peak rate for a *total* batch of 256 images and is
scaled linearly by `batch_size x processes x grad_accum / 256`, as DINO does, so
a config keeps its meaning when the number of GPUs changes. `peak_lr` in the
saved config's `derived` block is the rate actually used.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from clasp.errors import InputError
from clasp.runs.layout import RUN_CONFIG
from clasp.runs.saved_config import ResumeRule, load_saved
from clasp.runs.settings import STEPS, RunSettings, workers_problem
from clasp.runs.trackers import TrackerSettings, report_to_problem
from clasp.settings import first_problem, same_as, setting, settings_of
from clasp.settings.layers import build_layered
from clasp.store.cache_config import CacheConfig
from clasp.store.reader_config import ReaderSettings
from clasp.common.person_size import PERSON_HW

log = logging.getLogger("clasp")

PRESETS = ("tiny", "small", "base")
RUNS_DIR = "runs"  # where a run started without `out` gets its folder
# Earlier runs saved accelerate's spelling of full precision; it still loads, as fp32.
LEGACY_PRECISIONS = {"no": "fp32"}


class ConfigError(InputError, ValueError):
    """A setting or config file the run cannot use; the message is one line naming it (`key`, when one setting)."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


# Temperatures divide logits: they must be above 0 and at most this.
MAX_TEMPERATURE = 1.0
# Bytes per student parameter: fp32 weights, gradient, two AdamW moments, and the EMA teacher's copy.
BYTES_PER_PARAMETER = 20
CROP_HW = {"global": PERSON_HW, "local": (PERSON_HW[0] // 2, PERSON_HW[1] // 2)}


@dataclass
class PretrainConfig(RunSettings, TrackerSettings):
    """Every setting of a run; `limits` are the "Bounds" of docs/commands/pretrain.md (counts that become processes or
    memory are also checked against this machine in `check_resources`)."""

    # --- data and run folder
    shards: str = setting("", "Shard folder written by `clasp label`, or its URL (s3://, gs://, az://, https://, "
                          "file://, memory://: shards are fetched into --cache-dir as the run needs them).",
                          shown="required, here or in --config", metavar="DIR|URL", resumable=True)
    out: str = setting("", "Run folder: config.json, metrics.jsonl, checkpoints/. Without it a single process "
                       "starts a new folder named from the store and the time, and prints it.",
                       shown="runs/SHARDS-YYYYmmdd-HHMMSS", metavar="DIR", resumable=True, inherited=False)
    # --- model
    preset: str = setting("small", "ViT size: tiny | small | base (dim 192/384/768, 12 blocks, 3/6/12 heads).",
                          choices=PRESETS)
    dim: int | None = setting(None, "Token width; overrides the preset's.", shown="from the preset", flag=False)
    depth: int | None = setting(None, "Transformer blocks; overrides the preset's.", shown="from the preset",
                                flag=False)
    heads: int | None = setting(None, "Attention heads; overrides the preset's.", shown="from the preset",
                                flag=False)
    moe_layers: int = setting(4, "Last blocks whose MLP is a prompt-controlled mixture of experts.",
                              limits=(0, 64))
    experts: int = setting(6, "Experts per MoE layer.", limits=(1, 64))
    top_k: int = setting(2, "Experts each token is routed to (at most `experts`).", limits=(1, 64))
    dino_out_dim: int = setting(8192, "Prototypes of the DINO head.", limits=(1, 262_144), flag=False)
    dino_hidden_dim: int = setting(2048, "Hidden width of the DINO head's MLP.", limits=(1, 16_384), flag=False)
    dino_bottleneck_dim: int = setting(256, "Bottleneck of the DINO head.", limits=(1, 4096), flag=False)
    # --- objectives
    w_part: float = setting(1.0, "Weight of the per-token part loss (0: no part branch).", limits=(0, 1000))
    w_attr: float = setting(1.0, "Weight of the attribute loss (0: no attribute branch).", limits=(0, 1000))
    w_balance: float = setting(0.01, "Weight of the MoE load-balancing loss.", limits=(0, 1000))
    teacher_temp: float = setting(0.04, "DINO teacher softmax temperature (after its warm-up).",
                                  limits=(0, MAX_TEMPERATURE), open_low=True)
    warmup_teacher_temp: float = setting(
        0.04, "Teacher temperature at step 0, rising linearly to --teacher-temp (DINO's ViT-B recipe: 0.07, "
        "0.04, 30 epochs' worth of steps).", limits=(0, MAX_TEMPERATURE), open_low=True)
    warmup_teacher_temp_steps: int = setting(0, "Optimizer steps of the teacher-temperature warm-up (0: none).",
                                             limits=(0, STEPS[1]))
    freeze_last_layer_steps: int = setting(
        0, "First optimizer steps that keep the DINO head's prototypes (its last layer) fixed; DINO freezes them "
        "for the first epoch.", limits=(0, STEPS[1]))
    global_crops: int = setting(2, "256x128 crops per image (teacher and student).", limits=(1, 16))
    local_crops: int = setting(6, "128x64 crops per image (student only).", limits=(0, 64))
    # --- length: `steps` (optimizer steps) wins when set, else `epochs` passes over the store
    steps: int | None = setting(None, "Optimizer steps of the whole run; wins over --epochs.", limits=STEPS)
    epochs: int | None = setting(100, "Passes over the store, when --steps is not set.", limits=(1, 100_000))
    # --- optimisation (AdamW; schedules are cosine, one value per optimizer step)
    batch_size: int = setting(32, "Images per process per micro-batch.", limits=(1, 65_536))
    grad_accum: int = setting(1, "Micro-batches per optimizer step.", limits=(1, 4096))
    lr: float = setting(5e-4, "Peak learning rate per 256 images of total batch; the rate used is lr x batch_size "
                        "x processes x grad_accum / 256 (DINO's linear scaling).", limits=(0, 1))
    min_lr: float = setting(1e-6, "Learning rate at the end of the cosine.", limits=(0, 1))
    warmup: float = setting(0.1, "Fraction of the steps with linear lr warm-up, reaching the peak on its last "
                            "step as DINO's does.", limits=(0, 1), open_high=True)
    weight_decay: float = setting(0.04, "Weight decay at the start, cosine to --weight-decay-end (biases, norms, "
                                  "position embedding, CLS token and task prompts are exempt).", limits=(0, 1))
    weight_decay_end: float = setting(0.4, "Weight decay at the end.", limits=(0, 1))
    momentum_teacher: float = setting(0.996, "EMA momentum of the teacher at the start (cosine to "
                                      "momentum_teacher_end).", limits=(0, 1))
    momentum_teacher_end: float = setting(1.0, "EMA momentum of the teacher at the end.", limits=(0, 1), flag=False)
    clip_grad: float = setting(3.0, "Max gradient norm (0: no clipping).", limits=(0, 1e6))
    precision: str = same_as(RunSettings, "precision", note="fp16 needs a GPU (see Speed). `no`, the old spelling "
                             "of fp32 in saved configs, reads as fp32.")
    # --- data loading (the data order depends on the worker count: it may not change on resume)
    num_workers: int | None = same_as(RunSettings, "num_workers", note="The count used is saved.")
    shuffle_buffer: int = setting(2048, "Rows held by each worker's shuffle buffer.", limits=(1, 1_000_000),
                                  flag=False)
    on_bad_row: str = same_as(ReaderSettings, "on_bad_row", note="May change on --resume.", resumable=True)
    cache_dir: str = same_as(CacheConfig, "cache_dir")
    cache_size: str = same_as(CacheConfig, "cache_size")
    # --- checkpoints, logging, stopping: RunSettings and TrackerSettings (inherited), and
    log_rows: bool = setting(False, "Debug: write the row ids each process reads to OUT/rows-rankR.jsonl.",
                             hidden=True, resumable=True)

    def validate(self) -> "PretrainConfig":
        """Raise ConfigError naming the first setting that cannot work."""
        if not self.shards:
            raise ConfigError("`shards` is required (--shards DIR)")
        if not self.out:
            raise ConfigError("`out` is required (--out DIR): with several processes, or with --resume")
        self.precision = LEGACY_PRECISIONS.get(self.precision, self.precision)
        if self.steps is None and self.epochs is None:
            raise ConfigError("set `steps` or `epochs`")
        if self.steps is not None:
            self.epochs = None  # resolved: the length is `steps`
        self.check_bounds()
        self.cache()
        self.check_model()
        self.check_resources()
        problem = report_to_problem(self.report_to)  # a missing tracker package: refused before any work
        if problem:
            raise ConfigError(problem, "report_to")
        return self

    def check_bounds(self) -> None:
        """Every setting within its declaration: a choice, a finite number within its `limits`."""
        found = first_problem(self)
        if found is not None:
            info, problem = found
            raise ConfigError(problem, info.name)

    def cache(self) -> CacheConfig:
        """Where a URL store's shards are fetched to; ConfigError when `cache_size` is not a size."""
        cache = CacheConfig(self.cache_dir, self.cache_size)
        try:
            cache.limit
        except ValueError as exc:
            raise ConfigError(str(exc), "cache_size") from None
        return cache

    def vit_config(self):
        """The backbone these settings describe; `ViTConfig` refuses one that cannot exist."""
        from clasp.pretraining.vit import ViTConfig

        overrides = {k: getattr(self, k) for k in ("dim", "depth", "heads") if getattr(self, k) is not None}
        return ViTConfig.preset(self.preset, moe_layers=self.moe_layers, experts=self.experts, top_k=self.top_k,
                                **overrides)

    def check_model(self) -> None:
        """The backbone must exist (dim divisible by heads, MoE within the depth, top_k <= experts, ...)."""
        try:
            self.vit_config()
        except ValueError as exc:
            message = str(exc)
            key = message.split()[0] if message.split()[0] in KEYS_OF_THE_MODEL else None
            raise ConfigError(f"{message} (preset {self.preset})", key) from None

    def model_parameters(self) -> int:
        """Student parameters, estimated: the backbone plus the DINO head's MLP."""
        vit = self.vit_config()
        hidden, bottleneck = self.dino_hidden_dim, self.dino_bottleneck_dim
        head = vit.dim * hidden + hidden * hidden + hidden * bottleneck + bottleneck * self.dino_out_dim
        return vit.estimated_params() + head

    def batch_bytes(self) -> int:
        """One micro-batch of crops as float32 pixels: batch_size x (global + local crop pixels) x 3 x 4."""
        pixels = (self.global_crops * CROP_HW["global"][0] * CROP_HW["global"][1]
                  + self.local_crops * CROP_HW["local"][0] * CROP_HW["local"][1])
        return self.batch_size * pixels * 3 * 4

    def check_resources(self) -> None:
        """Counts that become processes or memory, against what this machine has (docs/commands/pretrain.md, "Bounds")."""
        from clasp.hardware import available_memory

        problem = workers_problem(self.num_workers)
        if problem:
            raise ConfigError(problem, "num_workers")
        memory = available_memory()
        if memory is None:
            return
        model, batch = self.model_parameters() * BYTES_PER_PARAMETER, self.batch_bytes()
        if model + batch > memory:
            key = "batch_size" if batch >= model else "dim"
            raise ConfigError(f"{key}: the model ({model / 2**30:.1f} GiB for weights, teacher and optimizer) and "
                              f"one batch of crops ({self.batch_size} x {self.global_crops}+{self.local_crops} crops, "
                              f"{batch / 2**30:.1f} GiB as float32) need more than the {memory / 2**30:.1f} GiB "
                              "of memory available", key)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


SETTINGS = {info.name: info for info in settings_of(PretrainConfig)}
KEYS: tuple[str, ...] = tuple(SETTINGS)
DEFAULTS = PretrainConfig()

# Settings that may change between a checkpoint and `--resume` without breaking the run (declared
# `resumable`): where things are, how often to save/log, when to stop, the arithmetic precision.
# Everything else (model shape, data, batch, schedule, seed, and the derived values) must match.
RESUMABLE_CHANGES = frozenset(k for k, i in SETTINGS.items() if i.resumable)
# Settings of a saved run that do not carry over to `--resume` (they describe one start, not the run).
NOT_INHERITED_ON_RESUME = frozenset(k for k, i in SETTINGS.items() if not i.inherited)
# What `--resume` compares (clasp.runs.saved_config): every setting outside RESUMABLE_CHANGES.
RESUME_RULE = ResumeRule(KEYS, RESUMABLE_CHANGES, asdict(DEFAULTS))

KEYS_OF_THE_MODEL = frozenset({"dim", "depth", "heads", "moe_layers", "experts", "top_k"})


def default_of(name: str) -> Any:
    return getattr(DEFAULTS, name)


def build_config(config_file: str | Path | None = None, **overrides: Any) -> PretrainConfig:
    """Defaults <- [saved run settings] <- config file <- overrides (None means 'not given'); validated.

    With `resume`, the settings saved in `out`/config.json form the base, so
    `clasp pretrain --out RUN --resume` alone continues a run however it was
    configured. Giving `steps` clears `epochs` from a lower layer and vice
    versa, so that a flag always decides the run length (`clasp.settings.layers`).
    """
    return build_layered(PretrainConfig, config_file, overrides, ConfigError, RUN_CONFIG,
                         lambda path: load_saved(path, ConfigError), complete=_default_out)


def _default_out(values: dict[str, Any]) -> None:
    """A run given its shards but no folder (and not resuming) gets a new one."""
    if values.get("shards") and not values.get("out") and not values.get("resume"):
        values["out"] = default_run_folder(values["shards"])


def default_run_folder(shards: str, now: float | None = None) -> str:
    """A new run folder for a run started without `out`: runs/<store folder>-<local time>, said on stderr.

    Several processes (`accelerate launch`) could each read another second, so
    they must be given `out`; a single process names its folder here.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return ""  # validate() then asks for --out
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    out = str(Path(RUNS_DIR) / f"{Path(shards).resolve().name or 'shards'}-{stamp}")
    log.info(f"run folder: {out} (no --out given)")
    return out
