"""`clasp finetune`: an exported backbone + a task head, trained with Accelerate, evaluated at the end.

What fine-tuning supplies is its model (backbone + the recipe's head), its
batches and its loss; the run machinery is `clasp.runs`': the run folder and
its resume rule, checkpoints (full RNG state, no stream file: the step is the
data position), the stop-signal watcher, the per-step all-reduce, the
schedule, the accelerator and the step loop.

Per step: the learning rate of this global step (`clasp.runs.schedules`, times
each group's layer-decay scale); this process's batch, a pure function of
(seed, step, rank) (`batches.StepPlan`, `augment.batch_generator`), so the
step alone is the data position; forward, the recipe's loss; one all-reduce
of the statistics that also carries the stop flag and shows a non-finite loss
on any process to all before its gradient is applied; backward, clipping,
AdamW. Checkpoints every `save_every` steps, at the end and on the first
SIGTERM/SIGINT (a second one exits at once with 128 + its number); `resume`
restores weights (BatchNorm statistics included), optimizer, step and the
Python, NumPy and torch RNG states, so the steps after it reproduce an
uninterrupted run. At the end the main process evaluates and writes
`results.json`. Each metrics.jsonl row also goes to the trackers of
`report_to` (`clasp.runs.trackers`), and the final scores as `results/NAME` at
the last step.

The DataLoader is not passed to `accelerator.prepare`: each process already
reads only its own batches, which Accelerate would re-split or dispatch from
rank 0 (as `clasp.pretraining.batch_source` explains for the shard stream).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from clasp.errors import InputError, RunError, one_line
from clasp.hardware.recheck import watch_load
from clasp.evaluation.results_json import write_results
from clasp.finetune.config import RESUME_RULE, FinetuneConfig
from clasp.finetune.data import FinetuneInputError, load_data
from clasp.finetune.layout import RESULTS, RUN_FILES
from clasp.runs import FolderLockError, exclusive_run_folder
from clasp.runs.accelerator import make_accelerator
from clasp.runs.checkpoint import CheckpointWriter, find_checkpoint, load_checkpoint, restore_checkpoint_rng
from clasp.runs.error_log import write_error_log
from clasp.runs.metrics_log import MetricsLog
from clasp.runs.run_folder import RunPlan, plan_run_folder, take_run_folder
from clasp.runs.saved_config import saved_form
from clasp.runs.schedules import lr_schedule
from clasp.runs.step_loop import Every, run_steps
from clasp.runs.step_stats import STOP, check_finite, reduce_stats
from clasp.runs.stop_signals import run_stop_signals
from clasp.runs.trackers import Trackers, accelerator_options, start_trackers

log = logging.getLogger("clasp")


@dataclass
class FinetuneResult:
    out: Path
    step: int
    total_steps: int
    stopped_by: str  # end | stop_at | SIGTERM | SIGINT
    results: dict | None  # the final metrics (main process, finished runs)
    last_loss: float | None


def load_task_backbone(config: FinetuneConfig, img_hw: tuple[int, int] | None = None):
    """The export, its position embedding resized once to `img_hw` when the recipe crops another size."""
    from clasp.pretraining.backbone import BackboneError, load_backbone

    folder = Path(config.backbone)
    if not folder.is_dir():
        raise FinetuneInputError(f"{folder}: backbone folder does not exist")
    try:
        backbone = load_backbone(folder, task=config.prompt or None, img_hw=img_hw)
    except (BackboneError, FileNotFoundError, KeyError, TypeError) as exc:
        raise FinetuneInputError(f"{folder}: not a backbone written by `clasp export` ({exc})") from None
    return backbone.train()


def run_finetune(config: FinetuneConfig) -> FinetuneResult:
    """Fine-tune (or continue) the run `config.out`; input errors as FinetuneInputError (error.log written).

    Most input errors are found before anything is written. A label map with a
    class outside the data set's is only found when a batch or the evaluation
    reads it (decoding every map of a real data set up front would take
    minutes): it is the same one-line input error, and the run folder keeps
    what was written, its last checkpoint included. A run that fails after it
    started (a non-finite loss, a checkpoint that cannot be written) raises its
    RunError, its line in error.log too."""
    threads = torch.get_num_threads()
    try:
        config.validate()
        accelerator, precision = make_accelerator(config.precision, **accelerator_options(config.report_to, config.out))
        with exclusive_run_folder(config.out, "clasp finetune", accelerator):
            return _run(config, accelerator, precision)
    except FolderLockError as exc:  # another run holds the folder: write nothing there, not even error.log
        raise FinetuneInputError(str(exc)) from None
    except InputError as exc:
        message = one_line(exc, drop_types=("EvalInputError", "DatasetError"))
        if os.environ.get("RANK", "0") == "0":
            write_error_log(config.out, message)
        raise FinetuneInputError(message) from None
    except RunError as exc:
        if os.environ.get("RANK", "0") == "0":
            write_error_log(config.out, str(exc))
        raise
    finally:
        torch.set_num_threads(threads)


def _setup(config: FinetuneConfig, accelerator):
    """Data, recipe, step plan, model and the derived values; nothing written yet."""
    from clasp.finetune.batches import StepPlan
    from clasp.finetune.recipes import RECIPES

    data = load_data(config)
    recipe = RECIPES[config.task](config, data)
    try:
        plan = StepPlan(recipe.epoch_batches, accelerator.process_index, accelerator.num_processes)
    except ValueError as exc:
        raise FinetuneInputError(f"{config.data}: {exc}") from None
    backbone = load_task_backbone(config, getattr(recipe, "input_hw", None))
    total = config.steps if config.steps is not None else config.epochs * plan.per_epoch
    derived = {"world_size": accelerator.num_processes, "total_steps": total, "batches_per_epoch": plan.per_epoch,
               "images_per_step": recipe.batch_images * accelerator.num_processes,
               "layout": getattr(data, "layout", None), "task_prompt": backbone.task,
               "train_images": len(recipe.train) if hasattr(recipe, "train") else len(data.train_paths),
               "outputs": _output_names(config, data)}
    return recipe, plan, backbone, derived


def _output_names(config: FinetuneConfig, data) -> Any:
    if config.task == "reid":
        return data.num_classes
    return list(data.names) if config.task == "attributes" else list(data.class_names)


def _build_model(config, recipe, backbone, accelerator, precision: str):
    from accelerate.utils import set_seed

    from clasp.finetune.model import FinetuneModel, param_groups
    from clasp.hardware.host_memory import keep_freed_memory_on
    from clasp.pretraining.compile_blocks import compile_if_asked

    keep_freed_memory_on(accelerator.device.type)  # else each step page-faults its activations in again
    set_seed(config.seed)
    vit = backbone.backbone
    if config.freeze_backbone:
        backbone.requires_grad_(False)
    model = FinetuneModel(backbone, recipe.head(vit.config.dim, vit.config.grid))
    compile_if_asked(model, config.compile, precision, accelerator.device.type)
    optimizer = torch.optim.AdamW(param_groups(model, config.weight_decay, config.layer_decay), lr=0.0)
    model, optimizer = accelerator.prepare(model, optimizer)
    return model, optimizer, accelerator.unwrap_model(model)


class StepData(torch.utils.data.Dataset):
    """Item `step` = this process's augmented batch of that step."""

    def __init__(self, recipe, plan, seed: int, rank: int) -> None:
        self.recipe, self.plan, self.seed, self.rank = recipe, plan, seed, rank

    def __len__(self) -> int:
        return 2 ** 62

    def __getitem__(self, step: int) -> dict[str, torch.Tensor]:
        from clasp.finetune.augment import batch_generator

        return self.recipe.load(self.plan.batch(step), batch_generator(self.seed, step, self.rank))


def _loader(config, recipe, plan, accelerator, start: int, end: int):
    from clasp.hardware import dataloader_workers, use_available_cores

    on_host = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
    use_available_cores(on_host, config.threads)
    workers = config.num_workers if config.num_workers is not None else dataloader_workers(
        accelerator.device.type, on_host)
    data = StepData(recipe, plan, config.seed, accelerator.process_index)
    return torch.utils.data.DataLoader(data, batch_size=None, sampler=range(start, end), num_workers=workers,
                                       persistent_workers=False)


def _resume_or_start(folder: RunPlan, model, optimizer, accelerator) -> int:
    """The step to start from: a checkpoint's (weights, optimizer, scaler and RNG restored), else 0."""
    if folder.resume_from is None:
        return 0
    rank = accelerator.process_index
    loaded = load_checkpoint(folder.resume_from, model, optimizer, accelerator.scaler, rank, with_stream=False)
    restore_checkpoint_rng(loaded, rank)
    return loaded.step


def _run(config: FinetuneConfig, accelerator, precision) -> FinetuneResult:
    recipe, plan, backbone, derived = _setup(config, accelerator)
    model, optimizer, unwrapped = _build_model(config, recipe, backbone, accelerator, precision.precision)
    hardware = precision.record()
    saved_config = saved_form(asdict(config), derived) | {"hardware": hardware}
    folder = plan_run_folder(config.out, config.resume, config.force, RUN_FILES, RESUME_RULE, asdict(config),
                             derived)
    start = _resume_or_start(folder, unwrapped, optimizer, accelerator)
    take_run_folder(accelerator, folder, RUN_FILES, saved_config, start)
    trackers = start_trackers(accelerator, f"clasp-finetune-{config.task}", config.run_name, config.out, saved_config,
                              start if config.resume else None)
    if accelerator.is_main_process:
        log.info(precision.line())
    total = derived["total_steps"]
    end = min(total, config.stop_at) if config.stop_at is not None else total
    lrs = lr_schedule(config.schedule, total, config.lr, config.warmup, config.min_lr, config.milestone_fractions(),
                      config.gamma)
    loop = _Loop(config, accelerator, model, optimizer, unwrapped, recipe, saved_config, lrs, trackers)
    step, stopped_by = loop.train(_loader(config, recipe, plan, accelerator, start, end), start, end, total, plan)
    results = None
    if step == total:
        results = _finish(config, accelerator, recipe, unwrapped, derived, hardware, step)
        trackers.log_row(step, {"results": results or {}})  # the final scores, beside the last metrics row
    accelerator.end_training()
    return FinetuneResult(Path(config.out), step, total, stopped_by, results, loop.last_loss)


def _finish(config, accelerator, recipe, model, derived, hardware, step) -> dict | None:
    results = None
    if accelerator.is_main_process:
        model.eval()
        t0 = time.perf_counter()
        metrics = recipe.evaluate(model, accelerator.device, accelerator.autocast, log.info)
        results = {"task": config.task, "layout": derived["layout"], "backbone": str(config.backbone),
                   "task_prompt": derived["task_prompt"], "data": str(config.data), "steps": step,
                   "metrics_are": "fractions in [0, 1]", **metrics,
                   "seconds": {"evaluation": time.perf_counter() - t0}, "compute_precision": hardware.get("precision")}
        results = write_results(Path(config.out) / RESULTS, results)  # NaN as null with its reason
        model.train()
    accelerator.wait_for_everyone()
    return results


@dataclass
class StepDone:
    """One step's statistics (means over the processes) and whether a stop signal ends the run after it."""

    stats: dict[str, float]
    stop: bool


class _Loop:
    """Fine-tuning's part of `clasp.runs.step_loop`: its step (schedule, forward, loss, backward), its log row
    and its checkpoint."""

    def __init__(self, config, accelerator, model, optimizer, unwrapped, recipe, saved_config, lrs,
                 trackers: Trackers) -> None:
        self.config, self.accelerator, self.model, self.optimizer = config, accelerator, model, optimizer
        self.unwrapped, self.recipe, self.saved_config, self.lrs = unwrapped, recipe, saved_config, lrs
        self.trackers = trackers
        self.last_loss: float | None = None
        self.out = Path(config.out)
        self.writer = CheckpointWriter(self.out, accelerator.process_index, accelerator.is_main_process,
                                       config.keep_checkpoints)
        self.step_no = 0

    def last_checkpoint(self) -> str:
        return str(find_checkpoint(self.out) or "none")

    def save(self) -> None:
        self.writer.save(self.accelerator, self.step_no, self.unwrapped, self.optimizer, self.saved_config)

    def step(self, batch: dict, stop: bool) -> StepDone:
        acc, config = self.accelerator, self.config
        if config.freeze_backbone:
            self.unwrapped.backbone.eval()  # a frozen backbone stays in eval mode
        for group in self.optimizer.param_groups:
            group["lr"] = float(self.lrs[self.step_no]) * group["lr_scale"]
        batch = {k: v.to(acc.device) for k, v in batch.items()}
        loss, stats = self.recipe.loss(self.model(batch["images"]), batch)
        summed = reduce_stats(acc, {"loss": loss, **stats}, stop_flag=float(stop))
        check_finite(summed, self.step_no + 1, acc.num_processes, self.last_checkpoint, ("loss",))
        acc.backward(loss)
        means = {k: float(v) / acc.num_processes for k, v in summed.items() if not k.startswith("_")}
        if config.clip_grad > 0:
            means["grad_norm"] = float(acc.clip_grad_norm_(self.model.parameters(), config.clip_grad))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step_no += 1
        self.last_loss = means["loss"]
        return StepDone(means, float(summed[STOP]) > 0)

    def train(self, loader, start: int, end: int, total: int, plan) -> tuple[int, str]:
        """Steps `start` to `end` (or a stop signal); (the step reached, what stopped it)."""
        from tqdm.auto import tqdm

        acc = self.accelerator
        metrics = MetricsLog(self.out, acc.is_main_process, self.trackers)
        bar = tqdm(total=total, initial=start, disable=not acc.is_main_process, unit="step",
                   desc=f"finetune {self.config.task}")
        batches, clock = iter(loader), [time.perf_counter()]
        self.step_no = start

        def log_row(done: StepDone) -> None:
            elapsed, clock[0] = time.perf_counter() - clock[0], time.perf_counter()
            metrics.write({"step": self.step_no, **done.stats, "lr": float(self.lrs[self.step_no - 1]),
                           "epoch": plan.epoch_of(self.step_no - 1), "seconds": elapsed})

        def take_step() -> StepDone:
            done = self.step(next(batches), signals.received is not None)
            bar.update(1)
            bar.set_postfix(loss=f"{done.stats['loss']:.4f}")
            return done

        self.writer.remove_unfinished()
        try:
            with run_stop_signals(self.out, acc.is_main_process, lambda: self.step_no + 1) as signals:
                # on a CPU, the load is re-checked during the run and the torch threads follow it
                on_host = int(os.environ.get("LOCAL_WORLD_SIZE", acc.num_processes))
                rechecked = watch_load(take_step, acc.device.type, on_host, self.config.threads)
                step, stopped_by = run_steps(start, Every(self.config.log_every, self.config.save_every, end),
                                             signals, rechecked, log_row, self.save)
        finally:
            bar.close()
            metrics.close()
        return step, stopped_by or ("end" if end == total else "stop_at")
