"""Every setting of `clasp pretrain`, with its default, in one place.

A run is configured by, in increasing priority: the defaults below, (with
`--resume`) the settings saved in the run folder, a `--config FILE` (YAML or
JSON, keys = field names), and command-line flags.
The resolved config is saved as JSON beside every checkpoint; `--resume`
compares it with the new one and refuses when a setting that decides the
model's shape, the data, the batch or the schedule differs
(`incompatible_differences`).

Learning rate: `lr` is the peak rate for a *total* batch of 256 images and is
scaled linearly by `batch_size x processes x grad_accum / 256`, as DINO does, so
a config keeps its meaning when the number of GPUs changes. `peak_lr` in the
saved config's `derived` block is the rate actually used.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from clasp.hardware import PRECISIONS

PRESETS = ("tiny", "small", "base")
# Earlier runs saved accelerate's spelling of full precision; it still loads, as fp32.
LEGACY_PRECISIONS = {"no": "fp32"}
CONFIG_NAME = "config.json"


class ConfigError(ValueError):
    """A setting or config file the run cannot use; the message is one line naming it (`key`, when one setting)."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


# Bounds of the counts and rates (README, "Bounds"). Counts that become processes or
# memory are also checked against this machine in `check_resources`.
LIMITS: dict[str, tuple[float, float]] = {
    "steps": (1, 10_000_000), "epochs": (1, 100_000), "batch_size": (1, 65_536), "grad_accum": (1, 4096),
    "global_crops": (1, 16), "local_crops": (0, 64), "shuffle_buffer": (1, 1_000_000),
    "save_every": (1, 10_000_000), "log_every": (1, 10_000_000), "keep_checkpoints": (1, 1000),
    "experts": (1, 64), "top_k": (1, 64), "moe_layers": (0, 64), "seed": (0, 2**32 - 1),
    "dino_out_dim": (1, 262_144), "dino_hidden_dim": (1, 16_384), "dino_bottleneck_dim": (1, 4096),
    "warmup_teacher_temp_steps": (0, 10_000_000), "freeze_last_layer_steps": (0, 10_000_000),
    "stop_at": (1, 10_000_000),
    "lr": (0, 1), "min_lr": (0, 1), "weight_decay": (0, 1), "weight_decay_end": (0, 1), "clip_grad": (0, 1e6),
    "w_part": (0, 1000), "w_attr": (0, 1000), "w_balance": (0, 1000),
    "momentum_teacher": (0, 1), "momentum_teacher_end": (0, 1),
}
# Temperatures divide logits: they must be above 0 and at most this.
MAX_TEMPERATURE = 1.0
# DataLoader workers per available core (clasp.hardware.available_cores) at most.
WORKERS_PER_CORE = 4
# Bytes per student parameter: fp32 weights, gradient, two AdamW moments, and the EMA teacher's copy.
BYTES_PER_PARAMETER = 20
CROP_HW = {"global": (256, 128), "local": (128, 64)}


@dataclass
class PretrainConfig:
    # --- data and run folder
    shards: str = ""  # shard folder written by `clasp label` (required)
    out: str = ""  # run folder: checkpoints, metrics, config (required)
    # --- model
    preset: str = "small"  # ViT size: tiny | small | base
    moe_layers: int = 4  # last blocks whose MLP is a prompt-controlled mixture of experts
    experts: int = 6  # experts per MoE layer
    top_k: int = 2  # experts each token is routed to
    dim: int | None = None  # token width; None = the preset's (tiny 192, small 384, base 768)
    depth: int | None = None  # transformer blocks; None = the preset's (12)
    heads: int | None = None  # attention heads; None = the preset's (3, 6, 12)
    dino_out_dim: int = 8192  # prototypes of the DINO head
    dino_hidden_dim: int = 2048  # hidden width of the DINO head's MLP
    dino_bottleneck_dim: int = 256  # bottleneck of the DINO head
    # --- objectives
    w_part: float = 1.0  # weight of the per-token part loss
    w_attr: float = 1.0  # weight of the attribute loss
    w_balance: float = 0.01  # weight of the MoE load-balancing loss
    teacher_temp: float = 0.04  # DINO teacher softmax temperature after its warm-up
    warmup_teacher_temp: float = 0.04  # ... at step 0, rising linearly to teacher_temp
    warmup_teacher_temp_steps: int = 0  # optimizer steps of that warm-up (0: none)
    freeze_last_layer_steps: int = 0  # first optimizer steps that leave the DINO prototypes unchanged
    global_crops: int = 2  # 256x128 crops per image (teacher and student)
    local_crops: int = 6  # 128x64 crops per image (student only)
    # --- length: `steps` (optimizer steps) wins when set, else `epochs` passes over the store
    steps: int | None = None  # optimizer steps of the whole run
    epochs: int | None = 100  # passes over the store, used when `steps` is not set
    # --- optimisation (AdamW; schedules are cosine, one value per optimizer step)
    batch_size: int = 32  # images per process per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 5e-4  # peak lr for a total batch of 256, scaled linearly (see module doc)
    min_lr: float = 1e-6  # lr at the end of the cosine
    warmup: float = 0.1  # fraction of the optimizer steps with linear lr warm-up
    weight_decay: float = 0.04  # at the start of training ...
    weight_decay_end: float = 0.4  # ... and at the end (cosine in between)
    momentum_teacher: float = 0.996  # EMA momentum of the teacher at the start (cosine to 1)
    momentum_teacher_end: float = 1.0  # EMA momentum at the end
    clip_grad: float = 3.0  # max gradient norm; 0 disables clipping
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (fp16 needs a GPU); auto: see clasp.hardware.precision
    # --- data loading
    num_workers: int | None = None  # DataLoader workers per process; None: from the cores (clasp.hardware.cores)
    shuffle_buffer: int = 2048  # rows held by each worker's shuffle buffer
    on_bad_row: str = "stop"  # stop | skip: a store row that fails a check (pretraining/stream.py)
    # --- checkpoints, logging, stopping
    save_every: int = 1000  # optimizer steps between checkpoints (plus one at the end)
    keep_checkpoints: int = 3  # newest checkpoints kept in OUT/checkpoints
    log_every: int = 10  # optimizer steps between lines of OUT/metrics.jsonl
    stop_at: int | None = None  # stop cleanly after this step with a checkpoint; schedule unchanged
    seed: int = 0  # model init, data order and augmentation
    resume: bool = False  # continue from the newest checkpoint in `out`
    force: bool = False  # start over in an `out` that holds another run
    log_rows: bool = False  # debug: write the row ids each process reads to OUT/rows-rankR.jsonl

    def validate(self) -> "PretrainConfig":
        """Raise ConfigError naming the first setting that cannot work."""
        if not self.shards:
            raise ConfigError("`shards` is required (--shards DIR)")
        if not self.out:
            raise ConfigError("`out` is required (--out DIR)")
        if self.preset not in PRESETS:
            raise ConfigError(f"preset must be one of {'|'.join(PRESETS)}, got {self.preset!r}", "preset")
        self.precision = LEGACY_PRECISIONS.get(self.precision, self.precision)
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {'|'.join(PRECISIONS)}, got {self.precision!r}", "precision")
        if self.steps is None and self.epochs is None:
            raise ConfigError("set `steps` or `epochs`")
        if self.steps is not None:
            self.epochs = None  # resolved: the length is `steps`
        positive = ["batch_size", "grad_accum", "global_crops", "save_every", "log_every",
                    "keep_checkpoints", "experts", "top_k", "shuffle_buffer"]
        for name in positive + (["steps"] if self.steps is not None else ["epochs"]):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}", name)
        for name in ("dim", "depth", "heads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}", name)
        for name in ("dino_out_dim", "dino_hidden_dim", "dino_bottleneck_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}", name)
        if self.num_workers is not None and self.num_workers < 0:
            raise ConfigError(f"num_workers must not be negative, got {self.num_workers}", "num_workers")
        for name in ("local_crops", "moe_layers", "seed", "warmup_teacher_temp_steps",
                     "freeze_last_layer_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative, got {getattr(self, name)}", name)
        for name in ("lr", "min_lr", "weight_decay", "weight_decay_end", "clip_grad", "w_part", "w_attr", "w_balance"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative, got {getattr(self, name)}", name)
        for name in ("teacher_temp", "warmup_teacher_temp"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}", name)
        if self.on_bad_row not in ("stop", "skip"):
            raise ConfigError(f"on_bad_row must be stop or skip, got {self.on_bad_row!r}", "on_bad_row")
        if self.top_k > self.experts:
            raise ConfigError(f"top_k ({self.top_k}) cannot exceed experts ({self.experts})", "top_k")
        if not 0 <= self.warmup < 1:
            raise ConfigError(f"warmup is a fraction of the steps in [0, 1), got {self.warmup}", "warmup")
        for name in ("momentum_teacher", "momentum_teacher_end"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}", name)
        if self.stop_at is not None and self.stop_at < 1:
            raise ConfigError(f"stop_at must be at least 1, got {self.stop_at}", "stop_at")
        self.check_bounds()
        self.check_model()
        self.check_resources()
        return self

    def check_bounds(self) -> None:
        """Every number finite and within LIMITS; temperatures in (0, MAX_TEMPERATURE]."""
        for name, (low, high) in LIMITS.items():
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number, got {value}", name)
            if not low <= value <= high:
                raise ConfigError(f"{name} must be in [{_number(low)}, {_number(high)}], got {_number(value)}", name)
        for name in ("teacher_temp", "warmup_teacher_temp"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 < value <= MAX_TEMPERATURE):
                raise ConfigError(f"{name} must be in (0, {MAX_TEMPERATURE:g}], got {value}", name)
        if not math.isfinite(self.warmup):
            raise ConfigError(f"warmup must be a finite number, got {self.warmup}", "warmup")

    def check_model(self) -> None:
        """The backbone the settings describe must exist (dim divisible by heads, MoE within the depth, ...)."""
        from clasp.pretraining.vit import ViTConfig

        overrides = {k: getattr(self, k) for k in ("dim", "depth", "heads") if getattr(self, k) is not None}
        names = {"num_experts": "experts"}
        try:
            ViTConfig.preset(self.preset, moe_layers=self.moe_layers, num_experts=self.experts, top_k=self.top_k,
                             **overrides)
        except ValueError as exc:
            message = str(exc)
            for field_name, key in names.items():
                message = message.replace(field_name, key)
            key = message.split()[0] if message.split()[0] in KEYS_OF_THE_MODEL else None
            raise ConfigError(f"{message} (preset {self.preset})", key) from None

    def model_parameters(self) -> int:
        """Student parameters, estimated: the backbone plus the DINO head's MLP."""
        from clasp.pretraining.vit import ViTConfig

        overrides = {k: getattr(self, k) for k in ("dim", "depth", "heads") if getattr(self, k) is not None}
        vit = ViTConfig.preset(self.preset, moe_layers=self.moe_layers, num_experts=self.experts, top_k=self.top_k,
                               **overrides)
        hidden, bottleneck = self.dino_hidden_dim, self.dino_bottleneck_dim
        head = vit.dim * hidden + hidden * hidden + hidden * bottleneck + bottleneck * self.dino_out_dim
        return vit.estimated_params() + head

    def batch_bytes(self) -> int:
        """One micro-batch of crops as float32 pixels: batch_size x (global + local crop pixels) x 3 x 4."""
        pixels = (self.global_crops * CROP_HW["global"][0] * CROP_HW["global"][1]
                  + self.local_crops * CROP_HW["local"][0] * CROP_HW["local"][1])
        return self.batch_size * pixels * 3 * 4

    def check_resources(self) -> None:
        """Counts that become processes or memory, against what this machine has (README, "Bounds")."""
        from clasp.hardware import available_cores, available_memory

        cores = available_cores()
        if self.num_workers is not None and self.num_workers > WORKERS_PER_CORE * cores:
            raise ConfigError(f"num_workers {self.num_workers} is more than {WORKERS_PER_CORE} per available core "
                              f"({WORKERS_PER_CORE} x {cores} = {WORKERS_PER_CORE * cores})", "num_workers")
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


KEYS: tuple[str, ...] = tuple(f.name for f in fields(PretrainConfig))
DEFAULTS = PretrainConfig()

# Settings that may change between a checkpoint and `--resume` without breaking
# the run: where things are, how often to save/log, when to stop, and the
# arithmetic precision. Everything else (model shape, data, batch, schedule,
# seed, and the derived values) must match; a new setting is incompatible until
# listed here.
RESUMABLE_CHANGES = frozenset({
    "shards", "out", "resume", "force", "stop_at", "save_every", "log_every", "keep_checkpoints",
    "precision", "log_rows", "on_bad_row",
})


OPTIONAL_INTS = frozenset({"steps", "epochs", "stop_at", "dim", "depth", "heads", "num_workers"})


KEYS_OF_THE_MODEL = frozenset({"dim", "depth", "heads", "moe_layers", "experts", "top_k"})


def _number(value: float) -> str:
    """A bound or value as written in a config: integers in full, other numbers short."""
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else f"{value:g}"


def default_of(name: str) -> Any:
    return getattr(DEFAULTS, name)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML or JSON file of settings; unknown keys and bad values name the key and file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        one_line = " ".join(str(exc).split())
        raise ConfigError(f"{path}: does not parse ({one_line})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    # A saved run config ({"config": {...}, "derived": {...}}) can seed a new run.
    if set(data) >= {"config", "derived"} and isinstance(data["config"], dict):
        data = data["config"]
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown setting {unknown[0]!r}" + (f" (and {unknown[1:]})" if unknown[1:] else "")
                          + f"; known settings: {', '.join(KEYS)}")
    return {key: _coerce(key, value, str(path)) for key, value in data.items()}


# Settings of a saved run that do not carry over to `--resume` (they describe one start, not the run).
NOT_INHERITED_ON_RESUME = frozenset({"out", "resume", "force", "stop_at"})


def build_config(config_file: str | Path | None = None, **overrides: Any) -> PretrainConfig:
    """Defaults <- [saved run settings] <- config file <- overrides (None means 'not given'); validated.

    With `resume`, the settings saved in `out`/config.json form the base, so
    `clasp pretrain --out RUN --resume` alone continues a run however it was
    configured. Giving `steps` clears `epochs` from a lower layer and vice
    versa, so that a flag always decides the run length.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(given) - set(KEYS))
    if unknown:
        raise ConfigError(f"unknown setting {unknown[0]!r}")
    file_layer = load_config_file(config_file) if config_file is not None else {}
    flags = {k: _coerce(k, v, "command line") for k, v in given.items()}
    layers = [file_layer, flags]
    sources = [str(config_file), "command line"]
    merged = {**file_layer, **flags}
    if merged.get("resume") and merged.get("out"):
        saved_path = Path(merged["out"]) / CONFIG_NAME
        if saved_path.is_file():
            saved, _ = load_saved(saved_path)
            base = {k: _coerce(k, v, str(saved_path)) for k, v in saved.items()
                    if k in KEYS and k not in NOT_INHERITED_ON_RESUME}
            layers.insert(0, base)
            sources.insert(0, str(saved_path))
    values: dict[str, Any] = {}
    for layer in layers:
        if "steps" in layer and "epochs" not in layer:
            values["epochs"] = None
        if "epochs" in layer and "steps" not in layer:
            values["steps"] = None
        values.update(layer)
    try:
        return PretrainConfig(**values).validate()
    except ConfigError as exc:
        given_in = [source for layer, source in zip(layers, sources) if exc.key in layer]
        if exc.key is None or not given_in:
            raise
        raise ConfigError(f"{given_in[-1]}: {exc}", exc.key) from None


def _coerce(key: str, value: Any, source: str) -> Any:
    """Check a value against the field's type (ints stay ints; '1e-4' from YAML becomes a float)."""
    kind = type(default_of(key))
    optional_int = key in OPTIONAL_INTS
    if value is None:
        if optional_int:
            return None
        raise ConfigError(f"{source}: setting {key!r} cannot be empty")
    try:
        if optional_int or kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind is bool:
            if not isinstance(value, bool):
                raise ValueError
            return value
        if kind is str:
            if not isinstance(value, (str, Path)):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        pass
    else:
        return value
    raise ConfigError(f"{source}: setting {key!r} must be {'an integer' if optional_int else kind.__name__}, got {value!r}")


# ----------------------------------------------------------------------------- saved form


def saved_form(config: PretrainConfig, derived: dict[str, Any]) -> dict[str, Any]:
    """What `config.json` holds: the settings plus values derived from them and the data."""
    from clasp import __version__

    return {"clasp_version": __version__, "config": config.to_dict(), "derived": dict(derived)}


def load_saved(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(settings, derived) of a saved `config.json`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return dict(data["config"]), dict(data.get("derived", {}))
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: not a saved run config ({type(exc).__name__}: {exc})") from None


def incompatible_differences(saved: dict[str, Any], saved_derived: dict[str, Any],
                             config: PretrainConfig, derived: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, saved value, new value) for every difference that forbids an exact resume."""
    now = config.to_dict()
    out = []
    for key in KEYS:
        if key in RESUMABLE_CHANGES:
            continue
        if saved.get(key, default_of(key)) != now[key]:
            out.append((key, saved.get(key, default_of(key)), now[key]))
    for key in sorted(set(saved_derived) | set(derived)):
        if saved_derived.get(key) != derived.get(key):
            out.append((f"derived.{key}", saved_derived.get(key), derived.get(key)))
    return out


def describe_differences(diffs: list[tuple[str, Any, Any]], path: str | Path) -> str:
    parts = [f"{key}: checkpoint {old!r}, now {new!r}" for key, old, new in diffs]
    return (f"{path}: cannot resume, settings differ from the run's ({'; '.join(parts)}); "
            "use the run's settings, or --force to start over")
