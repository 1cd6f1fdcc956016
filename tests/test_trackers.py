"""`--report-to`: every metrics.jsonl row reaches the trackers (TensorBoard read back from its event files),
a resumed run continues the same log, and a tracker that is not installed is one line before any work."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml
from click.testing import CliRunner

from clasp.cli import main
from clasp.runs import trackers
from clasp.store import Vocabulary
from tests.conftest import TINY_RUN, one_error_line, read_metrics, write_store

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_store(tmp_path_factory.mktemp("trackers") / "shards", Vocabulary.default(), [9], grid=(8, 4),
                       hw=(64, 32))


def run(*args: str):
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result


def leaves(value: Any, name: str = "") -> Iterator[tuple[str, Any]]:
    """('a/b/0', leaf) of nested dicts and lists: the names a tracker should get."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from leaves(item, f"{name}/{key}" if name else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from leaves(item, f"{name}/{index}")
    else:
        yield name, value


def numbers(rows: list[dict], step_of=lambda row: row["step"]) -> dict[str, dict[int, float]]:
    """{name: {step: value}} of every number the rows hold, but their step."""
    out: dict[str, dict[int, float]] = {}
    for row in rows:
        for name, value in leaves(row):
            if name != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                out.setdefault(name, {})[step_of(row)] = value
    return out


def tensorboard_scalars(folder: Path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of the event files in `folder`, each step of a tag logged once (after purges)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    out = {}
    for tag in events.Tags()["scalars"]:
        steps = [e.step for e in events.Scalars(tag)]
        assert len(steps) == len(set(steps)), (tag, steps)
        out[tag] = {e.step: e.value for e in events.Scalars(tag)}
    return out


def assert_same_numbers(logged: dict[str, dict[int, float]], expected: dict[str, dict[int, float]]) -> None:
    assert sorted(logged) == sorted(expected)
    for name, values in expected.items():
        assert sorted(logged[name]) == sorted(values), name
        assert logged[name] == pytest.approx(values, rel=1e-6, abs=1e-12), name


def test_pretrain_tensorboard_holds_every_metrics_row_and_a_resume_continues_its_log(store: Path,
                                                                                    tmp_path: Path) -> None:
    out, config = tmp_path / "run", tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({**TINY_RUN, "local_crops": 1, "num_workers": 0, "steps": 5, "save_every": 2}))
    run("pretrain", "--shards", str(store), "--out", str(out), "--config", str(config), "--report-to", "tensorboard",
        "--stop-at", "3")
    # as if the run had died after logging step 3 and before saving it: the resume starts after step 2
    shutil.rmtree(out / "checkpoints" / "step-00000003")
    run("pretrain", "--out", str(out), "--resume")
    rows = read_metrics(out)
    assert [row["step"] for row in rows] == [1, 2, 3, 4, 5]
    board = out / "trackers" / "clasp-pretrain"
    assert len(list(board.glob("events.out.tfevents.*"))) == 2  # one log folder, a file per start
    logged = tensorboard_scalars(board)
    assert {"loss", "dino", "part", "attribute", "lr", "momentum", "teacher_temp", "images_per_s", "data_wait",
            "expert_load/0/2"} <= set(logged)
    assert_same_numbers(logged, numbers(rows))
    hparams = [yaml.safe_load(p.read_text()) for p in board.glob("*/hparams.yml")]
    assert len(hparams) == 2 and all(h["config/steps"] == 5 and h["derived/total_steps"] == 5 for h in hparams)
    assert all(isinstance(v, (bool, int, float, str)) for h in hparams for v in h.values())
    assert not (out / "trackers" / trackers.WANDB_ID_FILE).exists()


def test_finetune_tensorboard_holds_every_metrics_row_and_the_final_scores(tmp_path: Path, monkeypatch) -> None:
    from clasp.datasets.synth import SynthConfig
    from clasp.datasets.synth.layouts import write_layout
    from tests.test_finetune_run import write_random_export

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    export = write_random_export(tmp_path / "export")
    data = write_layout("market1501", SynthConfig(out=tmp_path / "market", identities=4, images_per_id=4, cameras=2))
    out = tmp_path / "run"
    run("finetune", "reid", "--backbone", str(export), "--data", str(data), "--out", str(out), "--ids-per-batch", "2",
        "--images-per-id", "2", "--precision", "fp32", "--num-workers", "0", "--log-every", "1", "--steps", "3",
        "--report-to", "tensorboard")
    results = json.loads((out / "results.json").read_text())
    expected = numbers(read_metrics(out)) | numbers([{"step": 3, "results": results}])
    assert {"loss", "triplet", "lr", "results/map", "results/rank1"} <= set(expected)
    assert_same_numbers(tensorboard_scalars(out / "trackers" / "clasp-finetune-reid"), expected)


def test_train_clip_tensorboard_holds_every_metrics_row_and_the_held_out_scores(tmp_path: Path) -> None:
    from clasp.datasets.synth.corpus import CorpusConfig, write_corpus

    corpus = tmp_path / "corpus"
    write_corpus(CorpusConfig(corpus, pairs=40, cameras=2, seed=0))
    out = tmp_path / "clip"
    run("train-clip", "--corpus", str(corpus), "--out", str(out), "--steps", "3", "--report-to", "tensorboard")
    rows = read_metrics(out)
    assert [row["step"] for row in rows] == [1, 2, 3]
    heldout = json.loads((out / "train_report.json").read_text())["heldout"]
    expected = numbers(rows) | numbers([{"step": 3, "heldout": heldout}])
    assert {"loss", "lr", "logit_scale", "heldout/image_to_text_r1"} <= set(expected)
    board = out / "trackers" / "clasp-train-clip"
    assert_same_numbers(tensorboard_scalars(board), expected)
    (hparams,) = [yaml.safe_load(p.read_text()) for p in board.glob("*/hparams.yml")]
    assert hparams["config/steps"] == 3 and hparams["config/corpus"] == str(corpus)


def test_wandb_offline_continues_the_same_run_on_resume(store: Path, tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("wandb", reason="wandb is not installed (pip install -e '.[wandb]'): the W&B path is untested")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out, config = tmp_path / "run", tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({**TINY_RUN, "local_crops": 1, "num_workers": 0, "steps": 3}))
    run("pretrain", "--shards", str(store), "--out", str(out), "--config", str(config), "--report-to", "wandb",
        "--run-name", "tiny", "--stop-at", "2")
    run_id = (out / "trackers" / trackers.WANDB_ID_FILE).read_text().strip()
    run("pretrain", "--out", str(out), "--resume")
    assert (out / "trackers" / trackers.WANDB_ID_FILE).read_text().strip() == run_id
    starts = sorted((out / "trackers" / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(starts) == 2 and all(list(start.glob(f"run-{run_id}.wandb")) for start in starts)


def hide_package(monkeypatch: pytest.MonkeyPatch, *hidden: str) -> None:
    """importlib.util.find_spec answers None for `hidden`, as it does where they are not installed."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in hidden else real(name, *a))


@pytest.mark.parametrize("command", ["pretrain", "finetune", "train-clip"])
def test_a_tracker_that_is_not_installed_is_one_line_before_any_work(command: str, tmp_path: Path,
                                                                     monkeypatch) -> None:
    hide_package(monkeypatch, "tensorboard")
    out = tmp_path / "out"
    args = {"pretrain": ["pretrain", "--shards", str(tmp_path / "no-shards"), "--steps", "2"],
            "finetune": ["finetune", "reid", "--backbone", str(tmp_path / "no-export"), "--data",
                         str(tmp_path / "no-data")],
            "train-clip": ["train-clip", "--corpus", str(tmp_path / "no-corpus")]}[command]
    result = CliRunner().invoke(main, [*args, "--out", str(out), "--report-to", "tensorboard"])
    line = one_error_line(result, 2)
    assert line.endswith("report_to tensorboard: the tensorboard package is not installed; "
                         "pip install -e '.[tensorboard]' installs it"), line
    written = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert written == ([] if command == "train-clip" else ["error.log"])  # the refusal's record, as for any setting


def test_all_is_the_trackers_installed_and_rows_are_flattened_to_numbers(monkeypatch) -> None:
    hide_package(monkeypatch, "wandb", "mlflow")
    assert trackers.chosen("all") == ["tensorboard"] and trackers.report_to_problem("all") is None
    hide_package(monkeypatch, "tensorboard")
    assert trackers.chosen("all") == [] and "none of tensorboard, wandb, mlflow" in trackers.report_to_problem("all")
    row = {"step": 7, "loss": 1.5, "expert_load": [[0.25, 0.75]], "precision": "fp32", "grad_norm": None, "ok": True}
    assert trackers.metric_values(row) == {"loss": 1.5, "expert_load/0/0": 0.25, "expert_load/0/1": 0.75}
    config = {"config": {"out": Path("run"), "steps": None, "lr": 1e-3, "input_hw": [224, 112], "resume": False}}
    assert trackers.hyperparameters(config) == {"config/out": "run", "config/lr": 1e-3, "config/input_hw/0": 224,
                                                "config/input_hw/1": 112, "config/resume": False}
