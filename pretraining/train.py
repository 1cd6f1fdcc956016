"""`clasp pretrain`: the Accelerate training loop, with checkpoints and exact resume.

One optimizer step = `grad_accum` micro-batches of `batch_size` images on each
process. Per step: the schedules give lr, weight decay and teacher momentum for
this global step; each micro-batch runs `model(batch, step)` under
`accelerator.accumulate`; the losses of all processes are summed in one small
all-reduce (which also carries the stop flag, so every process stops at the
same step, and shows a non-finite loss on any process to all of them before
any gradient of it is applied); then gradient clipping, AdamW, and the EMA
teacher update.

Data: the shard stream splits rows by rank itself, so its DataLoader is not
passed to `accelerator.prepare` (accelerate 1.x would re-split an
IterableDataset with `IterableDatasetShard`, or dispatch every batch from rank
0 with `dispatch_batches=True`). Batches are moved with `batch.to(device)`.

Stopping: `stop_at`, SIGTERM and SIGINT end the run at the next step boundary
with a checkpoint; `resume` continues from the newest checkpoint with the same
model, optimizer, scaler, teacher, DINO centre (all in the model's state),
global step (which indexes the schedules), data position and RNG states, so
the steps after a resume reproduce an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from clasp.pretraining.checkpoint import (
    CONFIG_FILE, CheckpointError, CheckpointWriteError, CheckpointWriter, find_checkpoint, load_checkpoint, restore_rng,
)
from clasp.pretraining.config import ConfigError, PretrainConfig, saved_form
from clasp.pretraining.run_folder import (
    ERROR_LOG, METRICS_FILE, ROWS_LOG, RunFolderError, plan_run_folder, truncate_jsonl, wipe_run_files, write_error_log,
)
from clasp.pretraining.schedules import Schedules
from clasp.store.durable import write_json_atomic

log = logging.getLogger("clasp")

# The loss terms, in the order a non-finite one is reported.
LOSS_TERMS = ("dino", "part", "attribute", "balance", "loss")


class PretrainInputError(Exception):
    """Bad input found before the first step (store, run folder, settings): one line naming the file."""


class RunFailedError(RuntimeError):
    """The run started and could not go on (disk full, out of memory, a bad store row, a non-finite loss).

    One line naming what was being done; exit 1; the last complete checkpoint stays usable.
    """


class NonFiniteLossError(RunFailedError):
    """A loss term became NaN or infinite; training stopped without applying that step."""


@dataclass
class PretrainResult:
    run_dir: Path
    step: int  # optimizer steps completed
    total_steps: int
    stopped_by: str  # "end", "stop_at" or the signal name ("SIGTERM", "SIGINT")
    checkpoint: Path | None  # the newest checkpoint
    last_loss: float | None


# ----------------------------------------------------------------------------- setup


ACCELERATE_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


def make_accelerator(config: PretrainConfig):
    """The Accelerator, with `config.precision` resolved on its device; returns (accelerator, choice)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState, PartialState
    from accelerate.utils import parse_flag_from_env

    from clasp.hardware import PrecisionError, probe_capability, resolve_precision

    # A process may train more than once (tests, an evaluation pipeline): the
    # precision and accumulation settings of a previous run must not stick.
    AcceleratorState._reset_state()
    GradientState._reset_state()
    try:
        # The process state the Accelerator below will use (it reads ACCELERATE_USE_CPU the same way).
        device = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU")).device
        choice = resolve_precision(config.precision, probe_capability(device))
    except PrecisionError as exc:
        raise ConfigError(str(exc)) from None
    accelerator = Accelerator(mixed_precision=ACCELERATE_PRECISION[choice.precision],
                              gradient_accumulation_steps=config.grad_accum)
    return accelerator, choice


def use_process_cores(config: PretrainConfig, accelerator) -> dict[str, Any]:
    """Torch threads and DataLoader workers from the cores this process may use; what was chosen, for the record."""
    from clasp.hardware import available_cores, dataloader_workers, use_available_cores

    on_host = int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes))
    if config.num_workers is None:
        config.num_workers = dataloader_workers(accelerator.device.type, on_host)
    return {"available_cores": available_cores(), "processes_on_host": on_host,
            "torch_threads": use_available_cores(on_host), "num_workers": config.num_workers}


def model_config_for(config: PretrainConfig, vocab):
    """The model of a run: preset, MoE and head sizes, loss weights, vocabulary sizes."""
    from clasp.pretraining.model import LossConfig, ModelConfig

    overrides = {k: getattr(config, k) for k in ("dim", "depth", "heads") if getattr(config, k) is not None}
    return ModelConfig.build(
        config.preset, vocab, moe_layers=config.moe_layers, num_experts=config.experts, top_k=config.top_k,
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
        store = validate_store(config.shards, on_bad_row=config.on_bad_row)
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
    from clasp.pretraining.config import LIMITS

    if config.steps is not None:
        return config.steps
    steps = max(1, config.epochs * batches_per_epoch // config.grad_accum)
    if steps > LIMITS["steps"][1]:
        raise ConfigError(f"epochs {config.epochs} x {batches_per_epoch} batches per epoch / grad_accum "
                          f"{config.grad_accum} gives {steps} steps, more than {int(LIMITS['steps'][1])}", "epochs")
    return steps


# ----------------------------------------------------------------------------- signals


class StopSignals:
    """SIGTERM/SIGINT: the first sets `received`, which the loop reads at the next step boundary; the second
    ends the process at once (exit 128 + signal number), leaving the last complete checkpoint as it is.

    Python runs signal handlers in the main thread between bytecodes, so a handler waits as long as the
    C++ operation under way (one backward pass of the small preset takes tens of seconds on two busy
    cores), and signals that arrive meanwhile merge into one call: three SIGTERMs could end up as one
    late "stop at the next step". So the C-level handler's wakeup pipe (`signal.set_wakeup_fd`, one byte
    per signal delivered) is read by a watcher thread, which counts every signal as it arrives and does
    not wait for the main thread. `on_first(signal name)` and `on_exit_now(signal name)` return the line
    printed on the first signal and before the exit (None: print nothing).
    """

    def __init__(self, on_exit_now=None, on_first=None) -> None:
        self.received: str | None = None
        self.count = 0
        self._on_exit_now = on_exit_now
        self._on_first = on_first
        self._previous: dict[int, Any] = {}
        self._pipe: tuple[int, int] | None = None
        self._old_wakeup = -1

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is not threading.main_thread():
            return self  # handlers can only be set in the main thread: no clean stop
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        self._pipe = (read_fd, write_fd)
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        self._old_wakeup = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        threading.Thread(target=self._watch, args=(read_fd,), name="clasp-stop-signals", daemon=True).start()
        return self

    def _handle(self, signum: int, frame) -> None:
        """The Python-level handler: nothing to do, the watcher thread has counted the signal."""

    def _watch(self, read_fd: int) -> None:
        while True:
            try:
                data = os.read(read_fd, 64)
            except OSError:
                return
            if not data:
                os.close(read_fd)
                return
            for signum in data:
                if signum in (signal.SIGTERM, signal.SIGINT):
                    self.signal(signum)

    def signal(self, signum: int) -> None:
        """Count one stop signal: the first asks for a stop at the step boundary, the second exits now."""
        self.count += 1
        name = signal.Signals(signum).name
        if self.count == 1:
            self.received = name
            line = self._on_first(name) if self._on_first is not None else None
            if line:
                os.write(2, ("\n" + line + "\n").encode("utf-8", "replace"))
            return
        line = self._on_exit_now(name) if self._on_exit_now is not None else f"error: second {name}: stopped at once"
        try:
            os.write(2, (line + "\n").encode("utf-8", "replace"))
        finally:
            os._exit(128 + signum)

    def __exit__(self, *exc) -> None:
        if self._pipe is None:
            return
        signal.set_wakeup_fd(self._old_wakeup)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        os.close(self._pipe[1])  # the watcher reads end-of-file and returns
        self._pipe = None


# ----------------------------------------------------------------------------- the loop


def run_pretraining(config: PretrainConfig) -> PretrainResult:
    """Train (or continue) the run `config.out` on the store `config.shards`.

    Raises PretrainInputError / ConfigError for input problems found before the
    first step (having written nothing to `out` but `error.log`), and
    NonFiniteLossError when a loss goes NaN/inf (the last good checkpoint stays).
    """
    threads = torch.get_num_threads()  # the run sets its own; a caller's stays as it was
    try:
        config.validate()
        accelerator, precision = make_accelerator(config)
        return _run(config, accelerator, precision)
    except (PretrainInputError, ConfigError, RunFolderError) as exc:
        if os.environ.get("RANK", "0") == "0":  # the launcher's global rank; one log line, not one per process
            write_error_log(config.out, str(exc))
        raise PretrainInputError(str(exc)) from None
    except RunFailedError as exc:
        if os.environ.get("RANK", "0") == "0":
            write_error_log(config.out, str(exc))
        raise
    finally:
        torch.set_num_threads(threads)


def _run(config: PretrainConfig, accelerator, precision) -> PretrainResult:
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    from clasp.pretraining.host_memory import keep_freed_memory
    from clasp.pretraining.model import ClaspModel
    from clasp.pretraining.stream import BadRowError, make_loader

    rank, world = accelerator.process_index, accelerator.num_processes
    is_main = accelerator.is_main_process
    hardware = precision.record() | use_process_cores(config, accelerator)
    store, stream = open_stream(config, rank, world)
    total_steps = total_steps_for(config, stream.batches_per_epoch)
    total_batch = config.batch_size * world * config.grad_accum
    derived = {"world_size": world, "total_batch": total_batch, "peak_lr": config.lr * total_batch / 256,
               "total_steps": total_steps, "batches_per_epoch": stream.batches_per_epoch,
               "data": data_fingerprint(store.manifest)}
    plan = plan_run_folder(config, derived)
    if is_main:  # once the inputs are known to be good, so that a refusal stays one line
        log.info(precision.line())
        if precision.warning:
            log.warning(precision.warning)
    model_config = model_config_for(config, store.manifest.vocab)
    # `hardware` records what this start ran with; resume does not compare it.
    saved_config = saved_form(config, derived) | {"model": model_config.to_dict(), "hardware": hardware}

    if accelerator.device.type == "cpu":
        keep_freed_memory()  # steps would otherwise page-fault their activations in again each time
    set_seed(config.seed)
    model = ClaspModel(model_config)
    optimizer = torch.optim.AdamW(model.param_groups(), lr=0.0)
    model, optimizer = accelerator.prepare(model, optimizer)
    core = accelerator.unwrap_model(model)
    loader = make_loader(stream, config.num_workers)
    schedules = Schedules.build(total_steps, derived["peak_lr"], config.min_lr, config.warmup, config.weight_decay,
                                config.weight_decay_end, config.momentum_teacher, config.momentum_teacher_end)

    start_step, rng_state = 0, None
    if plan.resume_from is not None:  # everything it reads is checked before the folder is touched
        start_step, rng_state = resume_state(plan.resume_from, core, optimizer, accelerator.scaler, stream, rank)
        try:
            restore_rng(rng_state)
        except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
            raise PretrainInputError(f"{plan.resume_from / f'rng-rank{rank}.pt'}: not an RNG state "
                                     f"({type(exc).__name__}: {' '.join(str(exc).split())[:200]})") from None
    else:
        set_seed(config.seed, device_specific=True)  # per-process randomness from here on

    # Nothing has been written yet; from here on the folder is ours.
    accelerator.wait_for_everyone()
    out = plan.out
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        if plan.wipe:
            wipe_run_files(out)
        (out / ERROR_LOG).unlink(missing_ok=True)
        write_json_atomic(out / CONFIG_FILE, saved_config)  # --resume reads it: never half-written
    accelerator.wait_for_everyone()
    if is_main and plan.resume_from is not None:
        truncate_jsonl(out / METRICS_FILE, start_step)
    rows_log = None
    if config.log_rows:
        rows_path = out / ROWS_LOG.format(rank=rank)
        truncate_jsonl(rows_path, start_step)
        rows_log = open(rows_path, "a", encoding="utf-8")

    writer = CheckpointWriter(out, rank, is_main, config.keep_checkpoints)
    writer.remove_unfinished()
    metrics = open(out / METRICS_FILE, "a", encoding="utf-8") if is_main else None
    stop_at = config.stop_at if config.stop_at is not None else total_steps
    end_step = min(total_steps, stop_at)
    bar = tqdm(total=total_steps, initial=start_step, disable=not is_main, unit="step", dynamic_ncols=True,
               desc="pretrain")
    batches = BatchSource(stream, loader, accelerator.device)
    step, last_saved, last_loss = start_step, start_step if plan.resume_from else -1, None
    checkpoint = plan.resume_from
    stopped_by = "end" if end_step == total_steps else "stop_at"
    window = ThroughputWindow()

    def save(at_step: int, stream_state: dict | None = None) -> Path | None:
        try:
            return _save(at_step, stream_state if stream_state is not None else stream.state_dict())
        except CheckpointWriteError as exc:
            raise RunFailedError(f"step {at_step}: {exc}") from None

    def _save(at_step: int, stream_state: dict) -> Path | None:
        tmp = writer.begin(at_step)
        accelerator.wait_for_everyone()
        if is_main:
            writer.write_shared(tmp, core, optimizer, accelerator.scaler, saved_config)
        writer.write_own(tmp, stream_state)
        accelerator.wait_for_everyone()
        final = None
        if is_main:
            final = writer.commit(tmp, at_step, {"step": at_step, "total_steps": total_steps, "world_size": world,
                                                 "epoch": stream.epoch, "time": time.time()})
        accelerator.wait_for_everyone()
        return final or find_checkpoint(out, at_step)

    def exit_now_line(name: str) -> str:
        line = (f"second {name}: stopped at once during step {step + 1}; the last complete checkpoint is "
                f"{find_checkpoint(out) or 'none'}; continue with --resume")
        if is_main:
            write_error_log(out, line)
        return f"error: {line}"

    def first_line(name: str) -> str | None:
        return (f"{name}: stopping after step {step + 1} with a checkpoint; send it again to stop at once"
                if is_main else None)

    boundary = stream.state_dict()  # the data position after the last finished step
    try:
        with StopSignals(exit_now_line, first_line) as signals:
            window.start()
            while step < end_step:
                lr, wd, momentum = schedules.at(step)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                    if group["name"] == "decay":  # the other group is exempt (model.param_groups)
                        group["weight_decay"] = wd
                step_stats: dict[str, torch.Tensor] = {}
                grad_norm = None
                for _ in range(config.grad_accum):
                    batch = batches.next(window)
                    if rows_log is not None:
                        rows_log.write(json.dumps({"step": step + 1, "rows": batch.row_id.tolist()}) + "\n")
                    with accelerator.accumulate(model):
                        loss, stats = model(batch, step)
                        stop_flag = 1.0 if signals.received else 0.0
                        summed = reduce_stats(accelerator, stats, batch.batch_size, stop_flag)
                        bad = first_non_finite(summed)
                        if bad is not None:
                            raise NonFiniteLossError(
                                f"step {step + 1}: loss term {bad!r} is {summed[bad].item()} (summed over "
                                f"{world} process(es)); stopped without applying it. Last good checkpoint: "
                                f"{find_checkpoint(out) or 'none'}")
                        accelerator.backward(loss)
                        if accelerator.sync_gradients:
                            if config.clip_grad > 0:
                                grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.clip_grad)
                            if step < config.freeze_last_layer_steps:
                                core.drop_prototype_gradients()
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                    for key, value in summed.items():
                        step_stats[key] = step_stats.get(key, 0) + value / config.grad_accum
                core.update_teacher(momentum)
                step += 1
                boundary = stream.state_dict()
                window.step_done(float(step_stats["_images"] * config.grad_accum))
                # a signal during this step's backward is seen now, not one step later (several processes
                # stop together, on the flag their all-reduce carried)
                stop_requested = step_stats["_stop"].item() > 0 or (world == 1 and signals.received is not None)
                last_loss = float(step_stats["loss"] / world)
                bar.update(1)
                if step % config.log_every == 0 or step == end_step or stop_requested:
                    row = metrics_row(step, step_stats, world, lr, wd, momentum, grad_norm, window.take())
                    row.update(epoch=stream.epoch, precision=precision.precision, device=hardware["device"])
                    if metrics is not None:
                        metrics.write(json.dumps(row) + "\n")
                        metrics.flush()
                    bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['images_per_s']:.1f}",
                                    wait=f"{row['data_wait']:.0%}")
                if step % config.save_every == 0 or step == end_step or stop_requested:
                    checkpoint = save(step)
                    last_saved = step
                if stop_requested:
                    stopped_by = signals.received or "signal"
                    break
    except RunFailedError:
        raise
    except BadRowError as exc:
        where = f"the last complete checkpoint is {find_checkpoint(out) or 'none'}"
        if world == 1 and step > max(last_saved, start_step):  # a save is collective: one process only
            checkpoint = save(step, boundary)
            where = f"saved the last finished step as {checkpoint}; continue with --resume"
        raise RunFailedError(f"{exc}; {where}") from None
    except (MemoryError, RuntimeError) as exc:
        if not isinstance(exc, MemoryError) and not is_out_of_memory(exc):
            raise
        raise RunFailedError(f"step {step + 1}: out of memory ({type(exc).__name__}); lower batch_size or the "
                             f"crops; the last complete checkpoint is {find_checkpoint(out) or 'none'}") from None
    except OSError as exc:
        raise RunFailedError(f"{getattr(exc, 'filename', None) or out}: step {step + 1}: {exc.strerror or one_line(exc)}; "
                             f"the last complete checkpoint is {find_checkpoint(out) or 'none'}") from None
    finally:
        bar.close()
        if metrics is not None:
            metrics.close()
        if rows_log is not None:
            rows_log.close()
        batches.close()
    if last_saved != step and step > start_step:
        checkpoint = save(step)
    if config.log_rows:  # lets a test check that every process ends with the same weights
        with open(out / ROWS_LOG.format(rank=rank), "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, "state_sha256": state_digest(core)}) + "\n")
    accelerator.wait_for_everyone()
    if is_main:
        how = {"end": "finished", "stop_at": "stopped at --stop-at"}.get(stopped_by, f"stopped by {stopped_by}")
        accelerator.print(f"{how}: step {step} of {total_steps}; checkpoint {checkpoint}")
    accelerator.end_training()
    return PretrainResult(out, step, total_steps, stopped_by, checkpoint, last_loss)


# ----------------------------------------------------------------------------- helpers of the loop


def resume_state(path: Path, core, optimizer, scaler, stream, rank: int) -> tuple[int, dict]:
    """Load the checkpoint at `path` into the model, optimizer, scaler and stream; (step, RNG state).

    Anything that does not fit (shapes, a malformed trainer.json or stream state) is a PretrainInputError
    naming the file, raised before the run folder is touched further.
    """
    try:
        loaded = load_checkpoint(path, core, optimizer, scaler, rank)
    except CheckpointError as exc:
        raise PretrainInputError(str(exc)) from None
    stream_file = path / f"stream-rank{rank}.pt"
    try:
        if not isinstance(loaded.stream_state, dict):
            raise TypeError(f"expected a mapping, got {type(loaded.stream_state).__name__}")
        stream.load_state_dict(loaded.stream_state)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        detail = f"missing {exc}" if isinstance(exc, KeyError) else " ".join(str(exc).split())[:200]
        raise PretrainInputError(f"{stream_file}: not a usable stream position ({detail})") from None
    if not isinstance(loaded.rng, dict):
        raise PretrainInputError(f"{path / f'rng-rank{rank}.pt'}: not an RNG state")
    return loaded.trainer["step"], loaded.rng


class ThroughputWindow:
    """Images and time spent waiting for data since the last metrics line."""

    def start(self) -> None:
        self.t0 = time.perf_counter()
        self.wait = 0.0
        self.images = 0.0

    def add_wait(self, seconds: float) -> None:
        self.wait += seconds

    def step_done(self, images: float) -> None:
        self.images += images

    def take(self) -> tuple[float, float, float]:
        """(seconds, waiting seconds, images) since the last take; starts a new window."""
        now = time.perf_counter()
        out = (now - self.t0, self.wait, self.images)
        self.t0, self.wait, self.images = now, 0.0, 0.0
        return out


class BatchSource:
    """Batches of the stream across epochs, on the device; times the wait for each."""

    def __init__(self, stream, loader, device: torch.device) -> None:
        self.stream, self.loader, self.device = stream, loader, device
        self._it: Iterator | None = None

    def next(self, window: ThroughputWindow):
        t0 = time.perf_counter()
        while True:
            if self._it is None:
                self._it = iter(self.loader)
            try:
                batch = next(self._it)
                break
            except StopIteration:
                self._it = None
                self.stream.set_epoch(self.stream.epoch + 1)
        batch = batch.to(self.device, non_blocking=True)
        window.add_wait(time.perf_counter() - t0)
        return batch

    def close(self) -> None:
        self._it = None
        iterator = getattr(self.loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()


def one_line(exc: BaseException) -> str:
    """An exception's message on one line; for one re-raised from a DataLoader worker, its last line
    (torch puts "Caught X in DataLoader worker process N. Original Traceback ..." before it)."""
    text = str(exc).strip()
    if "Original Traceback" in text and text.splitlines():
        text = text.splitlines()[-1]
    return " ".join(text.split())[:300]


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's allocation failures: OutOfMemoryError on a GPU, a RuntimeError naming the allocator on a CPU."""
    oom = getattr(torch, "OutOfMemoryError", None)
    text = str(exc)
    return (oom is not None and isinstance(exc, oom)) or "can't allocate memory" in text or "out of memory" in text


def reduce_stats(accelerator, stats: dict[str, torch.Tensor], images: int, stop_flag: float) -> dict[str, torch.Tensor]:
    """Sum every statistic over the processes in one all-reduce (plus images and the stop flag)."""
    device = accelerator.device
    names, shapes, flat = [], [], []
    for name, value in sorted(stats.items()):
        value = value.detach().float().to(device)
        names.append(name)
        shapes.append(value.shape)
        flat.append(value.reshape(-1))
    flat.append(torch.tensor([float(images), stop_flag], device=device))
    vector = torch.cat(flat)
    if accelerator.num_processes > 1:
        vector = accelerator.reduce(vector, reduction="sum")
    out, offset = {}, 0
    for name, shape in zip(names, shapes):
        n = math.prod(shape)
        out[name] = vector[offset:offset + n].reshape(shape).cpu()
        offset += n
    out["_images"], out["_stop"] = vector[offset].cpu(), vector[offset + 1].cpu()
    return out


def state_digest(module: torch.nn.Module) -> str:
    """sha256 of every tensor of the module's state, in key order."""
    digest = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def first_non_finite(summed: dict[str, torch.Tensor]) -> str | None:
    names = [n for n in LOSS_TERMS if n in summed] + sorted(n for n in summed if n not in LOSS_TERMS)
    for name in names:
        if not torch.isfinite(summed[name]).all():
            return name
    return None


def metrics_row(step: int, stats: dict[str, torch.Tensor], world: int, lr: float, wd: float, momentum: float,
                grad_norm, window: tuple[float, float, float]) -> dict[str, Any]:
    seconds, waiting, images = window
    row: dict[str, Any] = {"step": step}
    for name, value in stats.items():
        if name.startswith("_"):
            continue
        mean = value / world
        row[name] = mean.tolist() if mean.ndim else float(mean)
    row.update({"lr": lr, "wd": wd, "momentum": momentum,
                "grad_norm": None if grad_norm is None else float(grad_norm),
                "data_wait": waiting / seconds if seconds > 0 else 0.0,
                "images_per_s": images / seconds if seconds > 0 else 0.0})
    return row
