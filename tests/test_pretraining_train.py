"""The training loop end to end on a tiny model: stop, resume, exactness, refusals, metrics, checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from clasp.hardware import available_cores, dataloader_workers, probe_capability, resolve_precision
from clasp.pretraining.config import PretrainConfig
from clasp.pretraining.train import PretrainInputError, run_pretraining
from clasp.runs.step_stats import NonFiniteLossError
from tests.conftest import TINY_RUN, losses, read_metrics

TINY = {**TINY_RUN, "local_crops": 2, "num_workers": 0, "save_every": 2}


pytestmark = pytest.mark.usefixtures("one_torch_thread")
CPU = probe_capability("cpu")


def train(store: Path, out: Path, **settings) -> object:
    return run_pretraining(PretrainConfig(**{**TINY, "shards": str(store), "out": str(out), **settings}))


def test_stop_at_and_resume_equal_an_uninterrupted_run(store: Path, tmp_path: Path) -> None:
    whole = train(store, tmp_path / "whole", steps=7)
    assert (whole.step, whole.stopped_by) == (7, "end")

    part = train(store, tmp_path / "part", steps=7, stop_at=3)
    assert (part.step, part.stopped_by) == (3, "stop_at")
    assert part.checkpoint.name == "step-00000003"  # a checkpoint at the stop, not only every save_every
    assert max(losses(tmp_path / "part")) == 3
    rest = train(store, tmp_path / "part", steps=7, resume=True)
    assert (rest.step, rest.stopped_by) == (7, "end")

    a, b = losses(tmp_path / "whole"), losses(tmp_path / "part")
    assert sorted(b) == list(range(1, 8))
    for step in range(1, 8):
        assert b[step] == pytest.approx(a[step], abs=1e-6), step
    # the schedules were not shortened by the stop: same lr at every step
    assert [r["lr"] for r in read_metrics(tmp_path / "whole")] == [r["lr"] for r in read_metrics(tmp_path / "part")]
    final_a = load_file(tmp_path / "whole/checkpoints/step-00000007/model.safetensors")
    final_b = load_file(tmp_path / "part/checkpoints/step-00000007/model.safetensors")
    assert final_a.keys() == final_b.keys()
    for key in final_a:  # student, EMA teacher and DINO centre all resumed exactly
        torch.testing.assert_close(final_a[key], final_b[key], atol=1e-6, rtol=0, msg=key)


def test_resume_alone_continues_with_the_runs_settings(store: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from clasp.cli import main

    out = tmp_path / "run"
    train(store, out, steps=4, stop_at=2)
    result = CliRunner().invoke(main, ["pretrain", "--out", str(out), "--resume"])
    assert result.exit_code == 0, result.output
    assert sorted(losses(out)) == [1, 2, 3, 4]
    refused = CliRunner().invoke(main, ["pretrain", "--out", str(out), "--resume", "--batch-size", "8"])
    assert refused.exit_code == 2 and "batch_size: checkpoint 4, now 8" in refused.output


def test_grad_accum_and_bf16_resume_exactly(store: Path, tmp_path: Path) -> None:
    settings = dict(steps=4, grad_accum=2, precision="bf16", local_crops=1)
    train(store, tmp_path / "whole", **settings)
    train(store, tmp_path / "part", **settings, stop_at=1)
    train(store, tmp_path / "part", **settings, resume=True)
    a, b = losses(tmp_path / "whole"), losses(tmp_path / "part")
    assert sorted(b) == [1, 2, 3, 4]
    for step in a:
        assert b[step] == pytest.approx(a[step], abs=1e-6), step
    # 4 steps x 2 micro-batches = 8 of the epoch's 5 batches: epoch 1, 3 batches in
    position = torch.load(tmp_path / "part/checkpoints/step-00000004/stream-rank0.pt", weights_only=True)
    assert (position["epoch"], position["batches_yielded"]) == (1, 3)
    assert read_metrics(tmp_path / "part")[0]["images_per_s"] > 0


def test_metrics_and_checkpoint_contents(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(store, out, steps=3, keep_checkpoints=1)
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for row in rows:
        for key in ("loss", "dino", "part", "attribute", "balance", "lr", "wd", "momentum", "data_wait",
                    "images_per_s", "expert_load"):
            assert key in row, key
        assert 0.0 <= row["data_wait"] <= 1.0 and row["images_per_s"] > 0
        assert len(row["expert_load"]) == 1 and len(row["expert_load"][0]) == 3  # 1 MoE layer x 3 experts
        assert sum(row["expert_load"][0]) == pytest.approx(1.0)
        assert row["precision"] == "fp32" and row["device"] == resolve_precision("fp32", CPU).capability.tag()
        assert row["loss"] == pytest.approx(row["dino"] + row["part"] + row["attribute"] + 0.01 * row["balance"],
                                            rel=1e-5)
    assert rows[0]["momentum"] == pytest.approx(0.996) and rows[0]["wd"] == pytest.approx(0.04)

    checkpoints = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert checkpoints == ["step-00000003"]  # keep_checkpoints=1 pruned step 2
    folder = out / "checkpoints" / "step-00000003"
    saved = json.loads((folder / "config.json").read_text())
    assert saved["config"]["batch_size"] == 4 and saved["derived"]["total_steps"] == 3
    unmeasured = {"torch_threads": None, "torch_threads_from": None}
    assert saved["hardware"] | unmeasured == resolve_precision("fp32", CPU).record() | {
        "available_cores": available_cores(), "processes_on_host": 1, "num_workers": 0} | unmeasured
    for path in folder.iterdir():
        if path.suffix == ".safetensors":
            assert any(k.startswith("teacher.") for k in load_file(path))
            assert "dino_loss.center" in load_file(path)
        elif path.suffix == ".json":
            json.loads(path.read_text())
        else:  # nothing may need unrestricted unpickling
            assert path.suffix == ".pt", path
            torch.load(path, weights_only=True)


def test_auto_precision_and_loader_workers_are_resolved_and_saved(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(store, out, steps=1, precision="auto", num_workers=None)
    saved = json.loads((out / "config.json").read_text())
    auto = resolve_precision("auto", CPU)
    assert saved["hardware"]["precision"] == auto.precision and saved["hardware"]["requested"] == "auto"
    assert saved["config"]["num_workers"] == saved["hardware"]["num_workers"] == dataloader_workers("cpu")
    assert read_metrics(out)[0]["precision"] == auto.precision
    # a config saved with accelerate's old spelling of full precision still loads, as fp32
    assert PretrainConfig(**{**TINY, "shards": "s", "out": "o", "precision": "no"}).validate().precision == "fp32"


def test_threads_given_win_and_are_recorded_with_their_source(store: Path, tmp_path: Path, monkeypatch) -> None:
    import clasp.hardware.host_memory as host_memory

    kept = []  # and the run keeps its freed memory, as a CPU run should (hardware/host_memory.py)
    monkeypatch.setattr(host_memory, "keep_freed_memory_on", kept.append)
    before = torch.get_num_threads()
    train(store, tmp_path / "run", steps=1, threads=1)
    assert kept == ["cpu"]
    hardware = json.loads((tmp_path / "run" / "config.json").read_text())["hardware"]
    assert (hardware["torch_threads"], hardware["torch_threads_from"]) == (1, "--threads")
    assert torch.get_num_threads() == before  # the run's own count is not left behind


def test_a_bad_row_is_skipped_when_the_run_says_so(store: Path, tmp_path: Path) -> None:
    import h5py

    from tests.test_pretraining_stream_hostile import set_values

    shard = sorted(store.glob("shard-*.h5"))[0]
    set_values(shard, "part_conf", [1], np.nan)
    result = train(store, tmp_path / "run", steps=2, on_bad_row="skip")
    assert result.step == 2 and all(np.isfinite(r["part"]) for r in read_metrics(tmp_path / "run"))
    with h5py.File(shard) as f:
        assert np.isnan(f["part_conf"][1]).all()  # the store is read, never mended


def test_teacher_temperature_follows_its_configured_warm_up(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(store, out, steps=4, teacher_temp=0.07, warmup_teacher_temp=0.04, warmup_teacher_temp_steps=2)
    assert [r["teacher_temp"] for r in read_metrics(out)] == pytest.approx([0.04, 0.07, 0.07, 0.07])  # linspace(0.04, 0.07, 2)


def test_prototypes_stay_fixed_for_the_frozen_steps_only(store: Path, tmp_path: Path) -> None:
    def weights(out: Path, step: int) -> dict[str, torch.Tensor]:
        return load_file(out / f"checkpoints/step-{step:08d}/model.safetensors")

    train(store, tmp_path / "frozen", steps=3, save_every=1, freeze_last_layer_steps=2)
    train(store, tmp_path / "free", steps=3, save_every=1)
    frozen = {step: weights(tmp_path / "frozen", step) for step in (1, 2, 3)}
    free = {step: weights(tmp_path / "free", step) for step in (1, 2)}
    prototypes = sorted(k for k in frozen[1] if k.endswith("dino_head.last_layer.weight"))
    assert prototypes == ["student.dino_head.last_layer.weight", "teacher.dino_head.last_layer.weight"]
    for key in prototypes:
        # step 2 left them alone (the teacher's EMA of an unchanged student rounds in the last bit)
        torch.testing.assert_close(frozen[2][key], frozen[1][key], atol=1e-8, rtol=0, msg=key)
    key = "student.dino_head.last_layer.weight"
    assert not torch.equal(frozen[3][key], frozen[2][key])  # step 3 moved them
    assert not torch.equal(free[2][key], free[1][key])
    student = "student.dino_head.mlp.0.weight"
    assert not torch.equal(frozen[2][student], frozen[1][student])


def test_incompatible_resume_is_refused_naming_keys(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(store, out, steps=5, stop_at=1)
    with pytest.raises(PretrainInputError) as info:
        train(store, out, steps=5, resume=True, batch_size=2, experts=4)
    message = str(info.value)
    assert "batch_size: checkpoint 4, now 2" in message and "experts: checkpoint 3, now 4" in message
    assert "step-00000001" in message
    # allowed changes (save/log frequency, precision, stop) resume fine
    result = train(store, out, steps=5, resume=True, stop_at=2, save_every=5, log_every=2)
    assert result.step == 2


def test_a_different_run_is_not_overwritten(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(store, out, steps=1)
    with pytest.raises(PretrainInputError, match="holds another run.*--resume.*--force"):
        train(store, out, steps=2, seed=1)
    assert losses(out).keys() == {1}
    train(store, out, steps=2, seed=1, force=True)
    assert [r["step"] for r in read_metrics(out)] == [1, 2]  # the old log was replaced, not appended to
    assert json.loads((out / "config.json").read_text())["config"]["seed"] == 1


def test_non_finite_loss_stops_naming_step_and_term(store: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from clasp.pretraining.model import ClaspModel

    forward = ClaspModel.forward

    def poisoned(self, batch, step=None):
        loss, stats = forward(self, batch, step)
        if step == 2:  # the third optimizer step
            stats["part"] = torch.tensor(float("nan"))
            loss = loss * torch.tensor(float("nan"))
        return loss, stats

    monkeypatch.setattr(ClaspModel, "forward", poisoned)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"step 3: loss term 'part' is nan.*step-00000002"):
        train(store, out, steps=6)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000002"]
    assert max(losses(out)) == 2


@pytest.mark.slow
def test_repeated_stops_over_several_epochs_with_workers(make_store: Callable[..., Path], tmp_path: Path) -> None:
    """The long version: three starts, two worker processes, accumulation, four epochs of uneven shards."""
    store = make_store([13, 5, 9], grid=(8, 4), hw=(64, 32))
    settings = dict(steps=14, grad_accum=2, num_workers=2, save_every=5, keep_checkpoints=2)
    train(store, tmp_path / "whole", **settings)
    for stop in (3, 8):
        train(store, tmp_path / "part", **settings, stop_at=stop, resume=stop != 3)
    train(store, tmp_path / "part", **settings, resume=True)
    a, b = losses(tmp_path / "whole"), losses(tmp_path / "part")
    assert sorted(b) == list(range(1, 15))
    for step in a:
        assert b[step] == pytest.approx(a[step], abs=1e-6), step


def test_pretrain_without_out_trains_into_a_new_run_folder(store: Path, tmp_path: Path, monkeypatch, caplog) -> None:
    from click.testing import CliRunner

    from clasp.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    (tmp_path / "tiny.json").write_text(json.dumps({**TINY, "steps": 1}))
    with caplog.at_level("INFO", logger="clasp"):  # the CLI prints the clasp log on stderr
        result = CliRunner().invoke(main, ["pretrain", "--shards", str(store), "--config", "tiny.json"])
    assert result.exit_code == 0, result.output
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith(f"{store.name}-") and f"run folder: runs/{run.name}" in caplog.text
    assert sorted(losses(run)) == [1] and (run / "checkpoints/step-00000001").is_dir()


def test_compile_on_trains_as_eager_does_and_auto_stays_eager(store: Path, tmp_path: Path, monkeypatch,
                                                               caplog) -> None:
    import logging

    import clasp.pretraining.compile_blocks as compile_blocks

    monkeypatch.setattr(compile_blocks, "COMPILE_OPTIONS", {"backend": "eager"})  # dynamo's tracing, no codegen
    with caplog.at_level(logging.INFO, logger="clasp"):
        train(store, tmp_path / "auto", steps=3)
        assert not any("--compile" in r.getMessage() for r in caplog.records)  # auto: training stays eager
        train(store, tmp_path / "compiled", steps=3, compile="on")
    assert any(r.getMessage().startswith("--compile: ") and "blocks run through torch.compile" in r.getMessage()
               for r in caplog.records)
    assert losses(tmp_path / "compiled") == pytest.approx(losses(tmp_path / "auto"), abs=1e-5)
    assert json.loads((tmp_path / "compiled" / "config.json").read_text())["config"]["compile"] == "on"
