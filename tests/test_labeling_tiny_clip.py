"""The bundled offline CLIP: seeded, small, and loadable through `from_pretrained` offline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import CLIPModel, CLIPTokenizer

from clasp.labeling.tiny_clip import (PRESETS, build_random_clip, clip_config, learn_bpe_merges, train_prompt_tokenizer,
                                      vocabulary_prompts, write_tiny_clip)


def test_tiny_clip_is_a_few_mb_and_loads_offline(tiny_clip_dir: Path, vocab) -> None:
    from huggingface_hub import constants

    assert constants.HF_HUB_OFFLINE
    size = sum(f.stat().st_size for f in tiny_clip_dir.iterdir())
    assert 1_000_000 < size < 8_000_000
    model = CLIPModel.from_pretrained(tiny_clip_dir)
    tokenizer = CLIPTokenizer.from_pretrained(tiny_clip_dir)
    assert model.config.text_config.vocab_size == len(tokenizer)
    assert model.config.text_config.eos_token_id == tokenizer.eos_token_id
    # Every vocabulary prompt is known to the tokenizer as whole words, never the unknown token.
    ids = tokenizer(vocabulary_prompts(vocab)).input_ids
    assert all(row[0] == tokenizer.bos_token_id and row[-1] == tokenizer.eos_token_id for row in ids)
    assert all(tokenizer.eos_token_id not in row[1:-1] for row in ids)
    assert tokenizer.tokenize("a photo of a person's head.") == [
        "a</w>", "photo</w>", "of</w>", "a</w>", "person</w>", "'s</w>", "head</w>", ".</w>"]


def test_same_seed_same_files_other_seed_other_weights(tiny_clip_dir: Path, tmp_path: Path) -> None:
    again = write_tiny_clip(tmp_path / "again", seed=0)
    other = write_tiny_clip(tmp_path / "other", seed=1)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (again / name).read_bytes() == (tiny_clip_dir / name).read_bytes(), name
    assert (other / "model.safetensors").read_bytes() != (again / "model.safetensors").read_bytes()
    a = CLIPModel.from_pretrained(again).vision_model.embeddings.patch_embedding.weight
    b = CLIPModel.from_pretrained(other).vision_model.embeddings.patch_embedding.weight
    assert not torch.equal(a, b)


def test_bpe_merges_follow_frequency_with_deterministic_ties() -> None:
    merges = learn_bpe_merges(["ab ab ab", "cd"], max_merges=3)
    assert merges[0] == ("a", "b</w>")  # 3 occurrences beat 1
    assert merges[1] == ("c", "d</w>")
    assert len(merges) == 2  # nothing left to merge


def test_cli_writes_a_model_load_clip_reads(tmp_path: Path, tiny_clip_dir: Path, vocab) -> None:
    from click.testing import CliRunner

    from clasp.cli import main
    from clasp.labeling.clip_loading import load_clip

    extra = vocab.to_dict()
    extra["parts"][1]["prompts"].append("a photo of a zorblax.")
    (tmp_path / "vocab.json").write_text(json.dumps(extra), encoding="utf-8")
    result = CliRunner().invoke(main, ["tiny-clip", str(tmp_path / "clip"), "--vocab", str(tmp_path / "vocab.json")])
    assert result.exit_code == 0, result.output
    assert "--clip-model" in result.output
    model, tokenizer = load_clip(tmp_path / "clip")
    assert tokenizer.tokenize("zorblax") == ["zorblax</w>"]  # the extra vocabulary's words are whole tokens
    reference, reference_tokenizer = load_clip(tiny_clip_dir)
    assert len(reference_tokenizer.tokenize("zorblax")) > 1
    assert model.config.text_config.vocab_size == len(tokenizer) > len(reference_tokenizer)
    (tmp_path / "file").write_text("x")
    result = CliRunner().invoke(main, ["tiny-clip", str(tmp_path / "file")])
    assert result.exit_code == 2 and "not a folder" in result.output


def test_reloaded_model_gives_the_same_outputs_as_the_built_one(tiny_clip_dir: Path, vocab) -> None:
    from clasp.labeling.clip_loading import load_clip

    built, built_tokenizer = build_random_clip("tiny", seed=0)
    loaded, tokenizer = load_clip(tiny_clip_dir)
    prompts = vocabulary_prompts(vocab)[:6]
    assert tokenizer(prompts).input_ids == built_tokenizer(prompts).input_ids
    ids = tokenizer(prompts, padding=True, return_tensors="pt")
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        for model in (built, loaded):
            out = model(pixel_values=pixels, **ids)
            if model is built:
                expected = out.logits_per_image
            else:
                assert torch.equal(out.logits_per_image, expected)
    assert loaded.logit_scale.item() == pytest.approx(np.log(1 / 0.07), rel=1e-4)


def test_vit_b16_preset_is_the_openai_architecture() -> None:
    config = clip_config(PRESETS["ViT-B/16"], train_prompt_tokenizer(["a photo of a person."]))
    vision, text = config.vision_config, config.text_config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.num_attention_heads, vision.intermediate_size,
            vision.patch_size, vision.image_size) == (768, 12, 12, 3072, 16, 224)
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads, text.intermediate_size,
            text.max_position_embeddings) == (512, 12, 8, 2048, 77)
    assert config.projection_dim == 512 and vision.hidden_act == "quick_gelu"
