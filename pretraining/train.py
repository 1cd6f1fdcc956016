"""`clasp pretrain`: the Accelerate training loop, with checkpoints and exact resume.

One optimizer step = `grad_accum` micro-batches of `batch_size` images on each
process. Per step: the schedules give lr, weight decay and teacher momentum for
this global step; each micro-batch runs `model(batch, step)` under
`accelerator.accumulate`; the losses of all processes are summed in one small
all-reduce (which also carries the stop flag, so every process stops at the
same step, and shows a non-finite loss on any process to all of them before
any gradient of it is applied); then gradient clipping, AdamW, and the EMA
teacher update.

The pieces, in the order a run meets them: `run_state.prepare_run` (inputs
checked, model built, resumed, folder taken), then `clasp.runs.step_loop`
driving `optimizer_step` (one step), `log_step` and `save_checkpoint`, then
`finish`. Data: `batch_source.py`. The run folder, checkpoints, schedules,
signals and the accelerator are `clasp.runs`'.

Stopping: `stop_at`, SIGTERM and SIGINT end the run at the next step boundary
with a checkpoint (`clasp.runs.stop_signals`; a second signal exits at once); `resume` continues from the newest
checkpoint with the same model, optimizer, scaler, teacher, DINO centre (all in
the model's state), global step (which indexes the schedules), data position
and RNG states, so the steps after a resume reproduce an uninterrupted run.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from clasp.errors import InputError, one_line
from clasp.hardware.recheck import watch_load
from clasp.pretraining.batch_source import BatchSource  # noqa: F401 - tests patch it here
from clasp.pretraining.config import PretrainConfig
from clasp.pretraining.errors import PretrainInputError, RunFailedError
from clasp.pretraining.run_state import RunState, prepare_run
from clasp.pretraining.step_stats import LOSS_TERMS, metrics_row
from clasp.runs import FolderLockError, exclusive_run_folder
from clasp.runs.accelerator import make_accelerator
from clasp.runs.checkpoint import CheckpointWriteError, find_checkpoint
from clasp.runs.error_log import write_error_log
from clasp.runs.step_loop import Every, run_steps
from clasp.runs.step_stats import NonFiniteLossError, check_finite, reduce_stats
from clasp.runs.stop_signals import StopSignals, run_stop_signals
from clasp.runs.trackers import accelerator_options

log = logging.getLogger("clasp")

__all__ = ["PretrainInputError", "PretrainResult", "RunFailedError", "run_pretraining"]


@dataclass
class PretrainResult:
    run_dir: Path
    step: int  # optimizer steps completed
    total_steps: int
    stopped_by: str  # "end", "stop_at" or the signal name ("SIGTERM", "SIGINT")
    checkpoint: Path | None  # the newest checkpoint
    last_loss: float | None


@dataclass
class StepOutcome:
    """What one optimizer step leaves for the log: statistics summed over processes, the schedules' values."""

    stats: dict[str, torch.Tensor]  # summed over processes, averaged over the micro-batches
    lr: float
    wd: float
    momentum: float
    grad_norm: Any  # before clipping; None without clipping
    stop: bool  # a stop signal reached some process: this is the last step


def run_pretraining(config: PretrainConfig) -> PretrainResult:
    """Train (or continue) the run `config.out` on the store `config.shards`.

    Raises PretrainInputError for input problems found before the
    first step (having written nothing to `out` but `error.log`), and
    NonFiniteLossError when a loss goes NaN/inf (the last good checkpoint stays).
    """
    threads = torch.get_num_threads()  # the run sets its own; a caller's stays as it was
    try:
        config.validate()
        accelerator, precision = make_accelerator(config.precision, config.grad_accum,
                                                  **accelerator_options(config.report_to, config.out))
        with exclusive_run_folder(config.out, "clasp pretrain", accelerator):
            return _run(config, accelerator, precision)
    except FolderLockError as exc:  # another run holds the folder: write nothing there, not even error.log
        raise PretrainInputError(str(exc)) from None
    except (PretrainInputError, InputError) as exc:  # the settings, the store, the folder, a checkpoint
        if os.environ.get("RANK", "0") == "0":  # the launcher's global rank; one log line, not one per process
            write_error_log(config.out, str(exc))
        raise PretrainInputError(str(exc)) from None
    except (RunFailedError, NonFiniteLossError) as exc:
        if os.environ.get("RANK", "0") == "0":
            write_error_log(config.out, str(exc))
        raise
    finally:
        torch.set_num_threads(threads)


def _run(config: PretrainConfig, accelerator, precision) -> PretrainResult:
    """The loop: one optimizer step, then a metrics line and a checkpoint when due, until the end or a stop."""
    from clasp.pretraining.stream import BadRowError

    run = prepare_run(config, accelerator, precision)
    every = Every(config.log_every, config.save_every, run.end_step)
    try:
        with run_stop_signals(run.out, run.is_main, lambda: run.step + 1) as signals:
            run.window.start()
            # on a CPU, the load is re-checked during the run and the torch threads follow it (hardware/recheck.py)
            take_step = watch_load(partial(optimizer_step, run, signals), accelerator.device.type,
                                   run.inputs.hardware["processes_on_host"], config.threads)
            _, signal_name = run_steps(run.step, every, signals, take_step, partial(log_step, run),
                                       partial(save_checkpoint, run))
            run.stopped_by = signal_name or run.stopped_by
    except (RunFailedError, NonFiniteLossError):
        raise
    except (BadRowError, MemoryError, RuntimeError, OSError) as exc:
        failure = as_run_failure(run, exc)
        if failure is None:
            raise
        raise failure from None
    finally:
        run.close()
    return finish(run)


# ----------------------------------------------------------------------------- one optimizer step


def optimizer_step(run: RunState, signals: StopSignals) -> StepOutcome:
    """`grad_accum` micro-batches, then the EMA teacher; advances `run.step` and the data boundary."""
    lr, wd, momentum = run.schedules.at(run.step)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
        if group["name"] == "decay":  # the other group is exempt (model.param_groups)
            group["weight_decay"] = wd
    accum = run.config.grad_accum
    stats: dict[str, torch.Tensor] = {}
    grad_norm = None
    for _ in range(accum):
        summed, norm = micro_batch(run, signals)
        grad_norm = norm if norm is not None else grad_norm
        for key, value in summed.items():
            stats[key] = stats.get(key, 0) + value / accum
    run.core.update_teacher(momentum)
    run.step += 1
    run.boundary = run.stream.state_dict()
    run.window.step_done(float(stats["_images"] * accum))
    # a signal during this step's backward is seen now, not one step later (several processes
    # stop together, on the flag their all-reduce carried)
    stop = stats["_stop"].item() > 0 or (run.world == 1 and signals.received is not None)
    run.last_loss = float(stats["loss"] / run.world)
    run.bar.update(1)
    return StepOutcome(stats, lr, wd, momentum, grad_norm, stop)


def micro_batch(run: RunState, signals: StopSignals) -> tuple[dict[str, torch.Tensor], Any]:
    """Forward, the all-reduce of the statistics (refusing a non-finite loss), backward, and the optimizer
    when accumulation is complete; (summed statistics, gradient norm or None)."""
    accelerator = run.accelerator
    batch = run.batches.next(run.window)
    run.rows.batch(run.step + 1, batch.row_id)
    grad_norm = None
    with accelerator.accumulate(run.model):
        loss, stats = run.model(batch, run.step)
        summed = reduce_stats(accelerator, stats, batch.batch_size, 1.0 if signals.received else 0.0)
        check_finite(summed, run.step + 1, run.world, partial(last_complete, run), LOSS_TERMS)
        accelerator.backward(loss)
        if accelerator.sync_gradients:
            grad_norm = finish_gradients(run)
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
    return summed, grad_norm


def finish_gradients(run: RunState):
    """Clip (when `clip_grad` > 0; returns the norm before clipping) and, during the first
    `freeze_last_layer_steps`, drop the DINO prototypes' gradient."""
    grad_norm = None
    if run.config.clip_grad > 0:
        grad_norm = run.accelerator.clip_grad_norm_(run.model.parameters(), run.config.clip_grad)
    if run.step < run.config.freeze_last_layer_steps:
        run.core.drop_prototype_gradients()
    return grad_norm


# ----------------------------------------------------------------------------- logging and saving


def log_step(run: RunState, outcome: StepOutcome) -> None:
    """One line of metrics.jsonl (main process; the trackers of `report_to` get it too) and the progress bar's
    numbers."""
    row = metrics_row(run.step, outcome.stats, run.world, outcome.lr, outcome.wd, outcome.momentum,
                      outcome.grad_norm, run.window.take())
    row.update(epoch=run.stream.epoch, precision=run.precision.precision, device=run.inputs.hardware["device"])
    run.metrics.write(row)
    run.bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['images_per_s']:.1f}",
                        wait=f"{row['data_wait']:.0%}")


def save_checkpoint(run: RunState, stream_state: dict | None = None) -> Path | None:
    """A checkpoint of `run.step` written by every process together; a failed write ends the run."""
    try:
        run.checkpoint = _write_checkpoint(run, stream_state if stream_state is not None else run.stream.state_dict())
    except CheckpointWriteError as exc:
        raise RunFailedError(f"step {run.step}: {exc}") from None
    run.last_saved = run.step
    return run.checkpoint


def _write_checkpoint(run: RunState, stream_state: dict) -> Path:
    return run.writer.save(run.accelerator, run.step, run.core, run.optimizer, run.inputs.saved_config, stream_state,
                           {"total_steps": run.total_steps, "epoch": run.stream.epoch})


def finish(run: RunState) -> PretrainResult:
    """The last checkpoint (when the last step has none yet), the closing line, the result."""
    if run.last_saved != run.step and run.step > run.start_step:
        save_checkpoint(run)
    run.rows.final_state(run.step, run.core)  # lets a test check that every process ends with the same weights
    run.accelerator.wait_for_everyone()
    if run.is_main:
        how = {"end": "finished", "stop_at": "stopped at --stop-at"}.get(run.stopped_by, f"stopped by {run.stopped_by}")
        run.accelerator.print(f"{how}: step {run.step} of {run.total_steps}; checkpoint {run.checkpoint}")
    run.accelerator.end_training()
    return PretrainResult(run.out, run.step, run.total_steps, run.stopped_by, run.checkpoint, run.last_loss)


# ----------------------------------------------------------------------------- failures


def last_complete(run: RunState) -> str:
    return str(find_checkpoint(run.out) or "none")


def as_run_failure(run: RunState, exc: BaseException) -> RunFailedError | None:
    """The one-line failure for a bad row, out of memory or a write error during the loop; None: not one
    of those (re-raise it). A bad row in a single-process run first saves the last finished step."""
    from clasp.pretraining.stream import BadRowError

    if isinstance(exc, BadRowError):
        where = f"the last complete checkpoint is {last_complete(run)}"
        if run.world == 1 and run.step > max(run.last_saved, run.start_step):  # a save is collective
            where = f"saved the last finished step as {save_checkpoint(run, run.boundary)}; continue with --resume"
        return RunFailedError(f"{exc}; {where}")
    if isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and is_out_of_memory(exc)):
        return RunFailedError(f"step {run.step + 1}: out of memory ({type(exc).__name__}); lower batch_size or the "
                              f"crops; the last complete checkpoint is {last_complete(run)}")
    if isinstance(exc, OSError):
        return RunFailedError(f"{getattr(exc, 'filename', None) or run.out}: step {run.step + 1}: "
                              f"{exc.strerror or one_line(exc, 300)}; the last complete checkpoint is {last_complete(run)}")
    return None


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's allocation failures: OutOfMemoryError on a GPU, a RuntimeError naming the allocator on a CPU."""
    oom = getattr(torch, "OutOfMemoryError", None)
    text = str(exc)
    return (oom is not None and isinstance(exc, oom)) or "can't allocate memory" in text or "out of memory" in text
