"""Quick-GELU folded into the linears either side: the same CLIP vision outputs, one fused activation."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn
from transformers.activations import QuickGELUActivation

from clasp.labeling.clip_loading import load_clip
from clasp.labeling.dense_features import DENSE_MODES, dense_features
from clasp.labeling.quick_gelu import fold_quick_gelu


def test_folded_quick_gelu_gives_the_same_vision_outputs_in_every_dense_mode(tiny_clip_dir: Path) -> None:
    model, _ = load_clip(str(tiny_clip_dir), None, torch.device("cpu"))
    folded = copy.deepcopy(model)
    layers = len(model.vision_model.encoder.layers)
    assert fold_quick_gelu(folded.vision_model) == layers
    assert all(isinstance(layer.mlp.activation_fn, nn.SiLU) for layer in folded.vision_model.encoder.layers)
    assert isinstance(folded.text_model.encoder.layers[0].mlp.activation_fn, QuickGELUActivation)  # left alone
    assert fold_quick_gelu(folded.vision_model) == 0  # nothing left to fold: a second call changes nothing
    pixels = torch.randn(2, 3, 64, 32, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        for mode in DENSE_MODES:
            want, got = dense_features(model, pixels, mode), dense_features(folded, pixels, mode)
            torch.testing.assert_close(got.patches, want.patches, rtol=1e-5, atol=1e-5, msg=mode)
            torch.testing.assert_close(got.image, want.image, rtol=1e-5, atol=1e-5, msg=mode)
    original, rewritten = model.vision_model.encoder.layers[0].mlp, folded.vision_model.encoder.layers[0].mlp
    torch.testing.assert_close(rewritten.fc1.weight, 1.702 * original.fc1.weight)  # the scale is in the weights
