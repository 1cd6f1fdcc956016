"""Training augmentation of a batch, from a generator seeded by (seed, step, rank).

Images arrive as uint8 (B, 3, H, W) and leave as float in [0, 1] (the backbone
normalises inside). re-ID and attributes: horizontal flip (p = 0.5), zero
padding by 10 pixels and a random crop back to H x W, and (re-ID) random
erasing (p = 0.5, area 2-40 %, aspect 0.3-3.3, filled with the ImageNet mean),
as the strong re-ID baseline does. Parsing: horizontal flip with left and right
classes swapped (LIP's left/right arm, leg and shoe), the label map flipped
with the image.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

PAD = 10
ERASE_FILL = (0.485, 0.456, 0.406)
LIP_FLIP = {14: 15, 15: 14, 16: 17, 17: 16, 18: 19, 19: 18}


def batch_generator(seed: int, step: int, rank: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, step, rank, 7]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


def _uniform(gen: torch.Generator, low: float = 0.0, high: float = 1.0) -> float:
    return low + (high - low) * float(torch.rand((), generator=gen))


def flip_pad_crop(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    x = images.float() / 255.0
    b, _, h, w = x.shape
    flips = torch.rand(b, generator=gen) < 0.5
    x = torch.where(flips[:, None, None, None], x.flip(-1), x)
    padded = F.pad(x, (PAD, PAD, PAD, PAD))
    dy = torch.randint(0, 2 * PAD + 1, (b,), generator=gen)
    dx = torch.randint(0, 2 * PAD + 1, (b,), generator=gen)
    return torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])


def random_erasing(x: torch.Tensor, gen: torch.Generator, p: float = 0.5) -> torch.Tensor:
    x = x.clone()
    _, _, h, w = x.shape
    fill = torch.tensor(ERASE_FILL).view(3, 1, 1)
    for i in range(len(x)):
        if _uniform(gen) >= p:
            continue
        for _ in range(100):
            area = _uniform(gen, 0.02, 0.4) * h * w
            aspect = math.exp(_uniform(gen, math.log(0.3), math.log(1 / 0.3)))
            eh, ew = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if eh < h and ew < w:
                y0 = int(torch.randint(0, h - eh + 1, (), generator=gen))
                x0 = int(torch.randint(0, w - ew + 1, (), generator=gen))
                x[i, :, y0:y0 + eh, x0:x0 + ew] = fill
                break
    return x


def flip_parsing(images: torch.Tensor, labels: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    flips = torch.rand(len(images), generator=gen) < 0.5
    swap = torch.arange(256, dtype=torch.long)
    for a, b in LIP_FLIP.items():
        swap[a] = b
    swapped = swap[labels.long()]
    images = torch.where(flips[:, None, None, None], images.flip(-1), images)
    labels = torch.where(flips[:, None, None], swapped.flip(-1), labels.long())
    return images.float() / 255.0, labels
