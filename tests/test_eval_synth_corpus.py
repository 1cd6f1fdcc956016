"""The caption corpus: deterministic, disjoint from every evaluation world, captions only of what shows."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
from click.testing import CliRunner

from clasp.cli import main
from clasp.datasets.synth.cameras import make_camera
from clasp.datasets.synth.captions import Visible, person_caption
from clasp.datasets.synth.corpus import (CAMERA_STREAM, IDENTITY_OFFSET, IDENTITY_STREAM, MATERIAL_INDEX,
                                           CorpusConfig, CorpusDrawer, write_corpus)
from clasp.datasets.synth.drawing import render, sample_pose
from clasp.datasets.synth.identities import sample_identity


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_pictures(tmp_path: Path) -> None:
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        write_corpus(CorpusConfig(tmp_path / name, pairs=40, cameras=4, seed=seed))
    a, b, c = (_files(tmp_path / n) for n in "abc")
    assert a == b
    assert a["captions.jsonl"] != c["captions.jsonl"]


def test_folder_holds_only_images_and_captions(tmp_path: Path) -> None:
    summary = write_corpus(CorpusConfig(tmp_path, pairs=120, cameras=4, seed=0))
    files = [p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file()]
    assert sorted(str(f) for f in files if f.suffix != ".jpg") == ["captions.jsonl"]
    rows = [json.loads(line) for line in (tmp_path / "captions.jsonl").read_text().splitlines()]
    assert len(rows) == summary.pairs == 120 == len(files) - 1
    assert all(set(r) == {"path", "caption"} and (tmp_path / r["path"]).is_file() and r["caption"] for r in rows)
    assert {"person", "scene", "head", "lower", "feet"} <= set(summary.kinds)


def test_corpus_identities_and_cameras_never_those_of_a_world(vocab) -> None:
    """Same integer seed: no corpus identity or camera equals one that `clasp synth` draws."""
    seed = 0
    world_ids = [dataclasses.replace(sample_identity(seed, pid, vocab), pid=0) for pid in range(200)]
    drawer = CorpusDrawer(seed, cameras=8, vocab=vocab)
    corpus_ids = [dataclasses.replace(sample_identity(seed, IDENTITY_OFFSET + k, vocab, stream=IDENTITY_STREAM), pid=0)
                  for k in range(200)]
    assert not any(c == w for c in corpus_ids for w in world_ids)
    world_backgrounds = [make_camera(seed, c).background for c in range(8)]
    assert not any(np.array_equal(cam.background, w) for cam in drawer.cameras for w in world_backgrounds)
    assert IDENTITY_STREAM not in (1, 2, 3) and CAMERA_STREAM not in (1, 2, 3)


def test_glasses_never_mentioned_from_behind(vocab) -> None:
    """A back view hides the glasses, so no caption speaks of them, either way; a front view may."""
    camera = make_camera(0, 0, stream=CAMERA_STREAM)
    wearers = [i for i in (sample_identity(0, IDENTITY_OFFSET + k, vocab, stream=IDENTITY_STREAM) for k in range(300))
               if i.has("glasses")][:20]
    assert wearers
    front_mentions = 0
    for n, identity in enumerate(wearers):
        rng = np.random.default_rng(n)
        for back in (True, False):
            pose = dataclasses.replace(sample_pose(rng, camera), back_view=back, occluder=None)
            _, materials = render(identity, camera, pose, rng, MATERIAL_INDEX)
            for _ in range(10):
                caption = person_caption(rng, identity, Visible.of(materials), back)
                if back:
                    assert "glasses" not in caption, caption
                else:
                    front_mentions += "glasses" in caption
    assert front_mentions > 0


def test_hidden_items_are_not_mentioned(vocab) -> None:
    """Every corpus caption of a person names a worn item only when its pixels show."""
    drawer = CorpusDrawer(1, cameras=4, vocab=vocab)
    nothing = Visible(np.zeros(len(MATERIAL_INDEX), np.int64))
    identity = sample_identity(1, IDENTITY_OFFSET, vocab, stream=IDENTITY_STREAM)
    for seed in range(30):
        caption = person_caption(np.random.default_rng(seed), identity, nothing, False)
        for word in ("hair", "top", "shirt", "trousers", "skirt", "shorts", "backpack", "bag", "hat", "glasses", "shoes"):
            assert word not in caption, caption
    assert drawer.draw_picture(0)[2]


def test_cli_synth_corpus(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["synth-corpus", "--out", str(tmp_path / "c"), "--pairs", "25", "--cameras", "3"])
    assert result.exit_code == 0, result.output
    assert "wrote 25 image-caption pairs" in result.output
    assert len((tmp_path / "c" / "captions.jsonl").read_text().splitlines()) == 25
