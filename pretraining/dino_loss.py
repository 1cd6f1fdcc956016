"""DINO's self-distillation loss with teacher centering; owns the centre.

For every pair (teacher view i, student view j) with i ≠ j — the teacher sees
the global crops only, the student all crops — the loss is the cross-entropy

    H(softmax((t_i - c) / τ_t), softmax(s_j / τ_s))

averaged over the batch and over the pairs. After the loss is computed the
centre moves towards the batch mean of the teacher outputs,

    c ← m·c + (1 − m)·mean(t)

with the mean taken over every process when torch.distributed is initialised.
The teacher temperature may warm up linearly from `warmup_teacher_temp` to
`teacher_temp` over `warmup_teacher_temp_steps` steps: DINO's
`np.linspace(warmup, final, n)`, counted in optimizer steps rather than epochs,
so step n - 1 already uses the final value.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DINOLossConfig:
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_steps: int = 0
    center_momentum: float = 0.9


class DINOLoss(nn.Module):
    def __init__(self, out_dim: int, config: DINOLossConfig | None = None) -> None:
        super().__init__()
        self.config = config or DINOLossConfig()
        self.register_buffer("center", torch.zeros(1, out_dim))

    def teacher_temp_at(self, step: int | None) -> float:
        c = self.config
        n = c.warmup_teacher_temp_steps
        if step is None or step >= n:
            return c.teacher_temp
        return c.warmup_teacher_temp + (c.teacher_temp - c.warmup_teacher_temp) * step / max(n - 1, 1)

    def forward(self, student_out: torch.Tensor, teacher_out: torch.Tensor, num_student_views: int,
                step: int | None = None) -> torch.Tensor:
        """student_out: (V_s·B, K) views stacked view after view; teacher_out: (V_t·B, K), same order.

        Teacher view i and student view i are the same crop, so those pairs are skipped.
        Updates the centre (call once per step, in training).
        """
        num_teacher_views = teacher_out.shape[0] // (student_out.shape[0] // num_student_views)
        student = (student_out.float() / self.config.student_temp).log_softmax(-1).chunk(num_student_views)
        teacher_out = teacher_out.detach().float()
        teacher = ((teacher_out - self.center) / self.teacher_temp_at(step)).softmax(-1).chunk(num_teacher_views)
        total, pairs = student_out.new_zeros((), dtype=torch.float32), 0
        for i, t in enumerate(teacher):
            for j, s in enumerate(student):
                if i == j:
                    continue
                total = total - (t * s).sum(-1).mean()
                pairs += 1
        if self.training:
            self.update_center(teacher_out)
        return total / max(pairs, 1)

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        batch_sum = teacher_out.float().sum(0, keepdim=True)
        count = torch.tensor(float(teacher_out.shape[0]), device=batch_sum.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(batch_sum)
            dist.all_reduce(count)
        m = self.config.center_momentum
        self.center.mul_(m).add_(batch_sum / count, alpha=1 - m)
