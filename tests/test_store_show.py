"""`clasp show`: the contact sheet has the expected geometry, and colours exactly where the masks say."""

from __future__ import annotations

import io

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from clasp.cli import main
from clasp.store import ClipInfo, LabelRows, Manifest, Vocabulary, record_shard, shard_name, write_shard_for
from clasp.store.contact_sheet import ContactSheetConfig, make_contact_sheet, part_colours, upsample_nearest

GREY = 128
JUNK_ROW = 5


@pytest.fixture
def three_part_store(tmp_path):
    """6 uniform grey 64x32 images over 2 shards; top half of the 4x2 grid is head (even rows) or body (odd)."""
    vocab = Vocabulary.from_dict({
        "parts": [{"name": n, "prompts": [f"a photo of {n}."]} for n in ("background", "head", "body")],
        "attributes": [
            {"group": "gender", "values": [{"name": "male", "prompts": ["a man."]}, {"name": "female", "prompts": ["a woman."]}]},
            {"group": "bag", "values": [{"name": "yes", "prompts": ["a bag."]}, {"name": "no", "prompts": ["no bag."]}]},
        ],
    })
    grid = (4, 2)
    root = tmp_path / "shards"
    manifest = Manifest(ClipInfo("clip-x"), vocab, grid)
    manifest.image_store.hw = (64, 32)
    buf = io.BytesIO()
    Image.new("RGB", (32, 64), (GREY, GREY, GREY)).save(buf, "JPEG", quality=95)
    for s, start in enumerate((0, 4)):
        n = 4 if s == 0 else 2
        masks = np.zeros((n, *grid), np.uint8)
        for i in range(n):
            masks[i, :2] = 1 + (start + i) % 2
        logits = np.zeros((n, 4), np.float16)
        logits[:, 1] = 4.0  # female, confident
        logits[:, 2] = 0.1  # bag: yes, barely
        rows = LabelRows(
            image=[b"junk" if start + i == JUNK_ROW else buf.getvalue() for i in range(n)],
            key=[f"{start + i:040d}" for i in range(n)], path=[f"img{start + i}.jpg" for i in range(n)],
            orig_hw=np.full((n, 2), 64, np.uint16), part_mask=masks,
            part_conf=np.ones((n, *grid), np.float16), attr_logits=logits,
        )
        record_shard(manifest, root, write_shard_for(manifest, root, shard_name(s), rows))
    return root


def test_sheet_geometry_and_overlay_colours(three_part_store, tmp_path):
    config = ContactSheetConfig(three_part_store, tmp_path / "out", n=6, seed=0, columns=3, image_height=128,
                                attribute_lines=2, on_bad_row="skip")
    sheet = make_contact_sheet(config)
    assert sheet.bad_rows == 1 and "shard-000001.h5: row 1: image: does not decode" in sheet.notes[0]
    assert sheet.path == tmp_path / "out" / "contact_sheet.png"
    png = Image.open(sheet.path)
    # width: 2 margins of 16 + 3 tiles of (2 images of 64 + gap 4) + 2 gutters of 20
    # height: margins 16 + 16, header 56 (title, one legend row), 2 rows of tiles (128 + 3 + 3 text lines
    # of 15) and one gutter of 20
    assert png.size == sheet.size == (16 + 3 * 132 + 2 * 20 + 16, 16 + 56 + 2 * (128 + 3 + 3 * 15) + 20 + 16)
    assert png.mode == "RGB"
    assert sorted(int(t.key) for t in sheet.tiles) == list(range(6))

    pixels = np.asarray(png).astype(int)
    head, body = part_colours(3)[1:]
    for tile in sheet.tiles:
        row = int(tile.key)
        left, top, right, bottom = tile.overlay_box
        assert (right - left, bottom - top) == (64, 128)
        overlay = pixels[top:bottom, left:right]
        base = 200 if row == JUNK_ROW else GREY
        colour = np.array(head if row % 2 == 0 else body)
        expected_top = 0.45 * base + 0.55 * colour
        assert np.abs(overlay[:64] - expected_top).max() <= 2, row  # top half of the grid: the part colour
        assert np.abs(overlay[64:] - base).max() <= 2, row  # background: uncoloured (grey)
        pl, pt, pr, pb = tile.image_box
        plain = pixels[pt:pb, pl:pr]
        if row == JUNK_ROW:  # an undecodable image: a grey placeholder saying so
            assert np.median(plain) == 200 and plain.min() < 100
        else:
            assert np.abs(plain - base).max() <= 2, row  # the plain image is untouched
        assert [(t.group, t.value) for t in tile.attributes] == [("gender", "female"), ("bag", "yes")]


def test_sample_is_seeded_and_can_be_limited_to_one_shard(three_part_store, tmp_path):
    def keys(**kw):
        sheet = make_contact_sheet(ContactSheetConfig(three_part_store, tmp_path / "o", image_height=32,
                                                      on_bad_row="skip", **kw))
        return [int(t.key) for t in sheet.tiles]

    assert keys(n=3, seed=1) == keys(n=3, seed=1)
    assert len({tuple(keys(n=3, seed=s)) for s in range(6)}) > 1
    assert set(keys(n=3, seed=5, shard="shard-000001.h5")) <= {4, 5}
    assert keys(n=10, shard="1") == [4, 5]
    assert keys(n=100) == list(range(6))


def test_upsample_nearest_keeps_cells_as_blocks():
    mask = np.array([[0, 1], [2, 3]], np.uint8)
    assert np.array_equal(upsample_nearest(mask, 6, 4), np.kron(mask, np.ones((3, 2), np.uint8)))
    big = upsample_nearest(np.arange(28 * 14).reshape(28, 14), 256, 128)
    rows_per_cell = np.bincount(big[:, 0] // 14)
    assert rows_per_cell.sum() == 256 and set(rows_per_cell) <= {9, 10}
    assert np.all(np.diff(big[:, 0]) >= 0)


def test_part_colours_are_distinct_and_background_is_none():
    colours = part_colours(40)
    assert colours[0] is None
    assert len(set(colours[1:])) == 39


def test_cli_writes_the_sheet_and_prints_its_path(three_part_store, tmp_path):
    out = tmp_path / "sheet"
    result = CliRunner().invoke(main, ["show", str(three_part_store), "--out", str(out), "-n", "4", "--seed", "2",
                                       "--on-bad-row", "skip",
                                       "--image-height", "64"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out / "contact_sheet.png")
    assert Image.open(out / "contact_sheet.png").format == "PNG"
    assert not list(out.glob("*.tmp"))


def test_cli_errors_are_one_line_exit_2(three_part_store, tmp_path):
    (tmp_path / "a-file").write_text("x")
    cases = [
        (["show", str(tmp_path / "nope"), "--out", str(tmp_path / "o")], str(tmp_path / "nope")),
        (["show", str(tmp_path), "--out", str(tmp_path / "o")], str(tmp_path / "manifest.json")),
        (["show", str(three_part_store), "--out", str(tmp_path / "a-file")], str(tmp_path / "a-file")),
        (["show", str(three_part_store), "--out", str(tmp_path / "o"), "--shard", "9"], "no shard '9'"),
    ]
    for args, named in cases:
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, args
        assert result.stderr.startswith("error: ") and named in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "o").exists()
