"""From a validated config to a run ready for its first step: the `RunState` the loop advances.

Preparation reads and checks everything before it writes anything: the store,
the settings derived from it, the run folder's plan (resume, force, or a new
folder), the model and optimizer, and the checkpoint to resume from. Only then
does the main process take the folder (config.json, logs). A refusal at any
point before leaves the folder as it was, apart from `error.log`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clasp.pretraining.batch_source import BatchSource
from clasp.pretraining.config import RESUME_RULE, STEPS, ConfigError, PretrainConfig
from clasp.pretraining.errors import PretrainInputError
from clasp.pretraining.layout import RUN_FILES
from clasp.pretraining.run_logs import RowLog
from clasp.pretraining.step_stats import ThroughputWindow
from clasp.runs.checkpoint import CheckpointWriter, load_checkpoint, restore_checkpoint_rng
from clasp.runs.layout import STREAM_FILE
from clasp.runs.metrics_log import MetricsLog
from clasp.runs.run_folder import RunPlan, plan_run_folder, take_run_folder
from clasp.runs.saved_config import saved_form
from clasp.runs.schedules import Schedules
from clasp.runs.trackers import start_trackers

log = logging.getLogger("clasp")


@dataclass
class RunInputs:
    """What a start decides before it writes anything."""

    stream: Any  # this process's ShardStream
    derived: dict[str, Any]  # world size, total batch, peak lr, total steps, data fingerprint
    folder: RunPlan
    model_config: Any  # clasp.pretraining.model.ModelConfig
    saved_config: dict[str, Any]  # what config.json holds
    hardware: dict[str, Any]


@dataclass
class RunState:
    """Everything the loop reads, and the few values it moves (step, checkpoint, data boundary, loss)."""

    config: PretrainConfig
    accelerator: Any
    precision: Any  # clasp.hardware.PrecisionChoice
    inputs: RunInputs
    model: torch.nn.Module  # as prepared by accelerate (wrapped for DDP with several processes)
    core: Any  # the unwrapped ClaspModel
    optimizer: torch.optim.Optimizer
    schedules: Schedules
    start_step: int
    writer: CheckpointWriter
    metrics: MetricsLog
    rows: RowLog
    batches: BatchSource
    bar: Any
    window: ThroughputWindow
    step: int = 0
    last_saved: int = -1  # the step of the last checkpoint this start wrote (or resumed from)
    checkpoint: Path | None = None  # the newest checkpoint
    boundary: dict | None = None  # the stream position after the last finished step
    last_loss: float | None = None
    stopped_by: str = "end"

    @property
    def out(self) -> Path:
        return self.inputs.folder.out

    @property
    def stream(self):
        return self.inputs.stream

    @property
    def total_steps(self) -> int:
        return self.inputs.derived["total_steps"]

    @property
    def end_step(self) -> int:
        stop_at = self.config.stop_at
        return self.total_steps if stop_at is None else min(self.total_steps, stop_at)

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def close(self) -> None:
        self.bar.close()
        self.metrics.close()
        self.rows.close()
        self.batches.close()


def prepare_run(config: PretrainConfig, accelerator, precision) -> RunState:
    """Check the inputs, build model and optimizer, resume or seed, then take the run folder."""
    from tqdm.auto import tqdm

    inputs = describe_run(config, accelerator, precision)
    model, optimizer, schedules, loader = build_trainer(config, accelerator, inputs)
    core = accelerator.unwrap_model(model)
    start_step = resume_or_seed(config, accelerator, inputs, core, optimizer)
    take_run_folder(accelerator, inputs.folder, RUN_FILES, inputs.saved_config, start_step)
    out, rank, is_main = inputs.folder.out, accelerator.process_index, accelerator.is_main_process
    rows = RowLog(out, rank, start_step, enabled=config.log_rows)
    writer = CheckpointWriter(out, rank, is_main, config.keep_checkpoints)
    writer.remove_unfinished()
    trackers = start_trackers(accelerator, "clasp-pretrain", config.run_name, out, inputs.saved_config,
                              start_step if config.resume else None)
    metrics = MetricsLog(out, is_main, trackers)
    bar = tqdm(total=inputs.derived["total_steps"], initial=start_step, disable=not is_main, unit="step",
               dynamic_ncols=True, desc="pretrain")
    resumed = inputs.folder.resume_from
    run = RunState(config, accelerator, precision, inputs, model, core, optimizer, schedules, start_step, writer,
                   metrics, rows, BatchSource(inputs.stream, loader, accelerator.device), bar, ThroughputWindow(),
                   step=start_step, last_saved=start_step if resumed else -1, checkpoint=resumed)
    run.stopped_by = "end" if run.end_step == run.total_steps else "stop_at"
    run.boundary = inputs.stream.state_dict()
    return run


def describe_run(config: PretrainConfig, accelerator, precision) -> RunInputs:
    """The stream, the derived values, the folder's plan and the config to save; nothing is written."""
    world = accelerator.num_processes
    hardware = precision.record() | use_process_cores(config, accelerator)
    store, stream = open_stream(config, accelerator.process_index, world)
    total_steps = total_steps_for(config, stream.batches_per_epoch)
    total_batch = config.batch_size * world * config.grad_accum
    derived = {"world_size": world, "total_batch": total_batch, "peak_lr": config.lr * total_batch / 256,
               "total_steps": total_steps, "batches_per_epoch": stream.batches_per_epoch,
               "data": data_fingerprint(store.manifest)}
    folder = plan_run_folder(config.out, config.resume, config.force, RUN_FILES, RESUME_RULE, config.to_dict(),
                             derived)
    if accelerator.is_main_process:  # once the inputs are known to be good, so that a refusal stays one line
        log.info(precision.line())
        if precision.warning:
            log.warning(precision.warning)
    model_config = model_config_for(config, store.manifest.vocab)
    # `hardware` records what this start ran with; resume does not compare it.
    saved = saved_form(config.to_dict(), derived) | {"model": model_config.to_dict(), "hardware": hardware}
    return RunInputs(stream, derived, folder, model_config, saved, hardware)


def build_trainer(config: PretrainConfig, accelerator, inputs: RunInputs):
    """(model prepared by accelerate, optimizer, schedules, loader), the model initialised from `config.seed`."""
    from accelerate.utils import set_seed

    from clasp.hardware.host_memory import keep_freed_memory_on
    from clasp.pretraining.compile_blocks import compile_if_asked
    from clasp.pretraining.model import ClaspModel
    from clasp.pretraining.stream import make_loader

    keep_freed_memory_on(accelerator.device.type)  # else each step page-faults its activations in again
    set_seed(config.seed)
    model = ClaspModel(inputs.model_config)
    compile_if_asked(model, config.compile, inputs.hardware["precision"], accelerator.device.type)
    optimizer = torch.optim.AdamW(model.param_groups(), lr=0.0)
    model, optimizer = accelerator.prepare(model, optimizer)
    loader = make_loader(inputs.stream, config.num_workers)
    derived = inputs.derived
    schedules = Schedules.build(derived["total_steps"], derived["peak_lr"], config.min_lr, config.warmup,
                                config.weight_decay, config.weight_decay_end, config.momentum_teacher,
                                config.momentum_teacher_end)
    return model, optimizer, schedules, loader


def resume_or_seed(config: PretrainConfig, accelerator, inputs: RunInputs, core, optimizer) -> int:
    """The first step: a resumed checkpoint's (everything it reads checked first), else 0 with fresh seeds."""
    from accelerate.utils import set_seed

    path, rank = inputs.folder.resume_from, accelerator.process_index
    if path is None:
        set_seed(config.seed, device_specific=True)  # per-process randomness from here on
        return 0
    loaded = load_checkpoint(path, core, optimizer, accelerator.scaler, rank)
    load_stream_position(path / STREAM_FILE.format(rank=rank), loaded.stream_state, inputs.stream)
    restore_checkpoint_rng(loaded, rank)
    return loaded.step


# ----------------------------------------------------------------------------- pieces of the preparation


def use_process_cores(config: PretrainConfig, accelerator) -> dict[str, Any]:
    """Torch threads and DataLoader workers from the cores this process may use; what was chosen, for the record."""
    from clasp.hardware import available_cores, dataloader_workers, set_torch_threads

    on_host = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
    if config.num_workers is None:
        config.num_workers = dataloader_workers(accelerator.device.type, on_host)
    threads = set_torch_threads(on_host, config.threads)
    return {"available_cores": available_cores(), "processes_on_host": on_host, "torch_threads": threads.threads,
            "torch_threads_from": threads.source, "num_workers": config.num_workers}


def model_config_for(config: PretrainConfig, vocab):
    """The model of a run: preset, MoE and head sizes, loss weights, vocabulary sizes."""
    from clasp.pretraining.model import LossConfig, ModelConfig

    overrides = {k: getattr(config, k) for k in ("dim", "depth", "heads") if getattr(config, k) is not None}
    return ModelConfig.build(
        config.preset, vocab, moe_layers=config.moe_layers, experts=config.experts, top_k=config.top_k,
        dino_out_dim=config.dino_out_dim, dino_hidden_dim=config.dino_hidden_dim,
        dino_bottleneck_dim=config.dino_bottleneck_dim,
        loss=LossConfig(w_part=config.w_part, w_attr=config.w_attr, w_balance=config.w_balance,
                        teacher_temp=config.teacher_temp, warmup_teacher_temp=config.warmup_teacher_temp,
                        warmup_teacher_temp_steps=config.warmup_teacher_temp_steps), **overrides)


def data_fingerprint(manifest) -> str:
    """Identifies the store's content (not its path): vocabulary, label grid, shards and their hashes."""
    content = {"vocab": manifest.vocab.sha256, "label_grid": list(manifest.label_grid),
               "shards": [[s.file, s.rows, s.sha256] for s in manifest.shards]}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def open_stream(config: PretrainConfig, rank: int, world_size: int):
    """Check the whole store and build this process's stream; input errors become PretrainInputError."""
    from clasp.pretraining.augment import MultiCropConfig
    from clasp.pretraining.stream import ShardStream, StreamConfig, validate_store
    from clasp.store import StoreError

    try:
        store = validate_store(config.shards, on_bad_row=config.on_bad_row, cache=config.cache())
    except StoreError as exc:
        raise PretrainInputError(str(exc)) from None
    stream_config = StreamConfig(Path(config.shards), batch_size=config.batch_size,
                                 shuffle_buffer=config.shuffle_buffer, seed=config.seed, on_bad_row=config.on_bad_row,
                                 crops=MultiCropConfig(global_crops=config.global_crops,
                                                       local_crops=config.local_crops))
    try:
        stream = ShardStream(stream_config, rank=rank, world_size=world_size, store=store)
    except (ValueError, StoreError) as exc:
        raise PretrainInputError(f"{Path(config.shards) / 'manifest.json'}: {exc}") from None
    return store, stream


def total_steps_for(config: PretrainConfig, batches_per_epoch: int) -> int:
    """`steps`, or the optimizer steps of `epochs` passes over the store (bounded like `steps`)."""
    if config.steps is not None:
        return config.steps
    steps = max(1, config.epochs * batches_per_epoch // config.grad_accum)
    if steps > STEPS[1]:
        raise ConfigError(f"epochs {config.epochs} x {batches_per_epoch} batches per epoch / grad_accum "
                          f"{config.grad_accum} gives {steps} steps, more than {STEPS[1]}", "epochs")
    return steps


def load_stream_position(stream_file: Path, state: Any, stream) -> None:
    """A checkpoint's stream position into this process's stream; PretrainInputError naming the file."""
    try:
        if not isinstance(state, dict):
            raise TypeError(f"expected a mapping, got {type(state).__name__}")
        stream.load_state_dict(state)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        detail = f"missing {exc}" if isinstance(exc, KeyError) else " ".join(str(exc).split())[:200]
        raise PretrainInputError(f"{stream_file}: not a usable stream position ({detail})") from None
