"""`clasp export --format onnx`: onnxruntime gives PyTorch's features at any batch size; the MoE's dense twin is exact."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from clasp.cli import main
from clasp.pretraining import load_backbone
from clasp.pretraining.moe import PCMoE
from clasp.pretraining.onnx_export import DenseMoE
from clasp.pretraining.vit import PromptedViT, ViTConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ARCH = dict(dim=32, depth=2, heads=2, img_hw=(64, 32), moe_layers=1, experts=4, top_k=2)


def spread(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Weights far from their initialisation, so that routing differs from token to token."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
    return module


def write_run(root: Path, architecture: dict) -> Path:
    """A run folder with one checkpoint as `clasp pretrain` lays it out (teacher and student backbones)."""
    folder = root / "checkpoints" / "step-00000003"
    folder.mkdir(parents=True)
    config = ViTConfig(**architecture)
    weights = {}
    for seed, which in enumerate(("teacher", "student")):
        state = spread(PromptedViT(config), seed).state_dict()
        weights.update({f"{which}.backbone.{k}": v.contiguous() for k, v in state.items()})
    save_file(weights, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model": {"vit": config.to_dict()}}))
    (folder / "trainer.json").write_text(json.dumps({"step": 3}))
    return root


def test_dense_moe_gives_the_eager_mixture() -> None:
    moe = spread(PCMoE(dim=16, hidden=24, experts=5, top_k=2), seed=3).eval()
    g = torch.Generator().manual_seed(0)  # not the global generator: what ran before must not matter
    x, prompt = torch.randn(3, 40, 16, generator=g), torch.randn(3, 16, generator=g)
    with torch.no_grad():
        eager, dense = moe(x, prompt), DenseMoE(moe)(x, prompt)
        _, index, _ = moe.route(x, prompt)
    assert len(torch.unique(index[..., 0])) == 5  # the tokens really go to different experts
    torch.testing.assert_close(dense, eager, rtol=0, atol=1e-6)


@pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxruntime", "onnxscript")),
                    reason="the onnx extra is not installed")
def test_onnx_export_matches_pytorch_at_two_batch_sizes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import onnx
    import onnxruntime

    run = write_run(tmp_path / "run", ARCH)
    runner = CliRunner()
    with caplog.at_level(logging.INFO, logger="clasp"):
        for fmt in ("safetensors", "onnx"):
            done = runner.invoke(main, ["export", str(run), "--task", "part", "--format", fmt,
                                        "--out", str(tmp_path / "e")])
            assert done.exit_code == 0, done.output
    assert "onnxruntime matches PyTorch to" in caplog.text  # the export checked its own graph
    graph = onnx.load(str(tmp_path / "e" / "model.onnx"))
    metadata = {p.key: p.value for p in graph.metadata_props}
    assert metadata["task"] == "part" and json.loads(metadata["image_hw"]) == [64, 32]
    assert metadata["weights"] == "teacher"
    session = onnxruntime.InferenceSession(str(tmp_path / "e" / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["images"] and isinstance(session.get_inputs()[0].shape[0], str)
    backbone = load_backbone(tmp_path / "e")
    for batch in (1, 5):
        images = torch.randint(0, 256, (batch, 3, 64, 32), generator=torch.Generator().manual_seed(batch),
                               dtype=torch.uint8)
        with torch.no_grad():
            want_cls, want_patches = backbone(images)
        cls, patches = session.run(["cls", "patches"], {"images": (images.float() / 255).numpy()})
        assert cls.shape == (batch, 32) and patches.shape == (batch, 8, 32)
        assert float((torch.from_numpy(cls) - want_cls).abs().max()) <= 1e-4
        assert float((torch.from_numpy(patches) - want_patches).abs().max()) <= 1e-4


def test_onnx_without_its_packages_is_one_error_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    run = write_run(tmp_path / "run", ARCH)
    done = CliRunner().invoke(main, ["export", str(run), "--format", "onnx", "--out", str(tmp_path / "e")])
    assert done.exit_code == 2
    assert done.output.strip() == "error: --format onnx needs onnxruntime (pip install 'clasp[onnx]')"
    assert not (tmp_path / "e").exists()
    mixed = CliRunner().invoke(main, ["export", str(run), "--format", "tflite", "--out", str(tmp_path / "e")])
    assert mixed.exit_code == 2 and "tflite" in mixed.output and len(mixed.output.strip().splitlines()) == 1
