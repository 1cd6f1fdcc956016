"""The meta-architecture: student, EMA teacher, heads and losses behind one `forward(batch)`.

Keeping all of it in one module keeps the training loop short (DINOv2's
`SSLMetaArch` idea): the loop calls `forward`, steps the optimizer and calls
`update_teacher(momentum)`; checkpoints hold the whole module, so the teacher
and the DINO centre are saved with the student.

One step:
- the student backbone runs the shared lower blocks once per crop, the global
  crops through the `instance`, `part` and `attribute` branches, the local crops
  through `instance` only; crops of one size run as one batch (DINO's
  multi-crop wrapper), and the DINO head runs once on the CLS of all views;
- the teacher (backbone + DINO head, no gradient) runs the global crops through
  `instance`;
- total = dino + w_part·part + w_attr·attribute + w_balance·balance.

A branch whose weight is 0 is neither built nor run. `ModelConfig.dino_baseline`
(no MoE, w_part = w_attr = 0) is plain DINO on the same ViT: the baseline of the
benchmark and the evaluation.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from clasp.pretraining.attribute_loss import AttributeLoss, AttributeLossConfig
from clasp.pretraining.batch import MultiCropBatch
from clasp.pretraining.config import DEFAULTS as SETTINGS
from clasp.pretraining.dino_loss import DINOLoss, DINOLossConfig
from clasp.pretraining.heads import AttributeHead, DINOHead, PartHead
from clasp.pretraining.part_loss import PartLoss, PartLossConfig
from clasp.pretraining.vit import PromptedViT, ViTConfig

NO_WEIGHT_DECAY_NAMES = frozenset({"pos_embed", "cls_token", "task_prompts"})
# Branches whose losses read the CLS token only: the backbone skips their patch tokens in the last block.
CLS_ONLY_TASKS = frozenset({"instance", "attribute"})


@dataclass
class LossConfig:
    """Loss weights and the settings of each loss, flat so each maps to one config key."""

    w_part: float = SETTINGS.w_part
    w_attr: float = SETTINGS.w_attr
    w_balance: float = SETTINGS.w_balance
    student_temp: float = 0.1
    teacher_temp: float = SETTINGS.teacher_temp
    warmup_teacher_temp: float = SETTINGS.warmup_teacher_temp
    warmup_teacher_temp_steps: int = SETTINGS.warmup_teacher_temp_steps
    center_momentum: float = 0.9
    part_conf_threshold: float = 0.3
    attr_temperature: float = 1.0

    def dino(self) -> DINOLossConfig:
        return DINOLossConfig(self.student_temp, self.teacher_temp, self.warmup_teacher_temp,
                              self.warmup_teacher_temp_steps, self.center_momentum)

    def part(self) -> PartLossConfig:
        return PartLossConfig(self.part_conf_threshold)


@dataclass
class ModelConfig:
    """The whole model: backbone, heads and losses.

    `attribute_groups` are the (start, stop) columns of each attribute group in
    `attr_logits` (`Vocabulary.group_slices()`); `ModelConfig.build` fills them
    and `num_parts` from a vocabulary. The backbone's task list is derived from
    the loss weights (instance always; part / attribute when their weight > 0).
    """

    vit: ViTConfig = field(default_factory=ViTConfig)
    num_parts: int = 6
    attribute_groups: tuple[tuple[int, int], ...] = ()
    dino_out_dim: int = SETTINGS.dino_out_dim
    dino_hidden_dim: int = SETTINGS.dino_hidden_dim
    dino_bottleneck_dim: int = SETTINGS.dino_bottleneck_dim
    loss: LossConfig = field(default_factory=LossConfig)

    def __post_init__(self) -> None:
        if isinstance(self.vit, dict):
            self.vit = ViTConfig.from_dict(self.vit)
        if isinstance(self.loss, dict):
            self.loss = LossConfig(**self.loss)
        self.attribute_groups = tuple((int(a), int(b)) for a, b in self.attribute_groups)
        if self.loss.w_attr > 0 and not self.attribute_groups:
            raise ValueError("w_attr > 0 needs attribute_groups (Vocabulary.group_slices())")
        self.vit.tasks = self.tasks

    @property
    def tasks(self) -> tuple[str, ...]:
        tasks = ["instance"]
        if self.loss.w_part > 0:
            tasks.append("part")
        if self.loss.w_attr > 0:
            tasks.append("attribute")
        return tuple(tasks)

    @property
    def num_attributes(self) -> int:
        return max((stop for _, stop in self.attribute_groups), default=0)

    @classmethod
    def build(cls, preset: str = SETTINGS.preset, vocab=None, *, moe_layers: int = SETTINGS.moe_layers,
              experts: int = SETTINGS.experts, top_k: int = SETTINGS.top_k,
              dino_out_dim: int = SETTINGS.dino_out_dim, dino_hidden_dim: int = SETTINGS.dino_hidden_dim,
              dino_bottleneck_dim: int = SETTINGS.dino_bottleneck_dim, loss: LossConfig | None = None,
              **vit_overrides) -> "ModelConfig":
        """A config from a ViT preset and (optionally) a `clasp.store.Vocabulary`."""
        vit = ViTConfig.preset(preset, moe_layers=moe_layers, experts=experts, top_k=top_k, **vit_overrides)
        parts, groups = 6, ()
        if vocab is not None:
            parts = vocab.num_parts
            groups = tuple((s.start, s.stop) for _, s in vocab.group_slices())
        return cls(vit=vit, num_parts=parts, attribute_groups=groups, dino_out_dim=dino_out_dim,
                   dino_hidden_dim=dino_hidden_dim, dino_bottleneck_dim=dino_bottleneck_dim, loss=loss or LossConfig())

    @classmethod
    def dino_baseline(cls, preset: str = SETTINGS.preset, *, dino_out_dim: int = SETTINGS.dino_out_dim,
                      dino_hidden_dim: int = SETTINGS.dino_hidden_dim,
                      dino_bottleneck_dim: int = SETTINGS.dino_bottleneck_dim, loss: LossConfig | None = None,
                      **vit_overrides) -> "ModelConfig":
        """Plain DINO on the same ViT: no MoE, no part or attribute branch."""
        base = loss or LossConfig()
        loss = LossConfig(**{**asdict(base), "w_part": 0.0, "w_attr": 0.0, "w_balance": 0.0})
        return cls(vit=ViTConfig.preset(preset, moe_layers=0, **vit_overrides), dino_out_dim=dino_out_dim,
                   dino_hidden_dim=dino_hidden_dim, dino_bottleneck_dim=dino_bottleneck_dim, loss=loss)

    def to_dict(self) -> dict:
        return {"vit": self.vit.to_dict(), "num_parts": self.num_parts,
                "attribute_groups": [list(g) for g in self.attribute_groups], "dino_out_dim": self.dino_out_dim,
                "dino_hidden_dim": self.dino_hidden_dim, "dino_bottleneck_dim": self.dino_bottleneck_dim,
                "loss": asdict(self.loss)}

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        return cls(**data)


class ClaspModel(nn.Module):
    """Student (backbone + heads), EMA teacher (backbone + DINO head) and the losses."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        dim = c.vit.dim
        student = {"backbone": PromptedViT(c.vit),
                   "dino_head": DINOHead(dim, c.dino_out_dim, c.dino_hidden_dim, c.dino_bottleneck_dim)}
        if "part" in c.tasks:
            student["part_head"] = PartHead(dim, c.num_parts)
        if "attribute" in c.tasks:
            student["attribute_head"] = AttributeHead(dim, c.num_attributes)
        self.student = nn.ModuleDict(student)
        self.teacher = nn.ModuleDict({"backbone": copy.deepcopy(self.student["backbone"]),
                                      "dino_head": copy.deepcopy(self.student["dino_head"])})
        self.teacher.requires_grad_(False)
        self.dino_loss = DINOLoss(c.dino_out_dim, c.loss.dino())
        self.part_loss = PartLoss(c.loss.part()) if "part" in c.tasks else None
        self.attribute_loss = (AttributeLoss(AttributeLossConfig(c.attribute_groups, c.loss.attr_temperature))
                               if "attribute" in c.tasks else None)

    # -- what the loop needs ------------------------------------------------------------------------

    def param_groups(self) -> list[dict]:
        """Student parameters split for AdamW: group 0 decays, group 1 (`weight_decay` 0) is exempt.

        Exempt: biases and norm weights (every 1-D parameter), as DINO's
        `get_params_groups`; and, unlike DINO (which decays them), the position
        embedding, the CLS token and the task prompts, by the DeiT/timm
        `no_weight_decay` rule: shrinking learned embeddings towards zero only
        fights the signal they carry. A weight-decay schedule should set group 0 only.
        """
        decay, no_decay = [], []
        for name, param in self.student.named_parameters():
            if not param.requires_grad:
                continue
            if name.endswith(".bias") or param.ndim <= 1 or name.rsplit(".", 1)[-1] in NO_WEIGHT_DECAY_NAMES:
                no_decay.append(param)
            else:
                decay.append(param)
        return [{"name": "decay", "params": decay}, {"name": "no_decay", "params": no_decay, "weight_decay": 0.0}]

    def drop_prototype_gradients(self) -> None:
        """Drop this step's gradient of the DINO head's last layer (call after backward, before the optimizer).

        DINO keeps the prototypes fixed during the first epoch: early on their
        gradient is large and noisy and can collapse the assignment. With the
        gradient None, AdamW skips the weight altogether (no decay either).
        """
        self.student["dino_head"].last_layer.weight.grad = None

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """teacher ← momentum·teacher + (1 − momentum)·student, for backbone and DINO head."""
        teacher, student = [], []
        for key in ("backbone", "dino_head"):
            teacher += list(self.teacher[key].parameters())
            student += list(self.student[key].parameters())
        torch._foreach_mul_(teacher, momentum)
        torch._foreach_add_(teacher, student, alpha=1.0 - momentum)

    # -- one step -----------------------------------------------------------------------------------

    def forward(self, batch: MultiCropBatch, step: int | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The total loss (with gradient) and detached statistics.

        `step` (the optimizer step) only drives the teacher-temperature warm-up.
        Stats keys: loss, dino, part, attribute, balance (0-dim), teacher_temp,
        part_kept (fraction of mask cells above the confidence threshold),
        expert_load ((moe_layers, experts) fraction of routed token slots).
        """
        c = self.config
        num_global, num_local = batch.global_crops.shape[0], batch.local_crops.shape[0]
        global_crops = batch.global_crops.flatten(0, 1)  # view after view
        groups = [(global_crops, c.tasks)]
        if num_local:
            groups.append((batch.local_crops.flatten(0, 1), ("instance",)))
        features, routing = self.student["backbone"].forward_groups(groups, cls_only=CLS_ONLY_TASKS)
        student_cls = torch.cat([f["instance"][0] for f in features])
        student_out = self.student["dino_head"](student_cls)

        with torch.no_grad():
            teacher_features, _ = self.teacher["backbone"].forward_groups([(global_crops, ("instance",))],
                                                                          cls_only=CLS_ONLY_TASKS)
            teacher_out = self.teacher["dino_head"](teacher_features[0]["instance"][0])
        dino = self.dino_loss(student_out, teacher_out, num_global + num_local, step)

        zero = dino.new_zeros(())
        part, part_kept, attribute = zero, zero, zero
        if self.part_loss is not None:
            logits = self.student["part_head"](features[0]["part"][1])
            part, part_kept = self.part_loss(logits, batch.part_mask, batch.part_conf)
        if self.attribute_loss is not None:
            prediction = self.student["attribute_head"](features[0]["attribute"][0])
            attribute = self.attribute_loss(prediction, batch.attr_logits.repeat(num_global, 1))
        balance = routing.balance_loss.float()

        w = c.loss
        total = dino + w.w_part * part + w.w_attr * attribute + w.w_balance * balance
        stats = {"loss": total, "dino": dino, "part": part, "attribute": attribute, "balance": balance,
                 "part_kept": part_kept}
        stats = {k: v.detach() for k, v in stats.items()}
        stats["teacher_temp"] = torch.tensor(self.dino_loss.teacher_temp_at(step))
        stats["expert_load"] = routing.expert_load.detach()
        return total, stats
