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
