"""The backbone: a ViT (patch 16) whose upper blocks are task-conditioned PC-MoE blocks.

Layout for a 256×128 crop (16×8 patch tokens):

    patch embed + CLS + position embedding
    → `depth - moe_layers` shared blocks                    (run once per image)
    → insert the task's prompt token after CLS
    → `moe_layers` PC-MoE blocks, router sees the prompt   (run once per image *and task*)
    → final LayerNorm → CLS (B, D), patches (B, N, D)

Task conditioning lives inside the backbone (as in SOLIDER): each task
(`instance`, `part`, `attribute`) owns one learned prompt vector. It enters the
upper blocks twice: as an extra token that every token attends to, and as the
router's second input. The lower blocks never see it, which is why they can be
shared between tasks. The tasks then pass through the upper blocks as one
stacked batch, each row with its own task's prompt, up to the last block, which
runs per task (below). Stacked, each expert of a PC-MoE takes the rows of all
tasks in one call: three times the rows per matrix product, a third of the
calls. (A CLASP step at preset small in bf16 on an AMX Xeon: 0.99 of its time
with a pass per task; with `moe.GatherCopies` as well 0.96-0.99, both measured
in one process.)

Training reads only the CLS token of the instance and attribute branches, so
`forward_groups(..., cls_only=...)` lets those rows skip the patch tokens' work
in the last block (their keys and values are still computed: the CLS attends
to them). Without `cls_only` every task returns CLS and patches.

With `moe_layers = 0` the model is a plain ViT: there is nothing task-specific,
every requested task gets the same features and no prompt is created.

Images are uint8 (0..255) or float in [0, 1]; the backbone normalises them with
the ImageNet mean/std held as buffers, so an exported backbone takes the same
input as the training stream produces. Crops of other sizes (128×64 local crops:
8×4 tokens) use the position embedding resized bicubically.

This module and `moe.py` depend on torch only: an exported backbone is rebuilt
from `ViTConfig` and a state dict without any training code.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Collection, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from clasp.pretraining.moe import MLP, PCMoE, low_precision_on_cpu
from clasp.pretraining.tasks import TASKS
from clasp.common.person_size import PERSON_HW

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# What a backbone may be (a config outside these is refused, naming the field): wide enough
# bounds for any ViT in use (ViT-g is 1536 wide, 40 deep, 1.0 billion parameters), narrow
# enough that a malformed config cannot ask for tens of GB before anything is checked.
ARCHITECTURE_LIMITS: dict[str, tuple[int, int]] = {
    "dim": (8, 4096), "depth": (1, 64), "heads": (1, 128), "patch_size": (2, 64), "experts": (1, 64),
    "top_k": (1, 64), "img_hw": (2, 4096), "mlp_ratio": (0, 16),
}
MAX_BACKBONE_PARAMS = 2_000_000_000

# Fields under an older name in exports and run configs written before (old name: current name);
# `from_dict` reads either, so those folders keep loading.
RENAMED_FIELDS: dict[str, str] = {"num_experts": "experts"}

PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"dim": 192, "depth": 12, "heads": 3},
    "small": {"dim": 384, "depth": 12, "heads": 6},
    "base": {"dim": 768, "depth": 12, "heads": 12},
}


@dataclass
class ViTConfig:
    """Everything needed to rebuild the backbone; saved beside exported weights.

    `expert_mlp_ratio` None means `mlp_ratio / top_k`: each expert is that much
    narrower than the dense MLP, so a token's top-k experts together cost what
    one dense MLP costs (fine-grained experts). Set it to `mlp_ratio` for
    full-width experts (top_k times the MLP compute in the MoE blocks).
    """

    dim: int = 384
    depth: int = 12
    heads: int = 6
    patch_size: int = 16
    img_hw: tuple[int, int] = PERSON_HW
    mlp_ratio: float = 4.0
    moe_layers: int = 4
    experts: int = 6
    top_k: int = 2
    expert_mlp_ratio: float | None = None
    tasks: tuple[str, ...] = TASKS

    def __post_init__(self) -> None:
        self._check_types_and_ranges()
        self.img_hw = tuple(self.img_hw)
        self.tasks = tuple(self.tasks)
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        if not 0 <= self.moe_layers <= self.depth:
            raise ValueError(f"moe_layers must be in [0, depth={self.depth}], got {self.moe_layers}")
        if self.top_k > self.experts:  # the one check of it: PCMoE and the run settings rely on it
            raise ValueError(f"top_k ({self.top_k}) cannot exceed experts ({self.experts})")
        if any(h % self.patch_size for h in self.img_hw):
            raise ValueError(f"img_hw {self.img_hw} is not a multiple of patch {self.patch_size}")
        if not self.tasks:
            raise ValueError("at least one task is needed")

    def _check_types_and_ranges(self) -> None:
        """Refuse, naming the field, a value no backbone can have (bounds in ARCHITECTURE_LIMITS)."""
        def integer(name: str, value) -> int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            low, high = ARCHITECTURE_LIMITS[name]
            if not low <= value <= high:
                raise ValueError(f"{name} must be in [{low}, {high}], got {value}")
            return value

        for name in ("dim", "depth", "heads", "patch_size", "experts", "top_k"):
            integer(name, getattr(self, name))
        if isinstance(self.moe_layers, bool) or not isinstance(self.moe_layers, int):
            raise ValueError(f"moe_layers must be an integer, got {self.moe_layers!r}")
        if not isinstance(self.img_hw, (list, tuple)) or len(self.img_hw) != 2:
            raise ValueError(f"img_hw must be [height, width], got {self.img_hw!r}")
        for side in self.img_hw:
            integer("img_hw", side)
        for name in ("mlp_ratio", "expert_mlp_ratio"):
            value = getattr(self, name)
            if value is None and name == "expert_mlp_ratio":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or not 0 < value <= ARCHITECTURE_LIMITS["mlp_ratio"][1]:
                raise ValueError(f"{name} must be a number in (0, {ARCHITECTURE_LIMITS['mlp_ratio'][1]}], got {value!r}")
        if isinstance(self.tasks, str) or not isinstance(self.tasks, (list, tuple)) \
                or any(t not in TASKS for t in self.tasks):
            raise ValueError(f"tasks must be a list of {list(TASKS)}, got {self.tasks!r}")
        if self.heads > self.dim:
            raise ValueError(f"heads ({self.heads}) cannot exceed dim ({self.dim})")
        if self.estimated_params() > MAX_BACKBONE_PARAMS:
            raise ValueError(f"dim {self.dim} x depth {self.depth} gives about {self.estimated_params() / 1e9:.1f} "
                             f"billion parameters, more than the {MAX_BACKBONE_PARAMS / 1e9:.1f} billion allowed")

    def estimated_params(self) -> int:
        """Parameters of the backbone, to within a few percent (attention 4·D², MLP 2·r·D² per block)."""
        dense = int(self.depth - min(self.moe_layers, self.depth)) * (4 + 2 * self.mlp_ratio) * self.dim ** 2
        ratio = self.expert_mlp_ratio if self.expert_mlp_ratio is not None else self.mlp_ratio / max(1, self.top_k)
        moe = min(self.moe_layers, self.depth) * (4 + 2 * ratio * self.experts) * self.dim ** 2
        return int(dense + moe)

    @classmethod
    def preset(cls, name: str, **overrides) -> "ViTConfig":
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @property
    def grid(self) -> tuple[int, int]:
        return self.img_hw[0] // self.patch_size, self.img_hw[1] // self.patch_size

    @property
    def expert_hidden(self) -> int:
        ratio = self.expert_mlp_ratio if self.expert_mlp_ratio is not None else self.mlp_ratio / self.top_k
        return max(1, int(round(self.dim * ratio)))

    def to_dict(self) -> dict:
        out = asdict(self)
        out["img_hw"] = list(self.img_hw)
        out["tasks"] = list(self.tasks)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "ViTConfig":
        """The config saved as `data` (an export's `architecture`, a run's `model.vit`), older field names included."""
        if not isinstance(data, dict):
            raise ValueError(f"expected a mapping of architecture fields, got {type(data).__name__}")
        data = _current_names(data)
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown architecture field {unknown[0]!r}")
        return cls(**data)


def _current_names(data: dict) -> dict:
    """`data` with every field of RENAMED_FIELDS under its current name; both names at once are refused."""
    out = dict(data)
    for old, new in RENAMED_FIELDS.items():
        if old in out:
            if new in out:
                raise ValueError(f"architecture field {new!r} is given twice (also as its older name {old!r})")
            out[new] = out.pop(old)
    return out


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q·kᵀ/√d)·v as three plain ops.

    On CPU in bf16, PyTorch's fused attention kernel is 4-10× slower than these
    three plain ops at our sequence lengths (≤ 130 tokens; its backward above all),
    so low-precision CPU runs take this path. The softmax runs on the bf16 scores
    directly: the CPU kernel accumulates in fp32 inside, so its output equals an
    fp32 softmax rounded to bf16, and forward + backward cost a quarter of an
    explicit fp32 round trip (two casts of a (B, H, N, N) tensor each way).
    """
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    return scores.softmax(-1) @ v


def resample_position_embedding(pos_embed: torch.Tensor, grid: tuple[int, int],
                                size: tuple[int, int]) -> torch.Tensor:
    """(1, 1 + gh*gw, D) → (1, 1 + h*w, D): the patch part resized bicubically, the CLS position kept.

    No antialiasing (as DINO; timm antialiases): local crops were trained on
    exactly this resize, and `load_backbone(img_hw=...)` must give what the
    forward gives at that size.
    """
    (gh, gw), (h, w) = grid, size
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:]
    patches = patch_pos.reshape(1, gh, gw, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches.float(), size=(h, w), mode="bicubic", align_corners=False).to(patch_pos.dtype)
    return torch.cat([cls_pos, patches.permute(0, 2, 3, 1).reshape(1, h * w, -1)], dim=1)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, cls_only: bool = False) -> torch.Tensor:
        """(B, N, D) → (B, N, D); with `cls_only` only the first token queries: → (B, 1, D)."""
        b, n, d = x.shape
        split = (b, -1, self.heads, d // self.heads)
        if cls_only:  # keys and values of every token, a query for the CLS token alone
            q = F.linear(x[:, :1], self.qkv.weight[:d], self.qkv.bias[:d]).reshape(split).transpose(1, 2)
            k, v = F.linear(x, self.qkv.weight[d:], self.qkv.bias[d:]).reshape(b, n, 2, *split[2:]).permute(
                2, 0, 3, 1, 4)
        else:
            q, k, v = self.qkv(x).reshape(b, n, 3, *split[2:]).permute(2, 0, 3, 1, 4)
        if low_precision_on_cpu(q):
            out = explicit_attention(q, k, v)
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, -1, d))


class Block(nn.Module):
    """Pre-norm transformer block with a dense MLP (the shared lower blocks)."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLP(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))

    def forward_cls(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output for the CLS token only, (B, 1, D): all a last block owes a CLS-only task."""
        cls = x[:, :1] + self.attn(self.norm1(x), cls_only=True)
        return cls + self.mlp(self.norm2(cls))


class MoEBlock(nn.Module):
    """Pre-norm transformer block whose MLP is a PC-MoE routed by token and task prompt."""

    def __init__(self, dim: int, heads: int, hidden: int, experts: int, top_k: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.moe = PCMoE(dim, hidden, experts, top_k)

    def forward(self, x: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.moe(self.norm2(x), prompt)

    def forward_cls(self, x: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        """The block's output for the CLS token only, (B, 1, D)."""
        cls = x[:, :1] + self.attn(self.norm1(x), cls_only=True)
        return cls + self.moe(self.norm2(cls), prompt)


@dataclass
class RoutingStats:
    """What the MoE blocks report for one forward (zeros / empty without MoE)."""

    balance_loss: torch.Tensor  # scalar, mean over MoE layers of E·Σ f_e·P_e
    expert_load: torch.Tensor  # (moe_layers, experts) fraction of routed token slots per expert


Features = dict[str, tuple[torch.Tensor, torch.Tensor | None]]


class PromptedViT(nn.Module):
    """ViT with task prompts and PC-MoE upper blocks; see the module docstring."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        h, w = c.grid
        self.num_shared = c.depth - c.moe_layers
        self.register_buffer("pixel_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.patch_embed = nn.Conv2d(3, c.dim, c.patch_size, c.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + h * w, c.dim))
        hidden = int(round(c.dim * c.mlp_ratio))
        self.blocks = nn.ModuleList(Block(c.dim, c.heads, hidden) for _ in range(self.num_shared))
        self.moe_blocks = nn.ModuleList(
            MoEBlock(c.dim, c.heads, c.expert_hidden, c.experts, c.top_k) for _ in range(c.moe_layers))
        if c.moe_layers:
            self.task_prompts = nn.Parameter(torch.zeros(len(c.tasks), c.dim))
        self.norm = nn.LayerNorm(c.dim, eps=1e-6)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        if self.config.moe_layers:
            nn.init.trunc_normal_(self.task_prompts, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # -- pieces -------------------------------------------------------------------------------------

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 0..255 or float 0..1 → ImageNet-normalised float."""
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        return (x - self.pixel_mean) / self.pixel_std

    def position_embedding(self, h: int, w: int) -> torch.Tensor:
        """(1, 1 + h*w, D): the learned embedding, patch part resized bicubically to an h×w grid."""
        if (h, w) == self.config.grid:
            return self.pos_embed
        return resample_position_embedding(self.pos_embed, self.config.grid, (h, w))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(self.normalize(images))
        h, w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        return x + self.position_embedding(h, w).to(x.dtype)

    def task_index(self, task: str) -> int:
        if task not in self.config.tasks:
            raise ValueError(f"unknown task {task!r}; this backbone has {list(self.config.tasks)}")
        return self.config.tasks.index(task)

    def forward_shared(self, images: torch.Tensor, last_cls_only: bool = False) -> torch.Tensor:
        """Tokens (B, 1 + N, D) after the shared lower blocks ((B, 1, D) if the last one is CLS-only)."""
        x = self.embed(images)
        for i, block in enumerate(self.blocks):
            x = block.forward_cls(x) if last_cls_only and i == len(self.blocks) - 1 else block(x)
        return x

    def forward_tasks(self, tokens: torch.Tensor, tasks: Sequence[str], cls_only: Collection[str] = ()) -> Features:
        """Run the task-specific upper blocks for every task on the shared tokens.

        The tasks go through every upper block but the last as one stacked batch,
        each row with its task's prompt (attention stays within a row, routing is
        per token), so each expert takes the rows of all tasks in one call.
        Tasks in `cls_only` get patches = None, and their rows skip the last block's
        work for patch tokens (only the CLS token's query, attention output and MoE).
        """
        if not self.config.moe_layers:
            out = self.norm(tokens)
            cls = out[:, 0]
            patches = out[:, 1:] if out.shape[1] > 1 else None
            return {task: (cls, None if task in cls_only else patches) for task in tasks}
        if not tasks:
            return {}
        rows = tokens.shape[0]
        prompts = [self.task_prompts[self.task_index(task)].expand(rows, -1) for task in tasks]
        prompted = [torch.cat([tokens[:, :1], p.unsqueeze(1).to(tokens.dtype), tokens[:, 1:]], dim=1)
                    for p in prompts]
        stacked = len(tasks) > 1  # one task alone: nothing to copy, and an export traces no split by batch size
        x, prompt = (torch.cat(prompted), torch.cat(prompts)) if stacked else (prompted[0], prompts[0])
        for block in self.moe_blocks[:-1]:
            x = block(x, prompt)
        per_task = x.split(rows) if stacked else (x,)
        return {task: self._last_block(x_task, prompt_task, task in cls_only)
                for task, x_task, prompt_task in zip(tasks, per_task, prompts)}

    def _last_block(self, x: torch.Tensor, prompt: torch.Tensor,
                    cls_only: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One task's last upper block and final norm: (cls (B, D), patches (B, N, D) or None if `cls_only`)."""
        last = self.moe_blocks[-1]
        if cls_only:
            return self.norm(last.forward_cls(x, prompt))[:, 0], None
        x = self.norm(last(x, prompt))
        return x[:, 0], x[:, 2:]

    def forward_task(self, tokens: torch.Tensor, task: str,
                     cls_only: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One task's pass through the upper blocks: (cls (B, D), patches (B, N, D) or None if `cls_only`)."""
        return self.forward_tasks(tokens, (task,), (task,) if cls_only else ())[task]

    def routing_stats(self) -> RoutingStats:
        if not self.config.moe_layers:
            zero = self.pos_embed.new_zeros(())
            return RoutingStats(zero, torch.zeros(0, self.config.experts))
        per_layer = [block.moe.stats() for block in self.moe_blocks]
        balance = torch.stack([b for b, _ in per_layer]).mean()
        return RoutingStats(balance, torch.stack([load for _, load in per_layer]))

    # -- entry points -------------------------------------------------------------------------------

    def forward_groups(self, groups: Sequence[tuple[torch.Tensor, Sequence[str]]],
                       cls_only: Collection[str] = ()) -> tuple[list[Features], RoutingStats]:
        """Several image groups (e.g. global and local crops: one size per group), each with its tasks.

        Tasks named in `cls_only` return (cls, None): their patch tokens are not
        computed in the last block (training needs only the CLS of the instance and
        attribute branches). Routing statistics cover all tokens routed in all groups,
        so the balance loss is one loss per step.
        """
        for block in self.moe_blocks:
            block.moe.reset_stats()
        features = []
        for images, tasks in groups:
            plain_cls_only = not self.config.moe_layers and all(t in cls_only for t in tasks)
            tokens = self.forward_shared(images, last_cls_only=plain_cls_only and len(self.blocks) > 0)
            features.append(self.forward_tasks(tokens, tasks, cls_only))
        return features, self.routing_stats()

    def forward(self, images: torch.Tensor, tasks: Sequence[str] = ("instance",)) -> tuple[Features, RoutingStats]:
        """images (B, 3, H, W) → ({task: (cls (B, D), patches (B, N, D))}, routing stats)."""
        features, stats = self.forward_groups([(images, tasks)])
        return features[0], stats

    def for_task(self, task: str) -> "TaskBackbone":
        return TaskBackbone(self, task)


class TaskBackbone(nn.Module):
    """A backbone fixed to one task prompt: images → (cls (B, D), patches (B, N, D))."""

    def __init__(self, backbone: PromptedViT, task: str) -> None:
        super().__init__()
        if backbone.config.moe_layers:
            backbone.task_index(task)
        self.backbone = backbone
        self.task = task

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Any size whose sides are multiples of the patch: the position embedding is resized to its grid."""
        patch = self.backbone.config.patch_size
        if images.shape[-2] % patch or images.shape[-1] % patch:
            raise ValueError(f"images of {images.shape[-2]}x{images.shape[-1]} pixels: height and width must be "
                             f"multiples of the patch size {patch}")
        features, _ = self.backbone(images, (self.task,))
        return features[self.task]
