"""`clasp verify`: exit 0 on a good folder, exit 1 with one line per bad shard naming it and the problem."""

from __future__ import annotations

import json

from click.testing import CliRunner

from clasp.cli import main
from clasp.store import Manifest, record_shard, shard_name, write_shard


def _verify(root):
    return CliRunner().invoke(main, ["verify", str(root)])


def test_good_folder_exits_0(make_store):
    root = make_store([3, 2])
    result = _verify(root)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"ok: 2 shards, 5 rows in {root}"


def test_each_bad_shard_gets_one_line(make_store, make_rows):
    root = make_store([2, 2, 2, 2, 2])
    (root / shard_name(0)).unlink()                              # missing
    path = root / shard_name(1)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01                                 # one corrupted byte
    path.write_bytes(bytes(data))
    path = root / shard_name(2)
    path.write_bytes(path.read_bytes()[:-1])                     # truncated
    manifest = Manifest.load(root)                               # wrong vocabulary, recorded with its own hash
    entry = write_shard(root / shard_name(3), make_rows(2), vocab_sha256="f" * 64, clip_model=manifest.clip.model,
                        label_grid=manifest.label_grid, num_attributes=manifest.vocab.num_attributes)
    record_shard(manifest, root, entry)

    result = _verify(root)
    assert result.exit_code == 1
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 4
    expected = {
        0: "missing",
        1: "sha256 mismatch",
        2: "truncated",
        3: "another vocabulary",
    }
    for line, (index, problem) in zip(lines, expected.items()):
        assert line.startswith(f"BAD {root / shard_name(index)}: "), line
        assert problem in line, line
    assert shard_name(4) not in result.stdout
    assert "4 of 5 shards bad" in result.stderr


def test_unreadable_manifest_is_one_bad_line(make_store):
    root = make_store([2])
    (root / "manifest.json").write_text("{", encoding="utf-8")
    result = _verify(root)
    assert result.exit_code == 1
    [line] = result.stdout.strip().splitlines()
    assert line.startswith(f"BAD {root / 'manifest.json'}: manifest does not parse as JSON")
    assert "manifest refused, no shard checked" in result.stderr


def test_leftover_tmp_is_a_note_not_a_failure(make_store):
    root = make_store([2])
    (root / (shard_name(1) + ".tmp")).write_bytes(b"half a shard")
    result = _verify(root)
    assert result.exit_code == 0
    assert f"note: {root / (shard_name(1) + '.tmp')} is not listed" in result.stderr


def test_missing_folder_or_manifest_is_a_usage_error(tmp_path):
    for root, named in [(tmp_path / "nope", tmp_path / "nope"), (tmp_path, tmp_path / "manifest.json")]:
        result = _verify(root)
        assert result.exit_code == 2
        assert result.stderr.count("\n") == 1 and str(named) in result.stderr
        assert "Traceback" not in result.output


def test_verify_does_not_modify_anything(make_store):
    root = make_store([2])
    (root / shard_name(0)).unlink()
    before = json.loads((root / "manifest.json").read_text())
    _verify(root)
    assert json.loads((root / "manifest.json").read_text()) == before
    assert not (root / shard_name(0)).exists()
