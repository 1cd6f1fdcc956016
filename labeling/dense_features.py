"""Patch tokens in CLIP's joint image-text space, and the image embedding, from one vision pass.

CLIP is trained to align only its CLS token with text; its last-layer patch
tokens are dominated by global attention and describe the image rather than
their own location. MaskCLIP (Zhou et al., ECCV 2022) showed that replacing the
last block's attention by its value path keeps each token local while staying in
the space the projection was trained for.

Modes (the first `L - 1` blocks are shared, the last block differs):

- `maskclip` — exactly MaskCLIP's ViT recipe (the `return_qkv` branch of its
  encoder layer, followed by its final norm and projection), per token x:

      v = x + out_proj(v_proj(ln_1(x)))      # attention replaced by the value path
      v = v + mlp(ln_2(v))                   # the block's MLP and residual are kept
      patch = visual_projection(post_layernorm(v))

  Some later re-implementations return `out_proj(v_proj(ln_1(x)))` alone
  (no residual, no MLP); we follow the original paper's code.
- `naive` — the plain last block's patch tokens through `post_layernorm` and
  `visual_projection`.

The image embedding is always the CLS path of the unmodified model, equal to
`CLIPModel.get_image_features`. In `maskclip` mode the last block is evaluated
for the CLS query alone (its keys and values still span all tokens), so the
value path and the CLS path share `ln_1` and `v_proj` and the whole pass costs
about one ordinary forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import CLIPModel

DENSE_MODES = ("maskclip", "naive")


@dataclass(frozen=True)
class DenseFeatures:
    patches: torch.Tensor  # (N, h, w, D) joint space, not normalised
    image: torch.Tensor  # (N, D) joint space, not normalised


def encode_to_last_block(model: CLIPModel, pixels: torch.Tensor) -> torch.Tensor:
    """(N, 1 + h*w, width) tokens entering the last vision block, position encodings interpolated."""
    vision = model.vision_model
    hidden = vision.embeddings(pixels, interpolate_pos_encoding=True)
    hidden = vision.pre_layrnorm(hidden)
    for layer in vision.encoder.layers[:-1]:
        hidden = layer(hidden, None)
    return hidden


def _cls_through_last_block(model: CLIPModel, hidden: torch.Tensor, normed: torch.Tensor,
                            values: torch.Tensor) -> torch.Tensor:
    """The last block's output for the CLS token only (same maths as the full block)."""
    block = model.vision_model.encoder.layers[-1]
    attn = block.self_attn
    n, tokens, width = normed.shape
    heads, head_dim = attn.num_heads, attn.head_dim
    query = attn.q_proj(normed[:, :1]).view(n, 1, heads, head_dim).transpose(1, 2)
    keys = attn.k_proj(normed).view(n, tokens, heads, head_dim).transpose(1, 2)
    vals = values.view(n, tokens, heads, head_dim).transpose(1, 2)
    mixed = F.scaled_dot_product_attention(query, keys, vals, scale=attn.scale)
    cls = hidden[:, :1] + attn.out_proj(mixed.transpose(1, 2).reshape(n, 1, width))
    return cls + block.mlp(block.layer_norm2(cls))


def _maskclip_last_block(model: CLIPModel, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(CLS output (N, 1, width), value-path patch tokens (N, h*w, width)) of the last block."""
    block = model.vision_model.encoder.layers[-1]
    attn = block.self_attn
    normed = block.layer_norm1(hidden)
    values = attn.v_proj(normed)
    cls = _cls_through_last_block(model, hidden, normed, values)
    patches = hidden[:, 1:] + attn.out_proj(values[:, 1:])
    patches = patches + block.mlp(block.layer_norm2(patches))
    return cls, patches


def dense_features(model: CLIPModel, pixels: torch.Tensor, mode: str = "maskclip") -> DenseFeatures:
    """Joint-space patch grid and image embedding for normalised `pixels` (N, 3, H, W)."""
    if mode not in DENSE_MODES:
        raise ValueError(f"unknown dense mode {mode!r}; choose one of {', '.join(DENSE_MODES)}")
    vision = model.vision_model
    patch = vision.config.patch_size
    grid_h, grid_w = pixels.shape[-2] // patch, pixels.shape[-1] // patch
    hidden = encode_to_last_block(model, pixels)
    if mode == "naive":
        out = vision.encoder.layers[-1](hidden, None)
        cls, patches = out[:, :1], out[:, 1:]
    else:
        cls, patches = _maskclip_last_block(model, hidden)
    image = model.visual_projection(vision.post_layernorm(cls[:, 0]))
    patches = model.visual_projection(vision.post_layernorm(patches))
    return DenseFeatures(patches.reshape(len(pixels), grid_h, grid_w, -1), image)
