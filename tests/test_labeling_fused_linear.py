"""The CLIP vision tower's linears through oneDNN's fused linear (bf16 on CPU): the same outputs, SiLU folded."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from clasp.labeling import labeler as labeler_module
from clasp.labeling.clip_loading import load_clip
from clasp.labeling.config import ClipLabelerConfig
from clasp.labeling.dense_features import DENSE_MODES, dense_features
from clasp.labeling.fused_linear import FusedLinear, fusable, fuse_linears
from clasp.labeling.quick_gelu import fold_quick_gelu

NATIVE_BF16 = fusable(torch.device("cpu"), torch.bfloat16)


def test_fusable_only_for_bf16_on_a_cpu() -> None:
    assert not fusable(torch.device("cpu"), torch.float32)
    assert not fusable(torch.device("cuda"), torch.bfloat16)


def test_every_linear_is_swapped_sharing_its_parameters_and_silu_is_folded(tiny_clip_dir: Path) -> None:
    model, _ = load_clip(str(tiny_clip_dir), None, torch.device("cpu"))
    encoder = model.vision_model.encoder
    fold_quick_gelu(model.vision_model)
    fc1 = encoder.layers[0].mlp.fc1
    assert fuse_linears(encoder) == 6 * len(encoder.layers)  # q, k, v, out, fc1, fc2
    assert not any(type(m) is nn.Linear for m in encoder.modules())
    mlp = encoder.layers[0].mlp
    assert isinstance(mlp.activation_fn, nn.Identity) and mlp.fc1.activation == "swish"
    assert mlp.fc2.activation == "none" and encoder.layers[0].self_attn.q_proj.activation == "none"
    assert mlp.fc1.weight is fc1.weight and mlp.fc1.bias is fc1.bias  # shared, not copied
    assert fuse_linears(encoder) == 0  # nothing left to swap


@pytest.mark.skipif(not NATIVE_BF16, reason="oneDNN has no native bf16 on this CPU (the labeler does not fuse)")
def test_fused_linears_give_the_same_bf16_outputs_in_every_dense_mode(tiny_clip_dir: Path) -> None:
    model, _ = load_clip(str(tiny_clip_dir), None, torch.device("cpu"))
    fold_quick_gelu(model.vision_model)
    model.to(torch.bfloat16)
    fused = copy.deepcopy(model)
    fuse_linears(fused.vision_model.encoder)
    pixels = torch.randn(2, 3, 64, 32, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    with torch.inference_mode():
        for mode in DENSE_MODES:
            want, got = dense_features(model, pixels, mode), dense_features(fused, pixels, mode)
            torch.testing.assert_close(got.patches.float(), want.patches.float(), rtol=3e-2, atol=3e-2, msg=mode)
            torch.testing.assert_close(got.image.float(), want.image.float(), rtol=3e-2, atol=3e-2, msg=mode)


@pytest.mark.parametrize("native", [True, False])
def test_the_labeler_fuses_where_fusable(tiny_clip_dir: Path, monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    asked = []
    monkeypatch.setattr(labeler_module, "fusable", lambda device, dtype: asked.append((device.type, dtype)) or native)
    labeler = labeler_module.ClipLabeler(ClipLabelerConfig(clip_model=str(tiny_clip_dir), clip_size=(64, 32),
                                                           precision="fp32"))
    assert asked == [("cpu", torch.float32)]
    swapped = [m for m in labeler.model.vision_model.encoder.modules() if isinstance(m, FusedLinear)]
    assert bool(swapped) == native
