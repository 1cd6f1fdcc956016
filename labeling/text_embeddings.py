"""Text side of the labeler: one embedding per part and per attribute value, computed once per run.

Prompt ensembling as in CLIP's zero-shot classifier: each prompt is embedded and
normalised, the prompts of a class are averaged and the mean normalised again.
Background is different: "street", "wall", "sky" are not paraphrases of one idea,
so averaging them would describe none of them; each background prompt keeps its
own embedding and a cell's background score is the best of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import CLIPModel, CLIPTokenizer

from clasp.store import Vocabulary


@dataclass(frozen=True)
class TextEmbeddings:
    """Unit-norm embeddings in CLIP's joint space (float32)."""

    background: torch.Tensor  # (B, D): one row per background prompt
    parts: torch.Tensor  # (P - 1, D): parts 1.. in vocabulary order
    attributes: torch.Tensor  # (A, D): `Vocabulary.attribute_columns` order


def projected_features(output: torch.Tensor | object) -> torch.Tensor:
    """`get_text_features`/`get_image_features` return a tensor in transformers 4 and an output
    object whose `pooler_output` holds the projected embedding in transformers 5."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


@torch.inference_mode()
def encode_prompts(model: CLIPModel, tokenizer: CLIPTokenizer, prompts: list[str]) -> torch.Tensor:
    """(len(prompts), D) unit-norm text embeddings, in float32 whatever autocast is active outside."""
    device = model.text_projection.weight.device
    tokens = tokenizer(prompts, padding=True, truncation=True, return_tensors="pt").to(device)
    with torch.autocast(device.type, enabled=False):
        features = projected_features(model.get_text_features(input_ids=tokens.input_ids,
                                                               attention_mask=tokens.attention_mask))
    return F.normalize(features.float(), dim=-1)


def ensemble(embeddings: torch.Tensor) -> torch.Tensor:
    """Normalised mean of unit-norm prompt embeddings."""
    return F.normalize(embeddings.mean(dim=0), dim=-1)


def build_text_embeddings(model: CLIPModel, tokenizer: CLIPTokenizer, vocab: Vocabulary) -> TextEmbeddings:
    """All class embeddings of `vocab`, encoded in one batch."""
    groups = [list(part.prompts) for part in vocab.parts]
    groups += [list(value.prompts) for group in vocab.attributes for value in group.values]
    encoded = encode_prompts(model, tokenizer, [p for prompts in groups for p in prompts])
    per_class = list(torch.split(encoded, [len(prompts) for prompts in groups]))
    num_parts = vocab.num_parts
    return TextEmbeddings(
        background=per_class[0],
        parts=torch.stack([ensemble(e) for e in per_class[1:num_parts]]),
        attributes=torch.stack([ensemble(e) for e in per_class[num_parts:]]),
    )
