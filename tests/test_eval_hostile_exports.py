"""Exports that must not be evaluated: malformed config.json, weights that do not fit it, NaN weights or features.

Each is refused before anything is scored, with one `error:` line naming the file
and the field, exit 2, and no results file written.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from clasp.cli import main
from clasp.evaluation.errors import EvalInputError
from clasp.evaluation.run_eval import EvalConfig, evaluate
from clasp.pretraining.backbone import BACKBONE_FORMAT, BACKBONE_VERSION
from clasp.pretraining.vit import PromptedViT, ViTConfig

ARCH = dict(dim=32, depth=2, heads=2, patch_size=16, img_hw=[256, 128], mlp_ratio=4.0, moe_layers=1,
            experts=2, top_k=1, expert_mlp_ratio=None, tasks=["instance", "part", "attribute"])


def write_export(folder: Path, architecture: dict | None = None, weights_of: dict | None = None, **top) -> Path:
    """An export folder: weights of the architecture `weights_of` (default: the same), config.json as given."""
    architecture = dict(ARCH if architecture is None else architecture)
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    state = PromptedViT(ViTConfig.from_dict(dict(weights_of or ARCH))).state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    config = {"format": BACKBONE_FORMAT, "version": BACKBONE_VERSION, "architecture": architecture,
              "task": "instance", "image_hw": [256, 128], "feature_dim": architecture.get("dim"), **top}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def eval_cli(backbone: Path, data: Path, out: Path):
    return CliRunner().invoke(main, ["eval", "--backbone", str(backbone), "--data", str(data), "--out", str(out),
                                     "--tasks", "reid", "--precision", "fp32"])


def assert_refused(result, out: Path, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert not out.exists()


@pytest.mark.parametrize("name, change, needles", [
    ("heads-text", {"heads": "two"}, ["heads must be an integer", "'two'"]),
    ("not-divisible", {"dim": 33}, ["dim 33 is not divisible by heads 2"]),
    ("huge-dim", {"dim": 1_000_000, "heads": 2}, ["dim must be in [8, 4096]"]),
    ("huge-model", {"dim": 4096, "heads": 16, "depth": 64}, ["billion parameters"]),
    ("size-not-multiple", {"img_hw": [250, 128]}, ["is not a multiple of patch 16"]),
    ("unknown-field", {"width": 3}, ["unknown architecture field 'width'"]),
    ("moe-deeper-than-model", {"moe_layers": 5}, ["moe_layers must be in [0, depth=2]"]),
])
def test_malformed_architecture_is_an_export_error(synth_world: Path, tmp_path: Path, name, change, needles) -> None:
    export = write_export(tmp_path / name, {**ARCH, **change})
    before = (export / "config.json").read_bytes()
    result = eval_cli(export, synth_world, tmp_path / "results.json")
    assert_refused(result, tmp_path / "results.json", str(export / "config.json"), "architecture", *needles)
    assert (export / "config.json").read_bytes() == before


def test_weights_of_another_width_are_an_export_error(synth_world: Path, tmp_path: Path) -> None:
    export = write_export(tmp_path / "mismatch", ARCH, weights_of={**ARCH, "dim": 48})
    result = eval_cli(export, synth_world, tmp_path / "results.json")
    assert_refused(result, tmp_path / "results.json", str(export / "model.safetensors"), "does not match config.json")


def test_other_config_fields_are_checked(synth_world: Path, tmp_path: Path) -> None:
    export = write_export(tmp_path / "task", task=3)
    assert_refused(eval_cli(export, synth_world, tmp_path / "r.json"), tmp_path / "r.json",
                   str(export / "config.json"), "task must be one of")
    export = write_export(tmp_path / "fdim", feature_dim=64)
    assert_refused(eval_cli(export, synth_world, tmp_path / "r.json"), tmp_path / "r.json",
                   "feature_dim 64 differs from architecture.dim 32")


def test_nan_weights_are_refused(synth_world: Path, tmp_path: Path) -> None:
    export = write_export(tmp_path / "nan")
    from safetensors.torch import load_file
    state = load_file(str(export / "model.safetensors"))
    state["norm.weight"][:3] = float("nan")
    save_file(state, str(export / "model.safetensors"))
    result = eval_cli(export, synth_world, tmp_path / "results.json")
    assert_refused(result, tmp_path / "results.json", str(export / "model.safetensors"), "'norm.weight'",
                   "3 NaN or infinite values")


def test_non_finite_features_are_refused_naming_the_export_and_the_rows(synth_world: Path, tmp_path: Path) -> None:
    def extractor(images: torch.Tensor):
        cls = torch.ones(len(images), 8)
        cls[0, 1] = float("inf")  # the first image of every batch
        return cls, torch.zeros(len(images), 128, 8)

    out = tmp_path / "results.json"
    config = EvalConfig(backbone=tmp_path / "some-export", data=synth_world, tasks=("reid",), out=out,
                        batch_size=16, precision="fp32")
    with pytest.raises(EvalInputError) as caught:
        evaluate(config, extractor=extractor)
    n = 48  # 8 identities x 6 images
    assert str(caught.value).startswith(f"{tmp_path / 'some-export'}: ")
    assert f"NaN or infinite features for {int(np.ceil(n / 16))} of {n} images" in str(caught.value)
    assert not out.exists()


def test_per_probe_evaluation_of_an_export_without_a_probes_prompt_is_refused(synth_world: Path,
                                                                                tmp_path: Path) -> None:
    arch = dict(ARCH, tasks=["instance", "attribute"])
    export = write_export(tmp_path / "no-part", architecture=arch, weights_of=arch)
    out = tmp_path / "r.json"
    result = CliRunner().invoke(main, ["eval", "--backbone", str(export), "--data", str(synth_world), "--out", str(out),
                                       "--tasks", "parsing", "--task-prompt", "per-probe", "--precision", "fp32"])
    assert_refused(result, out, str(export), "no task prompt 'part'", "['instance', 'attribute']")
