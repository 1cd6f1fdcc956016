"""Fine-tuning a tiny random backbone beats the frozen probe of `clasp eval` on the synthetic world.

Attributes (PA-100K layout) and parsing (LIP layout); re-ID's comparison is in
test_finetune_run.py. The frozen side is `clasp eval`'s own probe, unchanged:
features of the export as loaded by `load_backbone`, then the linear probe
fitted to convergence by L-BFGS on standardised features (`clasp.evaluation.probes`),
scored on the same test split with the same metric as the fine-tuned model.
These runs take a minute or two on a shared CPU, so they are `slow`; the
default run keeps the short version (the loss goes down) in test_finetune_run.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clasp.evaluation.features import extract_features
from clasp.datasets.label_grid import majority_downsample
from clasp.datasets.lip import read_label_map
from clasp.evaluation.probes import attribute_probe, parsing_probe
from clasp.datasets.synth import SynthConfig
from clasp.datasets.synth.layouts import write_layout
from clasp.finetune.config import build_config
from clasp.finetune.data import load_data
from clasp.finetune.loop import run_finetune
from clasp.pretraining.backbone import load_backbone
from tests.conftest import losses
from tests.test_finetune_run import FAST, write_random_export

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def fine_tune(task: str, export: Path, data: Path, out: Path, **settings):
    """A short fine-tuning run; its config (for the data the recipe read) and its results."""
    config = build_config(task=task, backbone=str(export), data=str(data), out=str(out), warmup=0.0,
                          **FAST, **settings)
    result = run_finetune(config)
    assert result.stopped_by == "end"
    return config, result.results


def frozen_attribute_ma(export: Path, data) -> float:
    """`clasp eval`'s attribute probe on the export's CLS features: each binary attribute a two-value group
    (value 0 = present, as `binary_attributes` reads a two-value group), so mA is over the same attributes."""
    backbone = load_backbone(export)
    train, test = data.splits["train"], data.splits["test"]
    x_train = extract_features(backbone, train.paths, keep_patches=False).cls
    x_test = extract_features(backbone, test.paths, keep_patches=False).cls
    groups = [2] * train.labels.shape[1]
    return attribute_probe(x_train, (~train.labels).astype(int), x_test, (~test.labels).astype(int), groups)["mA"]


def frozen_parsing_miou(export: Path, data) -> float:
    """`clasp eval`'s parsing probe on the export's patch tokens; pixel mIoU on `val` with 255 not scored."""
    backbone = load_backbone(export)
    k = data.num_classes
    train, val = data.splits["train"], data.splits["val"]
    f_train, f_val = extract_features(backbone, train.images), extract_features(backbone, val.images)
    m_train = np.stack([read_label_map(p, k) for p in train.labels])
    m_val = np.stack([read_label_map(p, k) for p in val.labels])
    probe = parsing_probe(f_train.patches, majority_downsample(m_train, f_train.grid, k), f_val.patches,
                          majority_downsample(m_val, f_val.grid, k), k, m_val)
    return probe["mIoU_pixel"]


def test_attribute_fine_tuning_beats_the_frozen_probe(tmp_path: Path) -> None:
    export = write_random_export(tmp_path / "export")
    data = write_layout("pa100k", SynthConfig(out=tmp_path / "pa100k", identities=60, images_per_id=4, cameras=2))
    config, tuned = fine_tune("attributes", export, data, tmp_path / "run", steps=200, batch_size=16, lr=3e-3)
    logged = losses(tmp_path / "run")
    assert np.mean([logged[s] for s in (198, 199, 200)]) < 0.8 * np.mean([logged[s] for s in (1, 2, 3)])
    frozen = frozen_attribute_ma(export, load_data(config))
    print(f"fine-tuned mA {tuned['ma']:.3f}, frozen probe mA {frozen:.3f} ({tuned['images']} test images)")
    assert tuned["ma"] > frozen + 0.03, (tuned["ma"], frozen)


def test_parsing_fine_tuning_beats_the_frozen_probe(tmp_path: Path) -> None:
    export = write_random_export(tmp_path / "export")
    data = write_layout("lip", SynthConfig(out=tmp_path / "lip", identities=12, images_per_id=4, cameras=2))
    config, tuned = fine_tune("parsing", export, data, tmp_path / "run", steps=120, batch_size=8, lr=3e-3, head_dim=16)
    logged = losses(tmp_path / "run")
    assert np.mean([logged[s] for s in (118, 119, 120)]) < 0.6 * np.mean([logged[s] for s in (1, 2, 3)])
    frozen = frozen_parsing_miou(export, load_data(config))
    print(f"fine-tuned mIoU {tuned['miou']:.3f}, frozen probe mIoU {frozen:.3f} ({tuned['images']} val images)")
    assert tuned["miou"] > frozen + 0.05, (tuned["miou"], frozen)
