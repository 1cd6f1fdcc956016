"""`clasp train-clip`: loss goes down, output reloads offline unchanged, labels beat chance, bad input is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from clasp.cli import main
from clasp.evaluation.label_quality import LabelQualityConfig, evaluate_labels
from clasp.datasets.synth import SynthConfig, synthesize
from clasp.labeling.clip_loading import load_clip
from clasp.labeling.run import LabelConfig, run_labeling
from clasp.labeling.train_clip import REPORT_FILE, TrainClipConfig, train


def _quick(corpus: Path, out: Path, steps: int, seed: int = 0) -> TrainClipConfig:
    return TrainClipConfig(corpus=corpus, out=out, steps=steps, full_batch=8, mosaic_batch=4, seed=seed, progress=False)


def test_loss_goes_down(caption_corpus: Path, tmp_path: Path, one_torch_thread) -> None:
    curve = [v for _, v in train(_quick(caption_corpus, tmp_path, steps=12)).report.loss_curve]
    assert sum(curve[-3:]) / 3 < sum(curve[:3]) / 3


def test_same_seed_same_weights(caption_corpus: Path, tmp_path: Path, one_torch_thread) -> None:
    runs = [train(_quick(caption_corpus, tmp_path / str(i), steps=2, seed=5)).model.state_dict() for i in range(2)]
    other = train(_quick(caption_corpus, tmp_path / "o", steps=2, seed=6)).model.state_dict()
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not all(torch.equal(runs[0][k], other[k]) for k in runs[0])


def test_saved_clip_reloads_offline_with_identical_outputs(trained_clip) -> None:
    folder, trained = trained_clip
    model, tokenizer = load_clip(folder)  # HF_HUB_OFFLINE=1 (conftest): only the folder can answer
    pixels = torch.randn(2, 3, 224, 112, generator=torch.Generator().manual_seed(0))
    text = tokenizer(["a photo of a person's head.", "a red top."], padding=True, return_tensors="pt")
    with torch.no_grad():
        for m in (model, trained.model):
            m.eval()
        a = model(input_ids=text.input_ids, attention_mask=text.attention_mask, pixel_values=pixels,
                  interpolate_pos_encoding=True)
        b = trained.model(input_ids=text.input_ids, attention_mask=text.attention_mask, pixel_values=pixels,
                          interpolate_pos_encoding=True)
    assert torch.equal(a.logits_per_image, b.logits_per_image)
    report = json.loads((folder / REPORT_FILE).read_text())
    assert report["heldout"]["image_to_text_r1"] == trained.report.heldout["image_to_text_r1"]


def test_trained_clip_retrieves_held_out_pairs_above_chance(trained_clip) -> None:
    """What a short run learns: captions of pairs it never saw are found above chance (zero-shot)."""
    heldout = trained_clip[1].report.heldout
    assert heldout["image_to_text_mean_rank"] < heldout["chance_mean_rank"], heldout


def test_trained_clip_labels_a_world(trained_clip, tmp_path: Path, one_torch_thread) -> None:
    """`clasp label --clip-model DIR` takes the trained folder like a hub model; eval-labels scores it."""
    folder, _ = trained_clip
    synthesize(SynthConfig(tmp_path / "world", identities=6, images_per_id=2, cameras=2, seed=11))
    run_labeling(LabelConfig(images=tmp_path / "world" / "images", out=tmp_path / "shards", clip_model=str(folder),
                             clip_size=(224, 112), precision="fp32", shard_size=64, progress=False))
    quality = evaluate_labels(LabelQualityConfig(shards=tmp_path / "shards", truth=tmp_path / "world"))
    assert quality["matched_rows"] == 12 and quality["label_grid"] == [14, 7]
    assert 0.0 <= quality["parts"]["mIoU"] <= 1.0 and 0.0 <= quality["attributes"]["mA"] <= 1.0


def _corpus_with(tmp_path: Path, lines: list[str], images: tuple[str, ...] = ()) -> Path:
    from PIL import Image

    folder = tmp_path / "corpus"
    folder.mkdir()
    for name in images:
        Image.new("RGB", (32, 16), (200, 10, 10)).save(folder / name)
    (folder / "captions.jsonl").write_text("".join(line + "\n" for line in lines))
    return folder


@pytest.mark.parametrize("case, needle", [
    ("missing folder", "no such folder"),
    ("no captions", "captions.jsonl: missing"),
    ("empty", "empty corpus"),
    ("missing image", "captions.jsonl:2: image 'b.jpg' does not exist"),
    ("not json", "captions.jsonl:1: not JSON"),
])
def test_bad_corpus_is_one_line_and_exit_2(tmp_path: Path, case: str, needle: str) -> None:
    if case == "missing folder":
        corpus = tmp_path / "nowhere"
    elif case == "no captions":
        corpus = tmp_path / "c"
        corpus.mkdir()
    elif case == "empty":
        corpus = _corpus_with(tmp_path, [])
    elif case == "missing image":
        corpus = _corpus_with(tmp_path, ['{"path": "a.jpg", "caption": "a red top."}',
                                         '{"path": "b.jpg", "caption": "a shoe."}'], images=("a.jpg",))
    else:
        corpus = _corpus_with(tmp_path, ["a.jpg\ta red top."], images=("a.jpg",))
    result = CliRunner().invoke(main, ["train-clip", "--corpus", str(corpus), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.output
    assert not (tmp_path / "out").exists()


def _signal_at_step(monkeypatch, step: int, signals: int) -> None:
    """The loss of step `step` sends `signals` SIGTERMs to this process (each seen before the step goes on)."""
    import os
    import signal
    import time

    from clasp.labeling import train_clip

    real, calls = train_clip.contrastive_loss, [0]

    def loss(*args, **kwargs):
        calls[0] += 1
        if calls[0] == step:
            for _ in range(signals):
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(train_clip, "contrastive_loss", loss)


def test_a_sigterm_stops_after_the_step_and_saves_the_model(caption_corpus: Path, tmp_path: Path, monkeypatch,
                                                           one_torch_thread, capfd) -> None:
    from clasp.labeling.train_clip import train_clip

    out = tmp_path / "out"
    (out).mkdir()
    (out / "error.log").write_text("error: the last start\n")
    _signal_at_step(monkeypatch, 3, signals=1)
    report = train_clip(_quick(caption_corpus, out, steps=40))
    assert (report.steps, report.stopped_by) == (3, "SIGTERM")
    assert "SIGTERM: stopping after step 3 and saving the model; send it again to stop at once" in capfd.readouterr().err
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert json.loads((out / REPORT_FILE).read_text())["stopped_by"] == "SIGTERM"
    assert load_clip(out) is not None and not (out / "error.log").exists()


SECOND_SIGNAL = """
import sys
from pathlib import Path
import pytest
from tests.test_labeling_train_clip import _quick, _signal_at_step
from clasp.labeling.train_clip import train_clip

_signal_at_step(pytest.MonkeyPatch(), 2, signals=2)
train_clip(_quick(Path(sys.argv[1]), Path(sys.argv[2]), steps=40))
"""


@pytest.mark.slow  # the default run has tests/test_runs_stop_signals.py's small version
def test_a_second_sigterm_exits_at_once_with_143_and_its_line(caption_corpus: Path, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", SECOND_SIGNAL, str(caption_corpus), str(out)], capture_output=True,
                          text=True, env=env, timeout=300, cwd=Path(__file__).parent.parent)
    assert done.returncode == 143, done.stderr[-3000:]
    line = ("error: second SIGTERM: stopped at once during step 2; the model was not saved (train-clip keeps no "
            "checkpoint to resume); start the run again")
    assert line in done.stderr and (out / "error.log").read_text().splitlines() == [line]


def test_a_folder_another_command_writes_is_refused_untouched(caption_corpus: Path, tmp_path: Path) -> None:
    from clasp.labeling.train_clip import train_clip
    from clasp.runs import FolderLockError, exclusive_folder

    out = tmp_path / "out"
    with exclusive_folder(out, "clasp label"):
        with pytest.raises(FolderLockError, match=r"`clasp label` \(pid \d+\) is writing this folder"):
            train_clip(_quick(caption_corpus, out, steps=2))
        assert sorted(p.name for p in out.iterdir()) == [".clasp.lock"]
