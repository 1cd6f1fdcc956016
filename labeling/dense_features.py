"""Patch tokens in CLIP's joint image-text space, and the image embedding, from one vision pass.

CLIP is trained to align only its CLS token with text; its last-layer patch
tokens are dominated by global attention and describe the image rather than
their own location. MaskCLIP (Zhou et al., ECCV 2022) showed that replacing the
last block's attention by its value path keeps each token local while staying in
the space the projection was trained for. ClearCLIP, SCLIP and NACLIP keep an
attention but one among alike tokens (query–query, key–key), so a patch mixes
with patches of the same thing instead of with the few tokens every query looks
at; ClearCLIP and NACLIP also drop the last block's residual and MLP, which they
found carry the global, spatially noisy signal.

Modes (the first `L - 1` blocks are shared, the last block differs). Per token x
entering the last block, q, k, v = q_proj, k_proj, v_proj of ln_1(x), split into
heads; `scale` = head_dim^-1/2; keys span all tokens, CLS included
(as in all three reference codes); every mode ends with
`patch = visual_projection(post_layernorm(y))`:

- `maskclip` — exactly MaskCLIP's ViT recipe (the `return_qkv` branch of its
  encoder layer):

      y = x + out_proj(v)                    # attention replaced by the value path
      y = y + mlp(ln_2(y))                   # the block's MLP and residual are kept

  Some later re-implementations return `out_proj(v)` alone (no residual, no
  MLP); we follow the original paper's code.
- `naive` — the plain last block's patch tokens.
- `clearclip` — ClearCLIP (Lan et al., ECCV 2024; its `custom_attn`,
  `model_type='ClearCLIP'`, with the default `ignore_residual=True`):

      y = out_proj(softmax(q qᵀ · scale) v)  # no residual, no MLP

- `sclip` — SCLIP (Wang et al., 2024), correlative self-attention. SCLIP's code
  keeps the last block's residual and MLP, and so do we:

      y = x + out_proj((softmax(q qᵀ · scale) + softmax(k kᵀ · scale)) v)
      y = y + mlp(ln_2(y))

- `naclip` — NACLIP (Hajimiri et al., WACV 2025; its defaults `arch='reduced'`,
  `attn_strategy='naclip'`, `gaussian_std=5`): key–key attention with a
  neighbourhood prior added to the logits,

      y = out_proj(softmax(k kᵀ · scale + ω) v)    # no residual, no MLP
      ω[p, p'] = exp(-|p - p'|² / (2 σ²)),  σ = 5 patches

  over positions on the patch grid; ω is 0 towards the CLS key. The prior is
  added unscaled, as in NACLIP's code.

The image embedding is always the CLS path of the unmodified model, equal to
`CLIPModel.get_image_features`. Outside `naive` mode the last block is evaluated
for the CLS query alone (its keys and values still span all tokens), sharing
`ln_1`, `k_proj` and `v_proj` (and `q_proj` where the mode needs it) with the
patch path, so the whole pass costs about one ordinary forward.

In bf16 or fp16 on a CPU the tokens entering the shared blocks are padded with
zero tokens to a multiple of `KEY_MULTIPLE`, hidden from every query by an
additive `-inf` key mask (each padded key weighs exactly 0, so no real token's
output changes) and cut off before the last block. PyTorch's CPU flash-attention
kernel takes its reduced-precision fast path only on such key counts: ViT-B/16
at 448×224 has 393 tokens, and its attention ran 76 ms a layer at batch 32 on a
2-core AMX Xeon against 52 ms on 400 (fp32: no difference). Padding the
sequence once costs 7/393 more rows in every matrix product; padding each
layer's keys and values instead cost a copy of both per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import CLIPModel
from transformers.models.clip.modeling_clip import CLIPEncoderLayer

from clasp.store.label_choices import DENSE_MODES  # the modes computed below; re-exported

NACLIP_STD = 5.0  # NACLIP's `gaussian_std`, in patches
KEY_MULTIPLE = 16  # key counts the CPU flash-attention kernel runs fast in bf16 / fp16 (module docstring)


@dataclass(frozen=True)
class DenseFeatures:
    patches: torch.Tensor  # (N, h, w, D) joint space, not normalised
    image: torch.Tensor  # (N, D) joint space, not normalised


def padded_tokens(hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`hidden` (N, T, width) with zero tokens appended up to a multiple of `KEY_MULTIPLE`, and the additive
    key mask (1, 1, 1, T') that hides them; `hidden` and None where the padding does not pay."""
    tokens = hidden.shape[1]
    padding = -tokens % KEY_MULTIPLE
    if padding == 0 or hidden.device.type != "cpu" or hidden.dtype not in (torch.bfloat16, torch.float16):
        return hidden, None
    mask = hidden.new_zeros(1, 1, 1, tokens + padding)
    mask[..., tokens:] = float("-inf")
    return F.pad(hidden, (0, 0, 0, padding)), mask


def encode_tokens(model: CLIPModel, pixels: torch.Tensor, blocks: int) -> torch.Tensor:
    """(N, 1 + h*w, width) tokens after the first `blocks` vision blocks, position encodings interpolated:
    with every block, the vision tower's `last_hidden_state`."""
    vision = model.vision_model
    hidden = vision.embeddings(pixels, interpolate_pos_encoding=True)
    hidden = vision.pre_layrnorm(hidden)
    tokens = hidden.shape[1]
    hidden, key_mask = padded_tokens(hidden)
    for layer in vision.encoder.layers[:blocks]:
        hidden = layer(hidden, key_mask)
    return hidden[:, :tokens]


def encode_to_last_block(model: CLIPModel, pixels: torch.Tensor) -> torch.Tensor:
    """(N, 1 + h*w, width) tokens entering the last vision block."""
    return encode_tokens(model, pixels, len(model.vision_model.encoder.layers) - 1)


def naclip_prior(grid_h: int, grid_w: int, std: float = NACLIP_STD) -> torch.Tensor:
    """(h*w, 1 + h*w) logit bias of the patch queries: Gaussian of patch-grid distance, 0 towards CLS."""
    rows = torch.arange(grid_h).repeat_interleave(grid_w)
    cols = torch.arange(grid_w).repeat(grid_h)
    squared = (rows[:, None] - rows[None]) ** 2 + (cols[:, None] - cols[None]) ** 2
    return F.pad(torch.exp(-squared / (2 * std**2)), (1, 0))


def _heads(block: CLIPEncoderLayer, x: torch.Tensor) -> torch.Tensor:
    """(N, T, width) -> (N, heads, T, head_dim)."""
    attn = block.self_attn
    return x.view(*x.shape[:2], attn.num_heads, attn.head_dim).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """(N, heads, T, head_dim) -> (N, T, width)."""
    return x.transpose(1, 2).flatten(2)


def _cls_output(block: CLIPEncoderLayer, hidden: torch.Tensor, query: torch.Tensor, keys: torch.Tensor,
                vals: torch.Tensor) -> torch.Tensor:
    """The unmodified last block's output (N, 1, width) for the CLS query (N, heads, 1, head_dim) alone."""
    attn = block.self_attn
    mixed = F.scaled_dot_product_attention(query, keys, vals, scale=attn.scale)
    cls = hidden[:, :1] + attn.out_proj(_merge(mixed))
    return cls + block.mlp(block.layer_norm2(cls))


def _maskclip_patches(block: CLIPEncoderLayer, hidden: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Value-path patch tokens (N, h*w, width), residual and MLP kept."""
    patches = hidden[:, 1:] + block.self_attn.out_proj(values[:, 1:])
    return patches + block.mlp(block.layer_norm2(patches))


def _alike_attention_patches(block: CLIPEncoderLayer, hidden: torch.Tensor, queries: torch.Tensor,
                             keys: torch.Tensor, vals: torch.Tensor, mode: str, prior: torch.Tensor | None
                             ) -> torch.Tensor:
    """Patch tokens (N, h*w, width) of the last block under q–q, k–k or q–q + k–k attention (see the modes)."""
    attn = block.self_attn

    def attend(x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """softmax(x_patch x_allᵀ · scale + bias) v, per head."""
        return F.scaled_dot_product_attention(x[:, :, 1:], x, vals, attn_mask=bias, scale=attn.scale)

    if mode == "clearclip":
        return attn.out_proj(_merge(attend(queries)))
    if mode == "naclip":
        return attn.out_proj(_merge(attend(keys, prior.to(keys.device, keys.dtype))))
    patches = hidden[:, 1:] + attn.out_proj(_merge(attend(queries) + attend(keys)))  # sclip
    return patches + block.mlp(block.layer_norm2(patches))


def _last_block(model: CLIPModel, hidden: torch.Tensor, mode: str, prior: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """(CLS output (N, 1, width) of the unmodified block, patch tokens (N, h*w, width) of `mode`)."""
    block = model.vision_model.encoder.layers[-1]
    attn = block.self_attn
    normed = block.layer_norm1(hidden)
    values = attn.v_proj(normed)
    keys, vals = _heads(block, attn.k_proj(normed)), _heads(block, values)
    queries = _heads(block, attn.q_proj(normed if mode in ("clearclip", "sclip") else normed[:, :1]))
    cls = _cls_output(block, hidden, queries[:, :, :1], keys, vals)
    if mode == "maskclip":
        return cls, _maskclip_patches(block, hidden, values)
    return cls, _alike_attention_patches(block, hidden, queries, keys, vals, mode, prior)


def dense_features(model: CLIPModel, pixels: torch.Tensor, mode: str = "maskclip",
                   naclip_std: float = NACLIP_STD) -> DenseFeatures:
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
        prior = naclip_prior(grid_h, grid_w, naclip_std) if mode == "naclip" else None
        cls, patches = _last_block(model, hidden, mode, prior)
    image = model.visual_projection(vision.post_layernorm(cls[:, 0]))
    patches = model.visual_projection(vision.post_layernorm(patches))
    return DenseFeatures(patches.reshape(len(pixels), grid_h, grid_w, -1), image)
