"""The settings of `clasp tiny-clip`, declared once.

Light on purpose (no torch, no transformers): the command line imports it to build its options;
`tiny_clip.py` builds the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from clasp.settings import setting


@dataclass
class TinyClipConfig:
    out_dir: Path  # the folder to write the CLIP into (`save_pretrained`)
    seed: int = setting(0, "Seed of the random weights (same seed, same files).")
    vocab: Path | None = setting(None, "Extra vocabulary JSON whose prompts the tokenizer is also trained on.",
                                 shown="the shipped default vocabulary only")
