"""Market-1501 and MSMT17 read and scored as torchreid does, and the places where we refuse on purpose.

The reference is a transcription of torchreid's rules (KaiyangZhou/deep-person-reid:
`Market1501.process_dir`, `MSMT17.process_dir`, `eval_market1501`), written here
in a dozen lines: our lists, gallery sizes and scores must equal its own.
"""

from __future__ import annotations

import contextlib
import glob
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from clasp.cli import main
from clasp.datasets.errors import DatasetError
from clasp.datasets.market1501 import read_market1501
from clasp.datasets.msmt17 import read_msmt17
from clasp.evaluation.rerank import re_rank
from clasp.evaluation.run_eval import EvalConfig, evaluate
from clasp.finetune.config import build_config
from clasp.finetune.data import load_data
from clasp.finetune.recipes import ReidRecipe, reid_metrics

# ---------------------------------------------------------------- torchreid's rules, transcribed

TORCHREID_NAME = re.compile(r"([-\d]+)_c(\d)")


def torchreid_market_dir(folder: Path, relabel: bool = False) -> list[tuple[str, int, int]]:
    """(name, pid, 0-based camera) as torchreid's Market1501.process_dir reads a folder (sorted by name;
    labels in sorted pid order)."""
    names = sorted(Path(p).name for p in glob.glob(str(folder / "*.jpg")))
    parsed = [tuple(map(int, TORCHREID_NAME.search(n).groups())) for n in names]
    label = {pid: i for i, pid in enumerate(sorted({pid for pid, _ in parsed} - {-1}))}
    data = []
    for name, (pid, cam) in zip(names, parsed):
        if pid == -1:
            continue  # junk images are just ignored
        assert 0 <= pid <= 1501 and 1 <= cam <= 6
        data.append((name, label[pid] if relabel else pid, cam - 1))
    return data


def torchreid_msmt_list(list_file: Path) -> list[tuple[str, int, int]]:
    """(relative path, pid, 0-based camera) as torchreid's MSMT17.process_dir reads a list."""
    data = []
    for line in list_file.read_text().splitlines(keepends=True):
        path, pid = line.split(" ")
        data.append((path, int(pid), int(path.split("_")[2]) - 1))
    return data


def torchreid_eval(distmat, q_pids, g_pids, q_camids, g_camids) -> tuple[float, float, int]:
    """(mAP, rank-1, valid queries) of torchreid's eval_market1501."""
    indices = np.argsort(distmat, axis=1)
    matches = g_pids[indices] == q_pids[:, None]
    aps, firsts = [], []
    for q in range(len(q_pids)):
        order = indices[q]
        raw = matches[q][~((g_pids[order] == q_pids[q]) & (g_camids[order] == q_camids[q]))]
        if not raw.any():
            continue  # the query identity does not appear in the gallery
        firsts.append(raw[0])
        aps.append((raw.cumsum() / np.arange(1, len(raw) + 1) * raw).sum() / raw.sum())
    assert aps, "all query identities do not appear in gallery"
    return float(np.mean(aps)), float(np.mean(firsts)), len(aps)


# ---------------------------------------------------------------- a Market-1501 folder with every case

def market_names(rng: np.random.Generator, ids: int) -> dict[str, list[str]]:
    """File names per folder: test ids with queries and galleries over cameras 1..6 (one query whose only
    gallery images share its camera), distractors, junk in every split, a distractor in training."""
    names: dict[str, list[str]] = {"query": [], "bounding_box_test": [], "bounding_box_train": []}
    frame = iter(range(1, 10_000))

    def add(folder: str, pid: int, cam: int) -> None:
        names[folder].append(f"{pid:04d}_c{cam}s1_{next(frame):06d}_00.jpg" if pid >= 0 else
                             f"-1_c{cam}s1_{next(frame):06d}_00.jpg")

    for pid in range(1, ids + 1):
        add("query", pid, int(rng.integers(1, 7)))
        for cam in rng.choice(np.arange(1, 7), size=int(rng.integers(2, 5)), replace=False):
            for _ in range(int(rng.integers(1, 3))):
                add("bounding_box_test", pid, int(cam))
    add("query", ids + 1, 3)
    add("bounding_box_test", ids + 1, 3)  # only in the query's camera: skipped by both
    for folder, distractors, junk in (("query", 0, 2), ("bounding_box_test", ids // 2, ids // 3),
                                      ("bounding_box_train", 2, 3)):
        for _ in range(distractors):
            add(folder, 0, int(rng.integers(1, 7)))
        for _ in range(junk):
            add(folder, -1, int(rng.integers(1, 7)))
    for pid in range(100, 100 + ids // 2):
        for cam in (1, 6):
            add("bounding_box_train", pid, cam)
    return names


def write_market(root: Path, names: dict[str, list[str]], colours: dict[str, tuple] | None = None) -> Path:
    """Empty files (the readers look at names only), or 8x16 images of the given colours."""
    for folder, files in names.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name in files:
            if colours is None:
                (root / folder / name).write_bytes(b"")
            else:
                Image.new("RGB", (8, 16), colours[name]).save(root / folder / name, quality=95)
    (root / "query" / "Thumbs.db").write_bytes(b"\0")
    (root / "bounding_box_test" / "0001_c1s1_000001_00.png").write_bytes(b"")  # not a .jpg: ignored by both
    return root


def features_of(names: dict[str, list[str]], rng: np.random.Generator, dim: int = 8) -> dict[str, np.ndarray]:
    """A feature per image: its identity's centre plus noise; junk lies near some test identity (a partial
    crop of a person), so whether re-ranking sees it changes the numbers."""
    every = [n for files in names.values() for n in files]
    centres = {pid: rng.normal(size=dim) for pid in {int(n.split("_")[0]) for n in every}}
    test_ids = [pid for pid in centres if pid > 0]
    out = {}
    for name in every:
        pid = int(name.split("_")[0])
        centre = centres[int(rng.choice(test_ids))] if pid == -1 else centres[pid]
        out[name] = centre + 0.9 * rng.normal(size=dim)
    return out


def normalised(rows: list[np.ndarray]) -> np.ndarray:
    x = np.stack(rows)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, list[str]]]:
    names = market_names(np.random.default_rng(0), ids=30)
    return write_market(tmp_path_factory.mktemp("market") / "market", names), names


def reid_config(data: Path, out: Path, **extra):
    return build_config(task="reid", backbone="unused", data=str(data), out=str(out), **extra)


def test_lists_equal_torchreids(market, tmp_path: Path) -> None:
    root, _ = market
    ours = read_market1501(root)
    for folder, split in (("query", ours.query), ("bounding_box_test", ours.gallery),
                          ("bounding_box_train", ours.train)):
        mine = [(p.name, int(i), int(c) - 1) for p, i, c in zip(split.paths, split.identity, split.camera)]
        assert mine == torchreid_market_dir(root / folder), folder
    assert (ours.query.junk, ours.gallery.junk, ours.train.junk) == (2, 10, 3)
    assert len(ours.gallery) == len(torchreid_market_dir(root / "bounding_box_test"))
    data = load_data(reid_config(root, tmp_path / "run"))  # training: junk dropped, distractors one more class
    torchreid_train = torchreid_market_dir(root / "bounding_box_train", relabel=True)
    assert [(p.name, int(label)) for p, label in zip(data.train_paths, data.train_labels)] == \
           [(name, label) for name, label, _ in torchreid_train]
    assert data.num_classes == 16 and data.dropped["junk_images"] == {"query": 2, "gallery": 10, "train": 3}


@pytest.mark.parametrize("rerank", [False, True])
def test_scores_equal_torchreids_with_and_without_reranking(market, tmp_path: Path, rerank: bool) -> None:
    root, names = market
    features = features_of(names, np.random.default_rng(1))
    ours = read_market1501(root)
    qf = normalised([features[p.name] for p in ours.query.paths])
    gf = normalised([features[p.name] for p in ours.gallery.paths])
    got = reid_metrics(qf, gf, ours.query, ours.gallery, reid_config(root, tmp_path / "run", rerank=rerank))

    query, gallery = torchreid_market_dir(root / "query"), torchreid_market_dir(root / "bounding_box_test")
    tq, tg = normalised([features[n] for n, _, _ in query]), normalised([features[n] for n, _, _ in gallery])
    ids_cams = [np.array([row[k] for row in split]) for split in (query, gallery) for k in (1, 2)]
    q_pids, q_cams, g_pids, g_cams = ids_cams
    dist = 2 - 2 * tq @ tg.T
    mAP, rank1, valid = torchreid_eval(dist, q_pids, g_pids, q_cams, g_cams)
    assert (got["map"], got["rank1"]) == pytest.approx((mAP, rank1), abs=1e-9)
    assert (got["queries"], got["skipped_queries"], got["gallery"]) == (valid, len(query) - valid, len(gallery))
    if rerank:
        reranked = re_rank(dist, 2 - 2 * tq @ tq.T, 2 - 2 * tg @ tg.T, 20, 6, 0.3)
        mAP, rank1, _ = torchreid_eval(reranked, q_pids, g_pids, q_cams, g_cams)
        assert (got["map_rerank"], got["rank1_rerank"]) == pytest.approx((mAP, rank1), abs=1e-9)
        print(f"mAP {got['map']:.4f}, re-ranked {got['map_rerank']:.4f}")


# ---------------------------------------------------------------- the same through `clasp eval` and the recipe

def mean_colour(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    cls = images.float().mean((2, 3))
    return cls, cls[:, None, :].expand(-1, 128, -1)


@pytest.fixture(scope="module")
def coloured_market(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small folder of real images, coloured by identity plus noise, with a 0000 query added."""
    rng = np.random.default_rng(2)
    names = market_names(rng, ids=6)
    names["query"].append("0000_c2s1_009999_00.jpg")
    centre: dict[int, np.ndarray] = {}
    colours = {}
    for files in names.values():
        for name in files:
            pid = int(name.split("_")[0])
            base = centre.setdefault(pid, rng.uniform(40, 215, 3))
            colours[name] = tuple(int(v) for v in np.clip(base + rng.normal(0, 25, 3), 0, 255))
    return write_market(tmp_path_factory.mktemp("coloured") / "market", names, colours)


def torchreid_on_images(root: Path, *, with_distractor_queries: bool) -> tuple[float, float, int]:
    from clasp.evaluation.features import load_images

    query, gallery = torchreid_market_dir(root / "query"), torchreid_market_dir(root / "bounding_box_test")
    if not with_distractor_queries:
        query = [row for row in query if row[1] != 0]
    q = mean_colour(load_images([root / "query" / n for n, _, _ in query]))[0].numpy()
    g = mean_colour(load_images([root / "bounding_box_test" / n for n, _, _ in gallery]))[0].numpy()
    q, g = normalised(list(q)), normalised(list(g))
    pids_cams = [np.array([row[k] for row in split]) for split in (query, gallery) for k in (1, 2)]
    return torchreid_eval(1 - q @ g.T, pids_cams[0], pids_cams[2], pids_cams[1], pids_cams[3])


def test_clasp_eval_equals_torchreid_and_drops_a_distractor_query(coloured_market: Path) -> None:
    r = evaluate(EvalConfig(backbone=Path("stand-in"), data=coloured_market, precision="fp32"),
                 extractor=mean_colour)["reid"]
    mAP, rank1, valid = torchreid_on_images(coloured_market, with_distractor_queries=False)
    assert (r["mAP"], r["rank1"], r["queries"]) == (pytest.approx(mAP, abs=1e-9), pytest.approx(rank1, abs=1e-9), valid)
    assert r["gallery"] == len(torchreid_market_dir(coloured_market / "bounding_box_test"))
    assert r["distractor_queries"] == 1 and r["junk_images"]["gallery"] == 2
    # torchreid scores the 0000 query with the gallery's distractors as its correct matches; we never do
    assert torchreid_on_images(coloured_market, with_distractor_queries=True)[2] == valid + 1


def test_reranking_runs_over_the_scored_gallery(coloured_market: Path, tmp_path: Path, monkeypatch) -> None:
    import clasp.evaluation.rerank as rerank

    seen = []

    def recording(dist_qg, dist_qq, dist_gg, *args):
        seen.append((dist_qg.shape, dist_gg.shape))
        return re_rank(dist_qg, dist_qq, dist_gg, *args)

    monkeypatch.setattr(rerank, "re_rank", recording)
    config = reid_config(coloured_market, tmp_path / "run", rerank=True, k1=4, k2=2, eval_batch_size=64)
    recipe = ReidRecipe(config, load_data(config))
    out = recipe.evaluate(lambda x: {"neck": mean_colour(x)[0]}, "cpu", contextlib.nullcontext, lambda _: None)
    gallery = len(torchreid_market_dir(coloured_market / "bounding_box_test"))
    queries = len(recipe.data.query)
    assert seen == [((queries, gallery), (gallery, gallery))] and out["gallery"] == gallery
    assert out["junk_images"]["gallery"] == 2 and 0 <= out["map_rerank"] <= 1


# ---------------------------------------------------------------- refusals

@pytest.mark.parametrize("folder, name, words", [
    ("query", "0001_c7s1_000101_00.jpg", "camera c7 is not one of Market-1501's c1..c6"),
    ("bounding_box_test", "0001_c0s1_000101_00.jpg", "camera c0"),
    ("bounding_box_test", "0001_c12s1_000101_00.jpg", "camera c12"),  # torchreid would read camera 1
    ("bounding_box_train", "1502_c1s1_000101_00.jpg", "identity 1502 is outside Market-1501's 0..1501"),
    ("query", "-2_c1s1_000101_00.jpg", "identity -2"),
])
def test_a_market_name_out_of_range_is_refused_naming_the_file(tmp_path: Path, folder: str, name: str,
                                                                words: str) -> None:
    root = write_market(tmp_path / "market", {"query": ["0001_c1s1_000001_00.jpg"],
                                              "bounding_box_test": ["0001_c2s1_000002_00.jpg"],
                                              "bounding_box_train": []})
    (root / folder).mkdir(exist_ok=True)
    (root / folder / name).write_bytes(b"")
    with pytest.raises(DatasetError) as caught:
        read_market1501(root)
    assert str(caught.value).startswith(f"{root / folder / name}: ") and words in str(caught.value)


def test_a_two_digit_camera_is_one_error_line_exit_2(tmp_path: Path) -> None:
    root = write_market(tmp_path / "market", {"query": ["0001_c1s1_000001_00.jpg"],
                                              "bounding_box_test": ["0001_c12s1_000002_00.jpg"]})
    for command in (["eval", "--backbone", str(tmp_path / "no-export")],
                    ["finetune", "reid", "--backbone", str(tmp_path / "no-export"), "--out", str(tmp_path / "run")]):
        result = CliRunner().invoke(main, [*command, "--data", str(root)])
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1, result.output
        assert lines[0].startswith(f"error: {root / 'bounding_box_test' / '0001_c12s1_000002_00.jpg'}: camera c12")


def test_a_query_folder_of_junk_only_is_refused(tmp_path: Path) -> None:
    root = write_market(tmp_path / "market", {"query": ["-1_c1s1_000001_00.jpg"],
                                              "bounding_box_test": ["0001_c2s1_000002_00.jpg"]})
    with pytest.raises(DatasetError, match="no images left once its 1 junk .-1. and 0 distractor"):
        read_market1501(root)


# ---------------------------------------------------------------- MSMT17

def write_msmt(root: Path, lines: dict[str, list[str]]) -> Path:
    for kind, listed in lines.items():
        folder = root / ("train" if kind == "train" else "test")
        for line in listed:
            (folder / line.split()[0]).parent.mkdir(parents=True, exist_ok=True)
            (folder / line.split()[0]).write_bytes(b"")
        (root / f"list_{kind}.txt").write_text("".join(line + "\n" for line in listed))
    return root


MSMT = {"train": ["0000/0000_000_01_0303morning_0015_0.jpg 0", "0001/0001_003_15_0303noon_0020_1.jpg 1"],
        "query": ["0000/0000_000_03_0303morning_0015_0.jpg 0", "0007/0007_001_12_0113noon_0300_0.jpg 7"],
        "gallery": ["0000/0000_001_04_0303morning_0016_0.jpg 0", "3059/3059_001_07_0113noon_0301_0.jpg 3059"]}


def test_msmt17_lists_equal_torchreids(tmp_path: Path) -> None:
    root = write_msmt(tmp_path / "msmt", MSMT)
    ours = read_msmt17(root)
    for kind, split in (("train", ours.train), ("query", ours.query), ("gallery", ours.gallery)):
        folder = root / ("train" if kind == "train" else "test")
        mine = [(p.relative_to(folder).as_posix(), int(i), int(c) - 1)
                for p, i, c in zip(split.paths, split.identity, split.camera)]
        assert mine == torchreid_msmt_list(root / f"list_{kind}.txt"), kind


@pytest.mark.parametrize("line, words", [("0000/0000_000_16_0303morning_0015_0.jpg 0", "camera 16"),
                                         ("0000/0000_000_00_0303morning_0015_0.jpg 0", "camera 00"),
                                         ("0000/0000_000_01_0303morning_0015_0.jpg -1", "label -1")])
def test_msmt17_label_or_camera_out_of_range_is_refused_naming_the_line(tmp_path: Path, line: str,
                                                                         words: str) -> None:
    root = write_msmt(tmp_path / "msmt", {**MSMT, "gallery": [*MSMT["gallery"], line]})
    with pytest.raises(DatasetError) as caught:
        read_msmt17(root)
    assert str(caught.value).startswith(f"{root / 'list_gallery.txt'}:3: ") and words in str(caught.value)
