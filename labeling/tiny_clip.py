"""Offline CLIP models with random weights: the bundled tiny model and full-size architectures.

No model can be downloaded here (tests, CI, the offline demo), yet the labeler must
run through exactly the code path a hub model takes. So we build a `CLIPModel`
from a config with seeded random weights, train a byte-level BPE tokenizer on the
vocabulary's prompts, and write both with `save_pretrained`; `load_clip(folder)`
then reads them back through `from_pretrained` like any hub checkpoint.

The BPE merges are learned here rather than with `tokenizers.trainers.BpeTrainer`
because that trainer breaks ties between equally frequent pairs in hash-map order,
which changes from one process to the next; a seed must give the same files every
time. Normalisation and pre-tokenisation are CLIPTokenizer's own, so the vocabulary
and merges follow CLIP's layout: 256 byte symbols, the same with the `</w>`
end-of-word suffix, one token per merge, then `<|startoftext|>` and `<|endoftext|>`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
from tokenizers import pre_tokenizers
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPTokenizer

from clasp.store import Vocabulary

END_OF_WORD = "</w>"
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
MAX_TEXT_POSITIONS = 77


@dataclass(frozen=True)
class ClipArchitecture:
    """The sizes that define a CLIP; the text vocabulary size comes from the tokenizer."""

    vision_width: int
    vision_layers: int
    vision_heads: int
    vision_mlp: int
    text_width: int
    text_layers: int
    text_heads: int
    text_mlp: int
    projection_dim: int
    patch_size: int = 16
    image_size: int = 224


PRESETS: dict[str, ClipArchitecture] = {
    # A few MB: fast enough for tests, same code path as a real model.
    "tiny": ClipArchitecture(128, 3, 4, 256, 64, 2, 2, 128, 64),
    # openai/clip-vit-base-patch16, for speed measurements without a download.
    "ViT-B/16": ClipArchitecture(768, 12, 12, 3072, 512, 12, 8, 2048, 512),
}


def vocabulary_prompts(vocab: Vocabulary) -> list[str]:
    """Every part and attribute prompt, in vocabulary order."""
    prompts = [s for part in vocab.parts for s in part.prompts]
    prompts += [s for group in vocab.attributes for value in group.values for s in value.prompts]
    return prompts


def _clip_pre_tokenizer() -> tuple:
    """CLIPTokenizer's own normaliser and pre-tokeniser, so training splits text as inference will."""
    backend = CLIPTokenizer().backend_tokenizer
    return backend.normalizer, backend.pre_tokenizer


def learn_bpe_merges(texts: Iterable[str], max_merges: int = 4000) -> list[tuple[str, str]]:
    """Byte-level BPE merges, most frequent pair first; ties go to the smallest pair (deterministic)."""
    normalizer, pre_tokenizer = _clip_pre_tokenizer()
    words: Counter[tuple[str, ...]] = Counter()
    for text in texts:
        for piece, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)):
            if piece:
                words[tuple(piece[:-1]) + (piece[-1] + END_OF_WORD,)] += 1
    merges: list[tuple[str, str]] = []
    while len(merges) < max_merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, count in words.items():
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merges.append(best)
        merged: Counter[tuple[str, ...]] = Counter()
        for symbols, count in words.items():
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            merged[tuple(out)] += count
        words = merged
    return merges


def train_prompt_tokenizer(prompts: Iterable[str]) -> CLIPTokenizer:
    """A CLIPTokenizer whose merges are learned from `prompts`; any text still encodes (byte fallback)."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tokens = alphabet + [ch + END_OF_WORD for ch in alphabet]
    merges = learn_bpe_merges(prompts)
    seen = set(tokens)
    for a, b in merges:
        if a + b not in seen:
            tokens.append(a + b)
            seen.add(a + b)
    tokens += [BOS_TOKEN, EOS_TOKEN]
    vocab = {token: index for index, token in enumerate(tokens)}
    return CLIPTokenizer(vocab=vocab, merges=merges,
                         model_max_length=MAX_TEXT_POSITIONS)


def clip_config(arch: ClipArchitecture, tokenizer: CLIPTokenizer) -> CLIPConfig:
    text = dict(
        vocab_size=len(tokenizer), hidden_size=arch.text_width, num_hidden_layers=arch.text_layers,
        num_attention_heads=arch.text_heads, intermediate_size=arch.text_mlp,
        max_position_embeddings=MAX_TEXT_POSITIONS, hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    vision = dict(
        hidden_size=arch.vision_width, num_hidden_layers=arch.vision_layers,
        num_attention_heads=arch.vision_heads, intermediate_size=arch.vision_mlp,
        patch_size=arch.patch_size, image_size=arch.image_size, hidden_act="quick_gelu",
    )
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=arch.projection_dim)


def build_random_clip(preset: str = "tiny", seed: int = 0, vocab: Vocabulary | None = None,
                      extra_prompts: Iterable[str] = ()) -> tuple[CLIPModel, CLIPTokenizer]:
    """A CLIP of a preset architecture with seeded random weights and a prompt-trained tokenizer."""
    if preset not in PRESETS:
        raise ValueError(f"unknown CLIP preset {preset!r}; choose one of {', '.join(PRESETS)}")
    vocab = vocab or Vocabulary.default()
    tokenizer = train_prompt_tokenizer(vocabulary_prompts(vocab) + list(extra_prompts))
    config = clip_config(PRESETS[preset], tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPModel(config)
    return model.eval(), tokenizer


def save_random_clip(out_dir: str | Path, preset: str = "tiny", seed: int = 0,
                     vocab_file: str | Path | None = None) -> Path:
    """Write model, tokenizer and image-processor config to `out_dir`; `load_clip(out_dir)` reads it."""
    out_dir = Path(out_dir)
    extra = vocabulary_prompts(Vocabulary.load(vocab_file)) if vocab_file else []
    model, tokenizer = build_random_clip(preset, seed, extra_prompts=extra)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    size = PRESETS[preset].image_size
    CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(out_dir)
    return out_dir


def write_tiny_clip(out_dir: str | Path, seed: int = 0, vocab_file: str | Path | None = None) -> Path:
    """The bundled offline model behind `clasp tiny-clip DIR`."""
    return save_random_clip(out_dir, "tiny", seed, vocab_file)


def clip_from_config(out_dir: str | Path, preset: str = "ViT-B/16", seed: int = 0) -> Path:
    """A full-size architecture with random weights (e.g. for throughput benchmarks), offline."""
    return save_random_clip(out_dir, preset, seed)
