"""Loading an exported backbone as a frozen feature extractor."""

from __future__ import annotations

from pathlib import Path

import torch

from clasp.evaluation.errors import EvalInputError
from clasp.pretraining.backbone import load_backbone


def load_frozen_backbone(path: str | Path, task: str | None = None) -> torch.nn.Module:
    """`clasp.pretraining.load_backbone(path, task)` in eval mode with gradients off; input errors as EvalInputError."""
    path = Path(path)
    if not path.is_dir():
        raise EvalInputError(f"{path}: backbone folder does not exist")
    try:
        model = load_backbone(path, task=task)
    except ValueError as exc:  # the loader's BackboneError names the file and the problem
        raise EvalInputError(str(exc)) from None
    except (FileNotFoundError, KeyError, OSError) as exc:
        raise EvalInputError(f"{path}: not a backbone written by `clasp export` ({exc})") from None
    for p in model.parameters():  # load_backbone returns it in eval mode
        p.requires_grad_(False)
    return model
