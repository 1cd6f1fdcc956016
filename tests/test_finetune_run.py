"""`clasp finetune` end to end on the synthetic world in benchmark layouts, with a tiny random backbone."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from clasp.cli import main
from clasp.evaluation.features import extract_features
from clasp.datasets.market1501 import read_market1501
from clasp.evaluation.probes import reid_probe
from clasp.datasets.synth import SynthConfig
from clasp.datasets.synth.layouts import write_layout
from clasp.finetune.config import build_config
from clasp.finetune.loop import run_finetune
from clasp.pretraining.backbone import BACKBONE_FORMAT, BACKBONE_VERSION, CONFIG_FILE, WEIGHTS_FILE, load_backbone
from clasp.pretraining.vit import PromptedViT, ViTConfig
from tests.conftest import losses, steps_logged

pytestmark = pytest.mark.usefixtures("one_torch_thread")
VENV_BIN = Path(sys.executable).parent
FAST = dict(precision="fp32", num_workers=0, log_every=1, eval_batch_size=32)


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop sizes torch's thread pool from OMP_NUM_THREADS; tiny models run fastest on one."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def write_random_export(out: Path, seed: int = 0, task: str = "instance") -> Path:
    """A `clasp export` folder holding a freshly initialised tiny backbone."""
    torch.manual_seed(seed)
    arch = ViTConfig(dim=48, depth=2, heads=2, moe_layers=1, experts=2, top_k=1)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in PromptedViT(arch).state_dict().items()}, str(out / WEIGHTS_FILE))
    (out / CONFIG_FILE).write_text(json.dumps({"format": BACKBONE_FORMAT, "version": BACKBONE_VERSION,
                                               "architecture": arch.to_dict(), "task": task}))
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("finetune")
    out = {"export": write_random_export(root / "export")}
    for layout, ids in (("market1501", 16), ("pa100k", 12), ("lip", 6), ("msmt17", 6)):
        out[layout] = write_layout(layout, SynthConfig(out=root / layout, identities=ids, images_per_id=4, cameras=2))
    return out


def reid_config(world, out: Path, **extra):
    settings = dict(task="reid", backbone=str(world["export"]), data=str(world["market1501"]), out=str(out),
                    ids_per_batch=4, images_per_id=4, lr=1e-3, warmup=0.0, **FAST)
    return build_config(**{**settings, **extra})


def test_reid_fine_tuning_lowers_the_loss_and_beats_the_frozen_probe(world, tmp_path: Path) -> None:
    result = run_finetune(reid_config(world, tmp_path / "run", steps=24, rerank=True, k1=4, k2=2))
    logged = losses(tmp_path / "run")
    assert np.mean([logged[s] for s in (22, 23, 24)]) < 0.8 * np.mean([logged[s] for s in (1, 2, 3)])
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved == json.loads(json.dumps(result.results))
    assert {"map", "rank1", "rank5", "rank10", "map_rerank"} <= set(saved)
    assert all(0 <= saved[k] <= 1 for k in ("map", "rank1", "rank5", "rank10", "map_rerank"))
    market = read_market1501(world["market1501"])
    frozen = load_backbone(world["export"])
    q = extract_features(frozen, market.query.paths, keep_patches=False).cls
    g = extract_features(frozen, market.gallery.paths, keep_patches=False).cls
    probe = reid_probe(q, market.query.identity, market.query.camera, g, market.gallery.identity, market.gallery.camera)
    print(f"fine-tuned mAP {saved['map']:.3f}, frozen probe mAP {probe['mAP']:.3f}")
    assert saved["map"] > probe["mAP"] + 0.05, (saved["map"], probe["mAP"])


def test_stop_and_resume_equals_an_uninterrupted_run(world, tmp_path: Path) -> None:
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    run_finetune(reid_config(world, whole, steps=6, save_every=100))
    first = run_finetune(reid_config(world, parts, steps=6, stop_at=3))
    assert first.stopped_by == "stop_at" and first.results is None
    assert not (parts / "results.json").exists()
    run_finetune(build_config(out=str(parts), task="reid", resume=True))
    assert losses(parts) == pytest.approx(losses(whole), abs=1e-6)
    a = load_file(str(whole / "checkpoints" / "step-00000006" / "model.safetensors"))
    b = load_file(str(parts / "checkpoints" / "step-00000006" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert json.loads((parts / "results.json").read_text())["map"] == pytest.approx(
        json.loads((whole / "results.json").read_text())["map"], abs=1e-6)


def reid_command(world, out: Path, *extra: str) -> list[str]:
    """`clasp finetune reid` with the settings of `reid_config` (one loader worker, as a user's run has)."""
    return [sys.executable, "-m", "clasp.cli", "finetune", "reid", "--backbone", str(world["export"]),
            "--data", str(world["market1501"]), "--out", str(out), "--ids-per-batch", "4", "--images-per-id", "4",
            "--lr", "1e-3", "--warmup", "0", "--precision", "fp32", "--num-workers", "1", "--log-every", "1",
            "--eval-batch-size", "32", *extra]


def test_sigterm_saves_a_checkpoint_and_resume_equals_an_uninterrupted_run(world, tmp_path: Path) -> None:
    from tests.test_pretraining_train_processes import env, wait_for

    out = tmp_path / "run"
    proc = subprocess.Popen(reid_command(world, out, "--steps", "500", "--save-every", "1000"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    wait_for(lambda: len(steps_logged(out)) >= 2, proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-3000:]
    stopped = max(steps_logged(out))
    assert f"stopped (SIGTERM) after step {stopped} of 500; continue with --resume" in stderr
    assert steps_logged(out) == list(range(1, stopped + 1))
    assert [c.name for c in (out / "checkpoints").iterdir()] == [f"step-{stopped:08d}"]
    assert not (out / "results.json").exists()

    end = stopped + 2  # two more steps in this process, then the same two in a run never interrupted
    run_finetune(build_config(out=str(out), task="reid", resume=True, stop_at=end, num_workers=0))
    run_finetune(reid_config(world, tmp_path / "whole", steps=500, stop_at=end, save_every=1000))
    assert losses(out) == pytest.approx(losses(tmp_path / "whole"), abs=1e-6)
    assert sorted(losses(out)) == list(range(1, end + 1))
    a = load_file(str(out / "checkpoints" / f"step-{end:08d}" / "model.safetensors"))
    b = load_file(str(tmp_path / "whole" / "checkpoints" / f"step-{end:08d}" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def falls(logged: dict[int, float], last: int) -> tuple[float, float]:
    """Mean loss of the first three and of the last three logged steps."""
    return float(np.mean([logged[s] for s in (1, 2, 3)])), float(np.mean([logged[s] for s in (last - 2, last - 1, last)]))


def test_attributes_and_parsing_recipes_lower_the_loss_and_report(world, tmp_path: Path) -> None:
    runner = CliRunner()
    common = ["--backbone", str(world["export"]), "--precision", "fp32", "--num-workers", "0", "--batch-size", "8",
              "--lr", "3e-3", "--warmup", "0", "--log-every", "1"]
    got = runner.invoke(main, ["finetune", "attributes", "--data", str(world["pa100k"]), "--out", str(tmp_path / "a"),
                               "--steps", "16", "--prompt", "attribute", *common])
    assert got.exit_code == 0, got.output
    attrs = json.loads((tmp_path / "a" / "results.json").read_text())
    assert attrs["task_prompt"] == "attribute" and attrs["layout"] == "pa100k"
    assert all(0 <= attrs[k] <= 1 for k in ("ma", "accuracy", "precision", "recall", "f1"))
    assert len(attrs["per_attribute"]) == 34
    first, last = falls(losses(tmp_path / "a"), 16)
    print(f"attributes: weighted BCE {first:.3f} -> {last:.3f}")
    got = runner.invoke(main, ["finetune", "parsing", "--data", str(world["lip"]), "--out", str(tmp_path / "p"),
                               "--steps", "12", "--head-dim", "16", *common])
    assert got.exit_code == 0, got.output
    parsing = json.loads((tmp_path / "p" / "results.json").read_text())
    assert 0 <= parsing["miou"] <= 1 and len(parsing["iou"]) == 20
    assert sorted(losses(tmp_path / "p")) == list(range(1, 13))
    first_p, last_p = falls(losses(tmp_path / "p"), 12)
    print(f"parsing: pixel CE {first_p:.3f} -> {last_p:.3f}")
    assert last < 0.9 * first and last_p < 0.9 * first_p


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two(world, out: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [str(VENV_BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
               "-m", "clasp.cli", "finetune", "reid", "--backbone", str(world["export"]),
               "--data", str(world["market1501"]), "--out", str(out), "--ids-per-batch", "4", "--images-per-id", "2",
               "--precision", "fp32", "--num-workers", "0", "--log-every", "1", *extra]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def check_two_process_run(out: Path, second: subprocess.CompletedProcess) -> None:
    assert second.returncode == 0, second.stderr[-3000:]
    saved = json.loads((out / "config.json").read_text())
    # 8 training identities x 4 images: 4 P x K batches of 4 x 2 per epoch, 2 per process
    assert saved["derived"]["world_size"] == 2 and saved["derived"]["images_per_step"] == 16
    assert saved["derived"]["batches_per_epoch"] == 2
    assert sorted(losses(out)) == [1, 2, 3, 4]
    results = json.loads((out / "results.json").read_text())
    assert results["steps"] == 4 and 0 <= results["map"] <= 1
    assert second.stdout.count("results written") == 1  # the main process evaluates, once


def test_two_processes_under_accelerate_launch(world, tmp_path: Path) -> None:
    out = tmp_path / "run"
    check_two_process_run(out, launch_two(world, out, "--steps", "4"))


@pytest.mark.slow
def test_two_processes_under_accelerate_launch_stop_and_resume(world, tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = launch_two(world, out, "--steps", "4", "--stop-at", "2")
    assert first.returncode == 0, first.stderr[-3000:]
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000002"]
    assert not (out / "results.json").exists()
    check_two_process_run(out, launch_two(world, out, "--steps", "4", "--resume"))


def test_run_folder_rules(world, tmp_path: Path) -> None:
    from clasp.finetune.data import FinetuneInputError

    out = tmp_path / "run"
    run_finetune(reid_config(world, out, steps=2, stop_at=1))
    with pytest.raises(FinetuneInputError, match="holds another run"):
        run_finetune(reid_config(world, out, steps=2))
    with pytest.raises(FinetuneInputError, match=r"cannot resume, settings differ from the run.s \(lr: checkpoint 0.001, now 0.002"):
        run_finetune(reid_config(world, out, steps=2, lr=2e-3, resume=True))
    assert (out / "error.log").read_text().count("error: ") == 2
    result = run_finetune(reid_config(world, out, steps=2, force=True))
    assert result.step == 2 and sorted(losses(out)) == [1, 2] and not (out / "error.log").exists()


def test_a_folder_another_run_writes_is_refused_untouched_and_resume_needs_a_run(world, tmp_path: Path) -> None:
    from clasp.finetune.data import FinetuneInputError
    from clasp.runs import exclusive_folder
    from tests.conftest import snapshot

    out = tmp_path / "run"
    run_finetune(reid_config(world, out, steps=2, stop_at=1))
    before = snapshot(out)
    with exclusive_folder(out, "clasp finetune"):
        with pytest.raises(FinetuneInputError, match=rf"`clasp finetune` \(pid {os.getpid()}\) is writing this folder"):
            run_finetune(reid_config(world, out, steps=2, resume=True))
    assert snapshot(out) == before and not (out / "error.log").exists() and not (out / ".clasp.lock").exists()
    other = tmp_path / "notes"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(FinetuneInputError, match="holds no clasp run to resume"):
        run_finetune(reid_config(world, other, steps=2, resume=True))
    assert sorted(p.name for p in other.iterdir()) == ["error.log", "notes.txt"]


def test_freeze_backbone_trains_the_head_only(world, tmp_path: Path) -> None:
    run_finetune(reid_config(world, tmp_path / "run", steps=2, freeze_backbone=True))
    trained = load_file(str(tmp_path / "run" / "checkpoints" / "step-00000002" / "model.safetensors"))
    exported = load_file(str(world["export"] / WEIGHTS_FILE))
    for key, value in exported.items():
        assert torch.equal(trained[f"backbone.backbone.{key}"], value), key
    assert not torch.equal(trained["head.bottleneck.weight"], torch.ones_like(trained["head.bottleneck.weight"]))


def test_clasp_eval_reads_msmt17_too(world, tmp_path: Path) -> None:
    from clasp.evaluation.run_eval import EvalConfig, evaluate

    results = evaluate(EvalConfig(backbone=world["export"], data=world["msmt17"], precision="fp32"))
    assert results["kind"] == "msmt17" and results["tasks"] == ["reid"]
    assert results["reid"]["queries"] > 0 and 0 <= results["reid"]["mAP"] <= 1


def test_clasp_eval_names_every_layout_it_reads(tmp_path: Path) -> None:
    runner = CliRunner()
    shown = " ".join(runner.invoke(main, ["eval", "--help"]).output.split())
    assert "Market-1501" in shown and "MSMT17" in shown
    got = runner.invoke(main, ["eval", "--backbone", str(tmp_path), "--data", str(tmp_path)])
    lines = got.output.strip().splitlines()
    assert got.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), got.output
    assert "Market-1501" in lines[0] and "MSMT17" in lines[0] and "clasp synth" in lines[0]


SECOND_SIGNAL = """
import os, signal, sys, time
from clasp.finetune import loop

real = loop._Loop.step

def step(self, batch, stop):  # both signals arrive during step 3, the second while it still runs
    if self.step_no == 2:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(60)
    return real(self, batch, stop)

loop._Loop.step = step
from clasp.cli import main
main(sys.argv[1:])
"""


def test_a_second_sigterm_exits_at_once_with_143_keeping_the_last_checkpoint(world, tmp_path: Path) -> None:
    from tests.test_pretraining_train_processes import env

    out = tmp_path / "run"
    command = reid_command(world, out, "--steps", "10", "--save-every", "2", "--num-workers", "0")
    done = subprocess.run([sys.executable, "-c", SECOND_SIGNAL, *command[3:]], capture_output=True, text=True,
                          env=env(), timeout=300)
    assert done.returncode == 128 + signal.SIGTERM, done.stderr[-3000:]
    line = (f"error: second SIGTERM: stopped at once during step 3; the last complete checkpoint is "
            f"{out / 'checkpoints' / 'step-00000002'}; continue with --resume")
    assert "SIGTERM: stopping after step 3 with a checkpoint; send it again to stop at once" in done.stderr
    assert line in done.stderr and "Traceback" not in done.stderr
    assert (out / "error.log").read_text().splitlines() == [line]
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000002"]


@pytest.mark.parametrize("damage, named", [
    (lambda p: (p / "optimizer.pt").write_bytes(b"not a checkpoint"), "optimizer.pt: cannot be read"),
    (lambda p: (p / "rng-rank0.pt").unlink(), "rng-rank0.pt: missing from the checkpoint"),
    (lambda p: (p / "trainer.json").write_text("{"), "trainer.json: cannot be read"),
])
def test_a_damaged_checkpoint_is_one_line_naming_the_file(world, tmp_path: Path, damage, named: str) -> None:
    from clasp.finetune.data import FinetuneInputError

    out = tmp_path / "run"
    run_finetune(reid_config(world, out, steps=2, stop_at=1))
    checkpoint = out / "checkpoints" / "step-00000001"
    damage(checkpoint)
    with pytest.raises(FinetuneInputError) as caught:
        run_finetune(build_config(out=str(out), task="reid", resume=True))
    message = str(caught.value)
    assert message.startswith(str(checkpoint)) and named in message and "\n" not in message
    assert (out / "error.log").read_text() == f"error: {message}\n"


def test_resume_restores_the_python_and_numpy_random_streams(world, tmp_path: Path, monkeypatch) -> None:
    import random

    from clasp.finetune import loop

    drawn: dict[str, dict[int, tuple[float, float]]] = {}
    real = loop._Loop.step

    def step(self, batch, stop):  # a recipe drawing from Python's and NumPy's global streams at each step
        drawn[self.out.name][self.step_no + 1] = (random.random(), float(np.random.rand()))
        return real(self, batch, stop)

    monkeypatch.setattr(loop._Loop, "step", step)
    for name in ("whole", "parts"):
        drawn[name] = {}
    run_finetune(reid_config(world, tmp_path / "whole", steps=4, save_every=100))
    run_finetune(reid_config(world, tmp_path / "parts", steps=4, stop_at=2))
    random.seed(12345), np.random.seed(12345)  # whatever the process did in between
    run_finetune(build_config(out=str(tmp_path / "parts"), task="reid", resume=True))
    assert drawn["parts"] == drawn["whole"] and sorted(drawn["parts"]) == [1, 2, 3, 4]


def test_a_non_finite_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(world, tmp_path: Path,
                                                                                monkeypatch) -> None:
    from clasp.finetune.recipes import ReidRecipe
    from clasp.runs.step_stats import NonFiniteLossError

    real, calls = ReidRecipe.loss, [0]

    def loss(self, out, batch):
        calls[0] += 1
        value, stats = real(self, out, batch)
        return (value * float("nan"), stats) if calls[0] == 3 else (value, stats)

    monkeypatch.setattr(ReidRecipe, "loss", loss)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"step 3: loss term 'loss' is nan .*step-00000002") as caught:
        run_finetune(reid_config(world, out, steps=4, save_every=2))
    assert (out / "error.log").read_text() == f"error: {caught.value}\n"
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000002"]


def test_threads_given_win_over_omp_num_threads(world, tmp_path: Path, monkeypatch) -> None:
    """OMP_NUM_THREADS is 1 in this module; --threads 2 is what the run's process computes with."""
    import clasp.hardware.cores as cores
    import clasp.hardware.host_memory as host_memory

    chosen, kept = [], []
    choose = cores.thread_choice
    monkeypatch.setattr(cores, "thread_choice", lambda *args: chosen.append(choose(*args)) or chosen[-1])
    monkeypatch.setattr(host_memory, "keep_freed_memory_on", kept.append)  # as a CPU run should
    run_finetune(reid_config(world, tmp_path / "run", steps=1, threads=2))
    assert [(c.threads, c.source) for c in chosen] == [(2, "--threads")]
    assert kept == ["cpu"]


def test_compile_on_fine_tunes_as_eager_does(world, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            caplog: pytest.LogCaptureFixture) -> None:
    import logging

    import clasp.pretraining.compile_blocks as compile_blocks

    monkeypatch.setattr(compile_blocks, "COMPILE_OPTIONS", {"backend": "eager"})  # dynamo's tracing, no codegen
    run_finetune(reid_config(world, tmp_path / "eager", steps=3, compile="off"))
    with caplog.at_level(logging.INFO, logger="clasp"):
        run_finetune(reid_config(world, tmp_path / "compiled", steps=3, compile="on"))
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("--compile: ")]
    assert len(said) == 1 and int(said[0].split()[1]) > 0, said  # the backbone's blocks, compiled
    assert losses(tmp_path / "compiled") == pytest.approx(losses(tmp_path / "eager"), abs=1e-5)
    assert json.loads((tmp_path / "compiled" / "config.json").read_text())["config"]["compile"] == "on"
