"""The bundled offline CLIP: seeded, small, and loadable through `from_pretrained` offline."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import CLIPModel, CLIPTokenizer

from clasp.labeling.tiny_clip import learn_bpe_merges, vocabulary_prompts, write_tiny_clip


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


def test_cli_writes_a_model_load_clip_reads(tmp_path: Path, tiny_clip_dir: Path) -> None:
    from click.testing import CliRunner

    from clasp.cli import main
    from clasp.labeling.clip_loading import load_clip

    result = CliRunner().invoke(main, ["tiny-clip", str(tmp_path / "clip"), "--seed", "0"])
    assert result.exit_code == 0, result.output
    assert "--clip-model" in result.output
    model, tokenizer = load_clip(tmp_path / "clip")
    reference, _ = load_clip(tiny_clip_dir)
    pixels = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        a = model.vision_model(pixel_values=pixels).pooler_output
        b = reference.vision_model(pixel_values=pixels).pooler_output
    assert torch.equal(a, b)
    (tmp_path / "file").write_text("x")
    result = CliRunner().invoke(main, ["tiny-clip", str(tmp_path / "file")])
    assert result.exit_code == 2 and "not a folder" in result.output
