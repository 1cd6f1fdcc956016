"""Benchmark readers on tiny folders in each format (written by `clasp synth --layout`), and every bad-input exit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from scipy.io import loadmat, savemat

from clasp.cli import main
from clasp.datasets.errors import DatasetError
from clasp.datasets.lip import IGNORE, read_cihp, read_label_map, read_lip
from clasp.datasets.market1501 import read_market1501
from clasp.datasets.msmt17 import read_msmt17
from clasp.datasets.pa100k import read_pa100k
from clasp.datasets.peta import read_peta
from clasp.datasets.synth import SynthConfig
from clasp.datasets.synth.layouts import write_layout


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("layouts")
    return {name: write_layout(name, SynthConfig(out=root / name, identities=6, images_per_id=3, cameras=2))
            for name in ("market1501", "msmt17", "pa100k", "peta", "lip", "cihp")}


def copy_of(folder: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(folder, tmp_path / folder.name))


def test_market1501_layout_has_junk_distractors_and_an_ignored_file(layouts) -> None:
    m = read_market1501(layouts["market1501"])
    assert sorted(set(m.train.identity)) == [1, 2, 3]  # the lower half of 6 identities, numbered from 1
    assert set(m.query.identity) == {4, 5, 6} and m.query.ignored == 1  # Thumbs.db
    assert 0 in set(m.gallery.identity) and m.gallery.junk > 0  # distractors kept, junk dropped and counted
    assert -1 not in set(m.gallery.identity)
    pairs = set(zip(m.query.identity, m.query.camera))
    assert len(pairs) == len(m.query)  # one query per (identity, camera)


def test_msmt17_lists_give_labels_and_cameras(layouts) -> None:
    s = read_msmt17(layouts["msmt17"])
    assert len(s.train) == 9 and sorted(set(s.train.identity)) == [0, 1, 2]  # labels from 0
    assert set(s.query.camera) <= {1, 2} and len(s.query) == 6
    assert all(p.is_file() for p in s.gallery.paths)
    line = (layouts["msmt17"] / "list_query.txt").read_text().splitlines()[0]
    assert line.split()[0].split("/")[1].split("_")[2] in ("01", "02")


def test_pa100k_annotation_mat(layouts) -> None:
    mat = loadmat(str(layouts["pa100k"] / "annotation.mat"))
    assert {"attributes", "train_images_name", "val_images_name", "test_images_name",
            "train_label", "val_label", "test_label"} <= set(mat)
    data = read_pa100k(layouts["pa100k"])
    assert data.names[0] == "gender=male" and len(data.names) == 34
    assert sum(len(s) for s in data.splits.values()) == 18
    assert not (layouts["pa100k"] / ".world").exists()  # only the benchmark's own files are left
    train = data.splits["train"]
    assert train.labels.dtype == bool and train.labels.shape == (len(train), 34)
    assert (train.labels[:, 1:5].sum(1) == 1).all()  # exactly one age value per image


def test_peta_mat_selected_attributes_and_partitions(layouts) -> None:
    zero, one = read_peta(layouts["peta"], partition=0), read_peta(layouts["peta"], partition=1)
    assert "occluded" not in zero.names and len(zero.names) == 34  # only the selected attributes
    assert zero.splits["train"].paths != one.splits["train"].paths
    assert all(p.suffix == ".png" for p in zero.splits["test"].paths)
    with pytest.raises(DatasetError, match="no partition 5"):
        read_peta(layouts["peta"], partition=5)


def test_peta_label_txt_folders(tmp_path: Path) -> None:
    for subset, people in (("VIPeR", {"1": "personalMale hairShort", "2": "personalFemale"}),
                           ("CUHK", {"7": "personalMale carryingBackpack"})):
        archive = tmp_path / subset / "archive"
        archive.mkdir(parents=True)
        (archive / "Label.txt").write_text("".join(f"{k} {v}\n" for k, v in people.items()))
        for pid in people:
            for n in range(2):
                Image.new("RGB", (32, 64)).save(archive / f"{pid}_{n}.png")
    data = read_peta(tmp_path)
    assert data.names == ["carryingBackpack", "hairShort", "personalFemale", "personalMale"]
    assert sum(len(s) for s in data.splits.values()) == 6
    everything = np.concatenate([s.labels for s in data.splits.values()])
    assert everything.sum(0).tolist() == [2, 2, 2, 4]
    with pytest.raises(DatasetError, match="unknown attribute 'hat'"):
        data.select(["hat"])
    (tmp_path / "CUHK" / "archive" / "Label.txt").write_text("9 personalMale\n")
    with pytest.raises(DatasetError, match="person 9 has no image"):
        read_peta(tmp_path)


def test_lip_and_cihp_label_maps_with_ignore(layouts) -> None:
    lip, cihp = read_lip(layouts["lip"]), read_cihp(layouts["cihp"])
    assert lip.num_classes == 20 and len(lip.splits["train"]) == 9 and len(lip.splits["val"]) == 9
    assert [p.name for p in cihp.splits["val"].images] == [p.name for p in lip.splits["val"].images]
    label = read_label_map(lip.splits["train"].labels[0], 20)
    assert label.shape == (256, 128) and IGNORE in label
    assert set(np.unique(label)) <= {0, 5, 9, 13, 14, 18, IGNORE}


def test_bad_label_maps(layouts, tmp_path: Path) -> None:
    lip = copy_of(layouts["lip"], tmp_path)
    first = sorted((lip / "TrainVal_parsing_annotations" / "train_segmentations").glob("*.png"))[0]
    Image.fromarray(np.full((256, 128), 30, np.uint8), mode="L").save(first)
    with pytest.raises(DatasetError, match="class 30 is not in 0..19"):
        read_label_map(first, 20)
    Image.fromarray(np.zeros((100, 50), np.uint8), mode="L").save(first)
    with pytest.raises(DatasetError, match="label map is 100x50, its image 256x128"):
        read_lip(lip)


def finetune(task: str, data: Path, out: Path, backbone: Path, *extra: str):
    return CliRunner().invoke(main, ["finetune", task, "--backbone", str(backbone), "--data", str(data),
                                     "--out", str(out), "--steps", "1", "--precision", "fp32", *extra])


def assert_refused(result, out: Path, *words: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [l for l in result.output.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for word in words:
        assert word in lines[0], lines[0]
    assert [p.name for p in out.iterdir()] == ["error.log"]


def test_every_bad_input_exits_2_with_one_line(layouts, tmp_path: Path) -> None:
    nowhere = tmp_path / "no-export"
    market = copy_of(layouts["market1501"], tmp_path)
    import shutil

    shutil.rmtree(market / "bounding_box_test")
    assert_refused(finetune("reid", market, tmp_path / "o1", nowhere), tmp_path / "o1", "missing bounding_box_test/")
    msmt = copy_of(layouts["msmt17"], tmp_path)
    (msmt / "list_query.txt").unlink()
    assert_refused(finetune("reid", msmt, tmp_path / "o2", nowhere, "--layout", "msmt17"), tmp_path / "o2",
                   "missing list_query.txt")
    assert_refused(finetune("reid", layouts["market1501"], tmp_path / "o3", nowhere, "--ids-per-batch", "9"),
                   tmp_path / "o3", "P = 9 identities")
    pa = copy_of(layouts["pa100k"], tmp_path)
    mat = loadmat(str(pa / "annotation.mat"))
    mat["train_label"] = mat["train_label"][:, :30]
    savemat(str(pa / "annotation.mat"), {k: v for k, v in mat.items() if not k.startswith("__")})
    assert_refused(finetune("attributes", pa, tmp_path / "o4", nowhere), tmp_path / "o4", "train_label", "expected")
    assert_refused(finetune("attributes", layouts["peta"], tmp_path / "o5", nowhere, "--attributes", "gender=male,wings"),
                   tmp_path / "o5", "unknown attribute 'wings'")
    lip = copy_of(layouts["lip"], tmp_path)
    shutil.rmtree(lip / "TrainVal_parsing_annotations" / "val_segmentations")
    assert_refused(finetune("parsing", lip, tmp_path / "o6", nowhere), tmp_path / "o6", "val_segmentations")
    assert_refused(finetune("parsing", layouts["pa100k"], tmp_path / "o7", nowhere), tmp_path / "o7",
                   "not a lip or cihp folder")
    assert_refused(finetune("reid", layouts["market1501"], tmp_path / "o8", nowhere, "--ids-per-batch", "2"), tmp_path / "o8",
                   "backbone folder does not exist")
    config = tmp_path / "c.yaml"
    config.write_text("ids_per_batch: 4\nwingspan: 3\n")
    assert_refused(finetune("reid", layouts["market1501"], tmp_path / "o9", nowhere, "--config", str(config)),
                   tmp_path / "o9", "unknown setting 'wingspan'")


def test_synth_layout_command(tmp_path: Path) -> None:
    got = CliRunner().invoke(main, ["synth", "--layout", "peta", "--out", str(tmp_path / "peta"), "--identities", "4",
                                    "--images-per-id", "2", "--cameras", "2"])
    assert got.exit_code == 0, got.output
    assert sorted(p.name for p in (tmp_path / "peta").iterdir()) == ["PETA.mat", "images"]
    assert len(read_peta(tmp_path / "peta").splits["test"]) == 4  # 40 % of 4 identities x 2 images


@pytest.mark.parametrize("layout, option, words", [("market1501", ("--cameras", "7"), "at most 6 cameras"),
                                                   ("market1501", ("--identities", "1502"), "at most 1501 identities"),
                                                   ("msmt17", ("--cameras", "16"), "at most 15 cameras")])
def test_synth_never_writes_a_reid_folder_its_readers_refuse(tmp_path: Path, layout: str, option, words: str) -> None:
    got = CliRunner().invoke(main, ["synth", "--layout", layout, "--out", str(tmp_path / "out"), *option])
    lines = got.output.strip().splitlines()
    assert got.exit_code == 2 and len(lines) == 1 and lines[0].startswith(f"error: --layout {layout}: "), got.output
    assert words in lines[0] and not (tmp_path / "out").exists()


def test_bad_annotation_files_and_label_maps_exit_2_before_anything_is_written(layouts, tmp_path: Path) -> None:
    nowhere = tmp_path / "no-export"
    pa = copy_of(layouts["pa100k"], tmp_path)
    mat = {k: v for k, v in loadmat(str(pa / "annotation.mat")).items() if not k.startswith("__")}
    savemat(str(pa / "annotation.mat"), {k: v for k, v in mat.items() if k != "test_label"})
    assert_refused(finetune("attributes", pa, tmp_path / "o1", nowhere), tmp_path / "o1", "missing test_label")
    mat["train_label"] = mat["train_label"].astype(np.int64) * 2
    savemat(str(pa / "annotation.mat"), mat)
    assert_refused(finetune("attributes", pa, tmp_path / "o2", nowhere), tmp_path / "o2", "labels must be 0 or 1")
    peta = copy_of(layouts["peta"], tmp_path)
    savemat(str(peta / "PETA.mat"), {"other": np.zeros(3)})
    assert_refused(finetune("attributes", peta, tmp_path / "o3", nowhere), tmp_path / "o3", "no struct `peta`")
    lip = copy_of(layouts["lip"], tmp_path)
    first = sorted((lip / "TrainVal_parsing_annotations" / "val_segmentations").glob("*.png"))[0]
    Image.fromarray(np.zeros((100, 50), np.uint8), mode="L").save(first)
    assert_refused(finetune("parsing", lip, tmp_path / "o4", nowhere), tmp_path / "o4", "label map is 100x50")


@pytest.mark.parametrize("workers", ["0", "1"])
def test_a_label_map_class_out_of_range_found_while_training_exits_2(layouts, tmp_path: Path, monkeypatch,
                                                                     workers: str) -> None:
    from tests.test_finetune_run import write_random_export

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    lip = copy_of(layouts["lip"], tmp_path)
    first = sorted((lip / "TrainVal_parsing_annotations" / "train_segmentations").glob("*.png"))[0]
    Image.fromarray(np.full((256, 128), 30, np.uint8), mode="L").save(first)
    out, export = tmp_path / "run", write_random_export(tmp_path / "export")
    settings = ["--batch-size", "9", "--head-dim", "8", "--num-workers", workers]
    got = finetune("parsing", lip, out, export, *settings)
    assert got.exit_code == 2, got.output
    errors = [line for line in got.output.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: {first}: class 30 is not in 0..19 (or 255 = ignore)"], got.output
    assert (out / "error.log").read_text() == errors[0] + "\n"
    assert not (out / "results.json").exists()
    Image.fromarray(np.zeros((256, 128), np.uint8), mode="L").save(first)  # fixed: the run continues
    again = finetune("parsing", lip, out, export, *settings, "--resume")
    assert again.exit_code == 0, again.output
    assert json.loads((out / "results.json").read_text())["steps"] == 1 and not (out / "error.log").exists()
