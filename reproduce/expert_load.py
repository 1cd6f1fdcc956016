"""How an exported PC-MoE backbone spreads tokens over its experts, task prompt by task prompt.

The training log reports the load summed over all tasks; whether the prompts
really select different experts shows only when each task is run on its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from clasp.evaluation.features import load_images


def expert_load_per_task(export_dir: str | Path, image_paths: Sequence[str | Path]) -> dict[str, np.ndarray]:
    """{task: (moe_layers, experts) share of routed token slots} on these images; {} without MoE."""
    from clasp.pretraining import load_backbone

    backbone = load_backbone(export_dir).backbone
    config = backbone.config
    if not config.moe_layers:
        return {}
    images = load_images(image_paths)
    out = {}
    with torch.inference_mode():
        for task in config.tasks:
            _, routing = backbone.forward_groups([(images, (task,))])
            out[task] = routing.expert_load.float().numpy()
    return out
