"""Every setting of `clasp synth` and `clasp synth-corpus`, declared once.

The commands' options (and the docs' option tables) are derived from
`SynthConfig` and `CorpusConfig`; `synth/writer.py`, `synth/layouts.py` and
`synth/corpus.py` do the work. This module imports no numpy, PIL or h5py (and
lives outside `synth/`, whose package imports the writer), so the command line
can read it at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clasp.settings import setting

# The benchmark folder formats `clasp synth --layout` writes (`synth/layouts.py`).
LAYOUTS = ("market1501", "msmt17", "pa100k", "peta", "lip", "cihp", "coco")
COUNT = (1, math.inf)  # bounds of a count that must be positive


@dataclass
class SynthConfig:
    """A synthetic world: `clasp synth`."""

    out: Path = setting(None, "Folder for images/ and truth/ (created).", required=True)
    identities: int = setting(100, "Number of people.", limits=COUNT)
    images_per_id: int = setting(8, "Images of each person; image n is taken by camera (id + n) % cameras.",
                                 limits=COUNT)
    cameras: int = setting(4, "Cameras, each with its own background, lighting and colour cast.", limits=COUNT)
    seed: int = setting(0, "The world; the same seed gives the same files.")
    layout: str | None = setting(None, "Write the world in this benchmark's folder format.", choices=LAYOUTS,
                                 shown="clasp's own (images/ + truth/)")
    vocab: Any = None  # a clasp.store.Vocabulary; None: the default vocabulary


@dataclass
class CorpusConfig:
    """An image-caption corpus: `clasp synth-corpus`."""

    out: Path = setting(None, "Folder for images/ and captions.jsonl (created).", required=True)
    pairs: int = setting(12000, "Image-caption pairs to draw.", limits=COUNT)
    cameras: int = setting(32, "Corpus cameras (backgrounds, lighting), none shared with any `clasp synth` world.",
                           limits=COUNT)
    seed: int = setting(0, "The corpus; the same seed gives the same files.")
    vocab: Any = None  # a clasp.store.Vocabulary; None: the default vocabulary
