"""`clasp finetune`: an exported backbone + a task head, trained with Accelerate, evaluated at the end.

Per step: the learning rate of this global step (precomputed schedule, times
each group's layer-decay scale); this process's batch, a pure function of
(seed, step, rank) (`batches.StepPlan`, `augment.batch_generator`), so the
step alone is the data position; forward, the recipe's loss; one all-reduce
of the statistics that also carries the stop flag and shows a non-finite loss
on any process to all before its gradient is applied; backward, clipping,
AdamW. Checkpoints every `save_every` steps, at the end and on SIGTERM/SIGINT;
`resume` restores weights (BatchNorm statistics included), optimizer, step and
RNG, so the steps after it reproduce an uninterrupted run. At the end the main
process evaluates and writes `results.json`. Each metrics.jsonl row also goes
to the trackers of `report_to` (`clasp.runs.trackers`), and the final scores as
`results/NAME` at the last step.

The DataLoader is not passed to `accelerator.prepare`: each process already
reads only its own batches (Known pitfalls, DESIGN.md). `make_accelerator`
follows pre-training's (precision `auto` resolved once by `clasp.hardware`).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from clasp.finetune.checkpoint import (
    ERROR_LOG, METRICS, RESULTS, RunFolderError, load_checkpoint, plan_run, save_checkpoint, wipe,
    write_error_log,
)
from clasp.finetune.config import CONFIG_NAME, FinetuneConfig, FinetuneConfigError, saved_form
from clasp.errors import InputError
from clasp.finetune.data import FinetuneInputError, load_data
from clasp.runs import FolderLockError, exclusive_run_folder
from clasp.runs.metrics_log import MetricsLog, truncate_jsonl
from clasp.runs.trackers import Trackers, accelerator_options, start_trackers
from clasp.evaluation.results_json import write_results
from clasp.common.durable import write_json_atomic

log = logging.getLogger("clasp")
ACCELERATE_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the step was not applied."""


@dataclass
class FinetuneResult:
    out: Path
    step: int
    total_steps: int
    stopped_by: str  # end | stop_at | SIGTERM | SIGINT
    results: dict | None  # the final metrics (main process, finished runs)
    last_loss: float | None


def make_accelerator(precision: str, **options):
    """The Accelerator with `precision` resolved on its device; `options`: more of its arguments (trackers)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState, PartialState
    from accelerate.utils import parse_flag_from_env

    from clasp.hardware import PrecisionError, probe_capability, resolve_precision

    AcceleratorState._reset_state()
    GradientState._reset_state()
    try:
        device = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU")).device
        choice = resolve_precision(precision, probe_capability(device))
    except PrecisionError as exc:
        raise FinetuneConfigError(str(exc)) from None
    return Accelerator(mixed_precision=ACCELERATE_PRECISION[choice.precision], **options), choice


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
    what was written, its last checkpoint included."""
    threads = torch.get_num_threads()
    try:
        config.validate()
        accelerator, precision = make_accelerator(config.precision, **accelerator_options(config.report_to, config.out))
        with exclusive_run_folder(config.out, "clasp finetune", accelerator):
            return _run(config, accelerator, precision)
    except FolderLockError as exc:  # another run holds the folder: write nothing there, not even error.log
        raise FinetuneInputError(str(exc)) from None
    except (FinetuneInputError, FinetuneConfigError, RunFolderError, InputError) as exc:
        message = input_error_line(exc)
        if os.environ.get("RANK", "0") == "0":
            write_error_log(config.out, message)
        raise FinetuneInputError(message) from None
    finally:
        torch.set_num_threads(threads)


def input_error_line(exc: BaseException) -> str:
    """The message on one line; for one re-raised from a DataLoader worker (torch puts "Caught X in
    DataLoader worker process N. Original Traceback ..." before it), the original's message."""
    text = str(exc).strip()
    if "Original Traceback" in text and text.splitlines():
        last = text.splitlines()[-1]
        text = re.sub(r"^[\w.]*(EvalInputError|DatasetError): ", "", last)
    return " ".join(text.split())


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


def _build_model(config, recipe, backbone, accelerator):
    from accelerate.utils import set_seed

    from clasp.finetune.model import FinetuneModel, param_groups

    set_seed(config.seed)
    vit = backbone.backbone
    if config.freeze_backbone:
        backbone.requires_grad_(False)
    model = FinetuneModel(backbone, recipe.head(vit.config.dim, vit.config.grid))
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
    use_available_cores(on_host)
    workers = config.num_workers if config.num_workers is not None else dataloader_workers(
        accelerator.device.type, on_host)
    data = StepData(recipe, plan, config.seed, accelerator.process_index)
    return torch.utils.data.DataLoader(data, batch_size=None, sampler=range(start, end), num_workers=workers,
                                       persistent_workers=False)


class StopSignals:
    """SIGTERM/SIGINT set a flag read at the next step boundary."""

    def __enter__(self) -> "StopSignals":
        self.received, self._previous = None, {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame) -> None:
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _reduce(accelerator, stats: dict[str, torch.Tensor], stop: bool) -> dict[str, float]:
    """Mean of every statistic over the processes (one all-reduce), plus the stop flag summed."""
    names = sorted(stats)
    vector = torch.stack([stats[n].detach().float().reshape(()) for n in names]
                         + [torch.tensor(float(stop), device=accelerator.device)]).to(accelerator.device)
    if accelerator.num_processes > 1:
        vector = accelerator.reduce(vector, reduction="sum")
    values = vector.cpu().tolist()
    out = {n: v / accelerator.num_processes for n, v in zip(names, values[:-1])}
    out["_stop"] = values[-1]
    return out


def _prepare_folder(config, accelerator, saved_config, derived, unwrapped, optimizer) -> int:
    """Claim the run folder (after every input check) and restore a checkpoint; the step to start from."""
    resume_from, wipe_first = plan_run(config, derived)
    out = Path(config.out)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        if wipe_first:
            wipe(out)
        (out / ERROR_LOG).unlink(missing_ok=True)
        write_json_atomic(out / CONFIG_NAME, saved_config)
    start = 0
    if resume_from is not None:
        start = load_checkpoint(resume_from, unwrapped, optimizer, accelerator.scaler, accelerator.process_index)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process and resume_from is not None:
        truncate_jsonl(out / METRICS, start)
    return start


def _run(config: FinetuneConfig, accelerator, precision) -> FinetuneResult:
    from clasp.finetune.losses import lr_schedule

    recipe, plan, backbone, derived = _setup(config, accelerator)
    model, optimizer, unwrapped = _build_model(config, recipe, backbone, accelerator)
    hardware = precision.record()
    saved_config = saved_form(config, derived) | {"hardware": hardware}
    start = _prepare_folder(config, accelerator, saved_config, derived, unwrapped, optimizer)
    trackers = start_trackers(accelerator, f"clasp-finetune-{config.task}", config.run_name, config.out, saved_config,
                              start if config.resume else None)
    if accelerator.is_main_process:
        log.info(precision.line())
    total = derived["total_steps"]
    end = min(total, config.stop_at) if config.stop_at is not None else total
    lrs = lr_schedule(total, config.lr, config.min_lr, config.warmup, config.schedule,
                      config.milestone_fractions(), config.gamma)
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


class _Loop:
    """The step loop: schedule, forward/backward, logging, checkpoints, stop flags."""

    def __init__(self, config, accelerator, model, optimizer, unwrapped, recipe, saved_config, lrs,
                 trackers: Trackers) -> None:
        self.config, self.accelerator, self.model, self.optimizer = config, accelerator, model, optimizer
        self.unwrapped, self.recipe, self.saved_config, self.lrs = unwrapped, recipe, saved_config, lrs
        self.trackers = trackers
        self.last_loss: float | None = None
        self.out = Path(config.out)

    def save(self, step: int) -> None:
        save_checkpoint(self.accelerator, self.out, step, self.unwrapped, self.optimizer, self.saved_config,
                        self.config.keep_checkpoints)

    def step(self, step: int, batch: dict, stop: bool) -> dict[str, float]:
        acc, config = self.accelerator, self.config
        if config.freeze_backbone:
            self.unwrapped.backbone.eval()  # a frozen backbone stays in eval mode
        for group in self.optimizer.param_groups:
            group["lr"] = float(self.lrs[step]) * group["lr_scale"]
        batch = {k: v.to(acc.device) for k, v in batch.items()}
        out = self.model(batch["images"])
        loss, stats = self.recipe.loss(out, batch)
        summed = _reduce(acc, {"loss": loss, **stats}, stop)
        bad = [k for k, v in summed.items() if not torch.isfinite(torch.tensor(v))]
        if bad:
            raise NonFiniteLossError(f"step {step + 1}: {bad[0]} is {summed[bad[0]]}; stopped without applying it")
        acc.backward(loss)
        if config.clip_grad > 0:
            summed["grad_norm"] = float(acc.clip_grad_norm_(self.model.parameters(), config.clip_grad))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return summed

    def train(self, loader, start: int, end: int, total: int, plan) -> tuple[int, str]:
        from tqdm.auto import tqdm

        acc, config = self.accelerator, self.config
        metrics = MetricsLog(self.out, acc.is_main_process, self.trackers)
        bar = tqdm(total=total, initial=start, disable=not acc.is_main_process, unit="step", desc=f"finetune {config.task}")
        step, stopped_by, t0 = start, "end" if end == total else "stop_at", time.perf_counter()
        try:
            with StopSignals() as signals:
                for batch in loader:
                    summed = self.step(step, batch, signals.received is not None)
                    step += 1
                    self.last_loss = summed["loss"]
                    stop = summed.pop("_stop") > 0
                    bar.update(1)
                    bar.set_postfix(loss=f"{summed['loss']:.4f}")
                    if step % config.log_every == 0 or step == end or stop:
                        elapsed, t0 = time.perf_counter() - t0, time.perf_counter()
                        metrics.write({"step": step, **summed, "lr": float(self.lrs[step - 1]),
                                       "epoch": plan.epoch_of(step - 1), "seconds": elapsed})
                    if step % config.save_every == 0 or step == end or stop:
                        self.save(step)
                    if stop:
                        stopped_by = signals.received or "signal"
                        break
        finally:
            bar.close()
            metrics.close()
        return step, stopped_by
