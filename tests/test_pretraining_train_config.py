"""Config loading and resume compatibility, schedules, and the pickle-free RNG capture."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from clasp.pretraining.config import KEYS, RESUME_RULE, ConfigError, PretrainConfig, build_config
from clasp.runs.checkpoint import capture_rng, restore_rng
from clasp.runs.saved_config import describe_differences
from clasp.runs.schedules import Schedules, cosine_schedule


def test_file_then_flags_override(tmp_path: Path) -> None:
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("preset: tiny\nlr: 1e-3\nsteps: 50\nbatch_size: 8\n")
    cfg = build_config(cfg_file, shards="s", out="o", batch_size=4)
    assert (cfg.preset, cfg.lr, cfg.steps, cfg.batch_size) == ("tiny", 1e-3, 50, 4)
    assert cfg.epochs is None  # steps in the file replaces the default length in epochs
    assert build_config(cfg_file, shards="s", out="o", epochs=3).steps is None


def test_json_config_and_unknown_key_named(tmp_path: Path) -> None:
    good = tmp_path / "run.json"
    good.write_text(json.dumps({"experts": 8, "top_k": 1}))
    assert build_config(good, shards="s", out="o").experts == 8
    bad = tmp_path / "bad.yaml"
    bad.write_text("preset: tiny\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*'learning_rate'"):
        build_config(bad, shards="s", out="o")


@pytest.mark.parametrize("text, match", [
    ("batch_size: many\n", "batch_size"),
    ("steps: 2.5\n", "steps"),
    ("precision: fp8\n", "precision"),
    ("- a list\n", "mapping"),
    ("lr: [1\n", "does not parse"),
    ("teacher_temp: 0\n", "teacher_temp must be positive"),
    ("warmup_teacher_temp_steps: -1\n", "warmup_teacher_temp_steps must not be negative"),
])
def test_bad_values_named(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        build_config(path, shards="s", out="o")


def test_incompatible_keys_named_with_both_values() -> None:
    saved = PretrainConfig(shards="a", out="o", steps=10).to_dict()
    new = PretrainConfig(shards="moved", out="o", steps=10, batch_size=16, save_every=5, experts=8)
    diffs = RESUME_RULE.differences(saved, {"world_size": 1}, new.to_dict(), {"world_size": 2})
    assert {d[0] for d in diffs} == {"batch_size", "experts", "derived.world_size"}
    message = describe_differences(diffs, "run/config.json")
    assert "batch_size: checkpoint 32, now 16" in message and "experts: checkpoint 6, now 8" in message
    assert "derived.world_size: checkpoint 1, now 2" in message
    # every key is either allowed to change or checked
    assert set(KEYS) >= {"seed", "preset", "lr", "num_workers"}


def dino_cosine_scheduler(base_value, final_value, epochs, niter_per_ep, warmup_epochs=0, start_warmup_value=0):
    """DINO's `utils.cosine_scheduler`, transcribed: the reference our schedules must equal."""
    warmup_schedule = np.array([])
    warmup_iters = warmup_epochs * niter_per_ep
    if warmup_epochs > 0:
        warmup_schedule = np.linspace(start_warmup_value, base_value, warmup_iters)
    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    schedule = final_value + 0.5 * (base_value - final_value) * (1 + np.cos(np.pi * iters / len(iters)))
    return np.concatenate((warmup_schedule, schedule))


@pytest.mark.parametrize("steps, warmup", [(10, 4), (100, 10), (7, 0), (3, 1)])
def test_schedules_equal_dinos_formulas(steps: int, warmup: int) -> None:
    np.testing.assert_allclose(cosine_schedule(1e-3, 1e-6, steps, warmup), dino_cosine_scheduler(1e-3, 1e-6, steps, 1, warmup),
                               rtol=0, atol=1e-15)
    sched = Schedules.build(steps, 1e-3, 1e-6, warmup / steps, 0.04, 0.4, 0.996, 1.0)
    np.testing.assert_allclose(sched.lr, dino_cosine_scheduler(1e-3, 1e-6, steps, 1, warmup), rtol=0, atol=1e-15)
    np.testing.assert_allclose(sched.weight_decay, dino_cosine_scheduler(0.04, 0.4, steps, 1), rtol=0, atol=1e-15)
    np.testing.assert_allclose(sched.momentum, dino_cosine_scheduler(0.996, 1.0, steps, 1), rtol=0, atol=1e-15)


def test_lr_warm_up_reaches_the_peak_on_its_last_step() -> None:
    s = cosine_schedule(1.0, 0.0, 10, warmup_steps=4)
    assert np.allclose(s[:4], [0, 1 / 3, 2 / 3, 1.0])  # DINO: np.linspace(0, peak, 4)
    assert s[4] == pytest.approx(1.0) and 0 < s[-1] < 0.07  # the cosine ends just above the final value
    assert np.all(np.diff(s[4:]) <= 0)
    sched = Schedules.build(100, 1e-3, 1e-6, 0.1, 0.04, 0.4, 0.996, 1.0)
    assert sched.at(0) == (0.0, pytest.approx(0.04), pytest.approx(0.996))
    assert sched.lr[9] == pytest.approx(1e-3) and sched.lr.max() == pytest.approx(1e-3)


def test_rng_round_trip_without_pickle(tmp_path: Path) -> None:
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    torch.save(capture_rng(), tmp_path / "rng.pt")
    want = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == want


def test_without_out_a_single_process_gets_a_new_run_folder(tmp_path: Path, monkeypatch, caplog) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with caplog.at_level("INFO", logger="clasp"):
        cfg = build_config(shards=str(tmp_path / "market-shards"), steps=3)
    assert Path(cfg.out).parent == Path("runs") and Path(cfg.out).name.startswith("market-shards-")
    assert f"run folder: {cfg.out}" in caplog.text
    from clasp.pretraining.config import default_run_folder
    assert default_run_folder("a/shards", now=0.0).startswith("runs/shards-19")  # local time of the epoch
    monkeypatch.setenv("WORLD_SIZE", "2")  # several processes could each read another second
    with pytest.raises(ConfigError, match="`out` is required"):
        build_config(shards="s", steps=3)
    with pytest.raises(ConfigError, match="`out` is required"):
        build_config(shards="s", resume=True)
