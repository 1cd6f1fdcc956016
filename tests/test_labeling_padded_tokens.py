"""CLIP's vision tokens padded to a multiple of 16 in bf16 on CPU, the padding masked: the same outputs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clasp.labeling import dense_features as dense
from clasp.labeling.clip_loading import load_clip
from clasp.labeling.dense_features import DENSE_MODES, KEY_MULTIPLE, dense_features, encode_tokens, padded_tokens


def test_reduced_precision_tokens_on_cpu_are_padded_with_masked_zeros() -> None:
    hidden = torch.randn(2, 33, 8).to(torch.bfloat16)
    padded, mask = padded_tokens(hidden)
    assert padded.shape == (2, 48, 8) and torch.equal(padded[:, :33], hidden) and not padded[:, 33:].any()
    assert mask.shape == (1, 1, 1, 48) and mask.dtype == torch.bfloat16
    assert not mask[..., :33].any() and bool((mask[..., 33:] == float("-inf")).all())
    for unchanged in (torch.randn(2, 33, 8), torch.randn(2, 32, 8).to(torch.bfloat16)):  # fp32; a multiple of 16
        same, none = padded_tokens(unchanged)
        assert same is unchanged and none is None
    assert padded_tokens(torch.randn(1, 393, 8).half())[0].shape[1] == 400 == 25 * KEY_MULTIPLE


def test_padded_tokens_give_the_same_bf16_outputs_in_every_dense_mode(tiny_clip_dir: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    model, _ = load_clip(str(tiny_clip_dir), None, torch.device("cpu"))
    model.to(torch.bfloat16)
    pixels = torch.randn(2, 3, 64, 32, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    patch = model.config.vision_config.patch_size
    tokens = 1 + (64 // patch) * (32 // patch)
    assert tokens % KEY_MULTIPLE, "the tiny CLIP's token count must need padding"
    padded_count = tokens + -tokens % KEY_MULTIPLE
    seen = []
    layer = model.vision_model.encoder.layers[0]
    layer.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[1]))
    with torch.inference_mode():
        padded = {mode: dense_features(model, pixels, mode) for mode in DENSE_MODES}
        assert set(seen) == {padded_count}
        monkeypatch.setattr(dense, "padded_tokens", lambda hidden: (hidden, None))
        for mode in DENSE_MODES:
            want = dense_features(model, pixels, mode)
            torch.testing.assert_close(padded[mode].patches.float(), want.patches.float(), rtol=3e-2, atol=3e-2,
                                       msg=mode)
            torch.testing.assert_close(padded[mode].image.float(), want.image.float(), rtol=3e-2, atol=3e-2, msg=mode)
    assert set(seen) == {padded_count, tokens}


def test_every_block_gives_the_towers_last_hidden_state(tiny_clip_dir: Path) -> None:
    model, _ = load_clip(str(tiny_clip_dir), None, torch.device("cpu"))
    pixels = torch.randn(2, 3, 64, 32, generator=torch.Generator().manual_seed(1))
    blocks = len(model.vision_model.encoder.layers)
    with torch.inference_mode():
        want = model.vision_model(pixel_values=pixels, interpolate_pos_encoding=True).last_hidden_state
        torch.testing.assert_close(encode_tokens(model, pixels, blocks), want, rtol=1e-5, atol=1e-5)
        model.to(torch.bfloat16)
        want = model.vision_model(pixel_values=pixels.bfloat16(), interpolate_pos_encoding=True).last_hidden_state
        got = encode_tokens(model, pixels.bfloat16(), blocks)
        torch.testing.assert_close(got.float(), want.float(), rtol=3e-2, atol=3e-2)
