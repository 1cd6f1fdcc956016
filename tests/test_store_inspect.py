"""`clasp inspect` against a store whose labels are known, so every number can be computed by hand."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from clasp.cli import main
from clasp.store import ClipInfo, LabelRows, Manifest, SkippedInput, record_shard, shard_name, write_shard_for
from clasp.store.attributes import top_values
from clasp.store.inspect import InspectConfig, inspect_store, reason_head, render_summary

GRID = (2, 2)


def _rows(vocab, masks, confs, gender_female, start):
    n = len(masks)
    logits = np.zeros((n, vocab.num_attributes), np.float16)
    gender = dict(vocab.group_slices())["gender"]
    names = [v for g, v in vocab.attribute_columns if g == "gender"]
    for i, female in enumerate(gender_female):
        logits[i, gender.start + names.index("female" if female else "male")] = 5.0
    return LabelRows(
        image=[b"not decoded by inspect"] * n,
        key=[f"{start + i:040d}" for i in range(n)],
        path=[f"p{start + i}.jpg" for i in range(n)],
        orig_hw=np.full((n, 2), 100, np.uint16),
        part_mask=np.asarray(masks, np.uint8).reshape(n, *GRID),
        part_conf=np.asarray(confs, np.float16).reshape(n, *GRID),
        attr_logits=logits,
    )


@pytest.fixture
def known_store(tmp_path, vocab):
    """Three shards: 2 hand-made images, 1 hand-made image, then 300 images of all-'arms' (index 3)."""
    root = tmp_path / "known"
    manifest = Manifest(ClipInfo("clip-x", revision="abc", input_hw=(64, 32), dense_mode="naive"), vocab, GRID)
    manifest.skipped = [
        SkippedInput("cam1/a.jpg", "cannot decode: broken data stream"),
        SkippedInput("cam2/b.jpg", "cannot decode: cannot identify image file"),
        SkippedInput("c.jpg", "empty file (0 bytes)"),
        SkippedInput("d.jpg", "cannot decode: x"),
        SkippedInput("e.jpg", "cannot decode: y"),
    ]
    blocks = [
        _rows(vocab, [[0, 1, 2, 2], [1, 1, 1, 5]], [[0.5, 0.25, 1, 1], [0.75, 0.75, 0.75, 1]], [False, True], 0),
        _rows(vocab, [[0, 0, 0, 0]], [[0.5, 0.5, 0.5, 0.5]], [True], 2),
        _rows(vocab, [[3, 3, 3, 3]] * 300, [[0.125] * 4] * 300, [False] * 300, 3),
    ]
    for i, rows in enumerate(blocks):
        record_shard(manifest, root, write_shard_for(manifest, root, shard_name(i), rows))
    return root


def test_summary_numbers(known_store, vocab):
    s = inspect_store(InspectConfig(known_store, examples_per_reason=2))
    assert (s.images, s.shards) == (303, 3)
    sizes = [(known_store / shard_name(i)).stat().st_size for i in range(3)]
    assert s.total_bytes == sum(sizes)
    assert s.bytes_per_image == pytest.approx(sum(sizes) / 303)
    assert (s.clip_model, s.clip_revision, s.clip_size, s.dense_mode) == ("clip-x", "abc", [64, 32], "naive")
    assert s.label_grid == [2, 2]
    assert s.vocab_sha256 == vocab.sha256

    cells = 303 * 4
    by_part = {p.name: p for p in s.parts}
    assert [p.name for p in s.parts] == vocab.part_names
    expected_cells = {"background": 1 + 4, "head": 1 + 3, "upper body": 2, "arms": 1200, "lower body": 0, "feet": 1}
    assert {name: p.cells for name, p in by_part.items()} == expected_cells
    for name, n in expected_cells.items():
        assert by_part[name].share == pytest.approx(n / cells)
    assert by_part["background"].mean_conf == pytest.approx((0.5 + 4 * 0.5) / 5)
    assert by_part["arms"].mean_conf == pytest.approx(0.125)
    assert by_part["lower body"].mean_conf is None
    assert s.invalid_part_cells == 0

    gender = next(g for g in s.attributes if g.group == "gender")
    assert {v.name: v.images for v in gender.values} == {"male": 301, "female": 2}
    assert {v.name: v.share for v in gender.values} == pytest.approx({"male": 301 / 303, "female": 2 / 303})
    for group in s.attributes:  # every group distributes all images
        assert sum(v.images for v in group.values) == 303

    assert s.skipped == 5
    assert [(r.reason, r.count, r.examples) for r in s.skipped_by_reason] == [
        ("cannot decode", 4, ["cam1/a.jpg", "cam2/b.jpg"]),
        ("empty file", 1, ["c.jpg"]),
    ]


def test_mean_conf_of_head(known_store):
    # head cells: image 0 cell 1 (0.25), image 1 cells 0,1,2 (0.75 each)
    s = inspect_store(InspectConfig(known_store))
    head = next(p for p in s.parts if p.name == "head")
    assert head.mean_conf == pytest.approx((0.25 + 3 * 0.75) / 4)


def test_text_rendering(known_store):
    text = render_summary(inspect_store(InspectConfig(known_store)))
    assert "303 in 3 shards" in text
    assert "clip-x @ abc, input 64x32, dense mode naive" in text
    assert "2x2 (4 cells per image)" in text
    assert any(line.split()[:2] == ["arms", "99.0%"] for line in text.splitlines())
    assert "male 99.3%  female 0.7%" in text
    assert any(line.split()[:3] == ["cannot", "decode", "4"] and "cam1/a.jpg" in line for line in text.splitlines())


@pytest.mark.parametrize("reason, head", [
    ("cannot decode: broken data stream", "cannot decode"),
    ("empty file (0 bytes)", "empty file"),
    ("too small: 5x3 pixels; need 16", "too small"),
    ("truncated file, 12 bytes", "truncated file"),
    ("odd", "odd"),
    (": nothing before", ": nothing before"),
])
def test_reason_head(reason, head):
    assert reason_head(reason) == head


def test_top_values_ranks_groups_by_confidence_over_chance(vocab):
    logits = np.zeros(vocab.num_attributes, np.float32)
    cols = dict(vocab.group_slices())
    colour = [v for g, v in vocab.attribute_columns if g == "upper-body colour"]
    logits[cols["upper-body colour"].start + colour.index("red")] = 6.0  # one of many values, very sure
    logits[cols["gender"].start] = 0.5  # two values, barely better than chance
    tops = top_values(logits, vocab, k=2)
    assert [(t.group, t.value) for t in tops] == [("upper-body colour", "red"), ("gender", "male")]
    assert tops[0].probability == pytest.approx(np.exp(6) / (np.exp(6) + len(colour) - 1))
    assert tops[1].probability == pytest.approx(1 / (1 + np.exp(-0.5)))


def test_cli_json_matches_the_library(known_store):
    result = CliRunner().invoke(main, ["inspect", str(known_store), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data == json.loads(json.dumps(inspect_store(InspectConfig(known_store)).to_dict()))
    assert data["images"] == 303 and data["parts"][3]["cells"] == 1200


def test_cli_text(known_store):
    result = CliRunner().invoke(main, ["inspect", str(known_store)])
    assert result.exit_code == 0, result.output
    assert "skipped inputs: 5" in result.stdout


def test_empty_store(make_store):
    s = inspect_store(InspectConfig(make_store([])))
    assert (s.images, s.shards, s.bytes_per_image) == (0, 0, None)
    assert all(p.share == 0 for p in s.parts)
    assert "no images" in render_summary(s)


def test_cli_errors_are_one_line_exit_2(tmp_path, make_store):
    missing = CliRunner().invoke(main, ["inspect", str(tmp_path / "nope")])
    no_manifest = CliRunner().invoke(main, ["inspect", str(tmp_path)])
    root = make_store([2])
    (root / shard_name(0)).unlink()
    broken = CliRunner().invoke(main, ["inspect", str(root)])
    for result, named in [(missing, tmp_path / "nope"), (no_manifest, tmp_path / "manifest.json"),
                          (broken, root / shard_name(0))]:
        assert result.exit_code == 2
        assert result.stderr.startswith(f"error: {named}: ") and result.stderr.count("\n") == 1
        assert result.stdout == ""
