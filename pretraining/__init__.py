"""Stage two: streaming the label store into a prompt-controlled MoE ViT, and exporting its backbone.

`load_backbone(DIR)` is the one entry point users of an exported backbone need;
it is imported lazily so that `import clasp.pretraining` stays cheap.
"""

from __future__ import annotations

__all__ = ["load_backbone"]


def __getattr__(name: str):
    if name == "load_backbone":
        from clasp.pretraining.backbone import load_backbone

        return load_backbone
    raise AttributeError(f"module 'clasp.pretraining' has no attribute {name!r}")
