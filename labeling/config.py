"""Every setting of `clasp label`, declared once, and the one check of them.

`ClipLabelerConfig` is what decides which labeler a process builds (the CLIP
model, its input size, dense mode, precision and device, plus the vocabulary);
it is frozen and hashable, so it also keys each worker's labeler cache.
`LabelConfig` is the whole run: those settings (declared by reference to
`ClipLabelerConfig`, not again) plus the folders, sharding and parallelism.
The command-line options and the table of docs/commands/label.md are derived from `LabelConfig`.
This module imports no torch, so the command line can read it at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from clasp.hardware.cores import WORKERS_PER_CORE
from clasp.labeling.errors import LabelingError
from clasp.runs.settings import RunSettings
from clasp.settings import first_problem, same_as, setting
from clasp.settings.parsers import size_hw
from clasp.store.fetch import is_url
from clasp.store.label_choices import DENSE_MODES


@dataclass(frozen=True)
class ClipLabelerConfig:
    """The labeler a process builds; `vocab` None means the shipped default vocabulary."""

    clip_model: str = setting("openai/clip-vit-base-patch16",
                              "CLIP to label with: a hub id or a local folder (`clasp tiny-clip DIR` writes an "
                              "offline one).")
    revision: str | None = setting(None, "Hub revision (branch, tag or commit) of --clip-model.")
    clip_size: tuple[int, int] = setting((448, 224), "CLIP input size HEIGHTxWIDTH; with patch 16, 448x224 gives "
                                         "a 28x14 label grid.", metavar="HxW", parse=size_hw)
    dense_mode: str = setting("maskclip", "Patch features from CLIP's last block: maskclip (value path), naive "
                              "(plain tokens), clearclip (q-q attention), sclip (q-q + k-k attention) or naclip "
                              "(k-k attention, neighbourhood prior).", choices=DENSE_MODES)
    precision: str = same_as(RunSettings, "precision", note="fp16 needs CUDA.", resumable=False)
    device: str = setting("cpu", "Torch device for CLIP, e.g. cpu, cuda, cuda:1.")
    vocab: Any = None  # a clasp.store.Vocabulary
    compile: str = same_as(RunSettings, "compile")

    def check(self) -> None:
        """Refuse a choice or size no labeler can honour, naming it (the device is checked where it is used)."""
        check_settings(self)
        if len(self.clip_size) != 2 or min(self.clip_size) < 1:
            raise LabelingError(f"--clip-size must be two positive sizes HxW, got {self.clip_size}")


@dataclass
class LabelConfig:
    """A whole `clasp label` run."""

    images: Path = setting(None, "Folder of person images, scanned recursively for jpg/jpeg/png/bmp/webp.",
                           required=True, metavar="DIR")
    out: Path = setting(None, "Shard folder to write (manifest.json + shard-*.h5); a rerun finishes or updates it.",
                        required=True, metavar="DIR")
    clip_model: str = same_as(ClipLabelerConfig, "clip_model")
    revision: str | None = same_as(ClipLabelerConfig, "revision")
    clip_size: tuple[int, int] = same_as(ClipLabelerConfig, "clip_size")
    dense_mode: str = same_as(ClipLabelerConfig, "dense_mode")
    vocab: Path | None = setting(None, "Vocabulary JSON file (parts and attribute groups with their prompts).",
                                 shown="the shipped default vocabulary", metavar="FILE")
    shard_size: int = setting(4096, "Input images per shard.", limits=(1, 1_000_000))
    batch_size: int = setting(32, "Images per CLIP forward.", limits=(1, 65_536))
    workers: int = setting(0, "0: label in this process (torch uses every core). N: start a local dask cluster of "
                           f"N processes, at most {WORKERS_PER_CORE} per available core (with --device cuda, worker k uses GPU k).",
                           limits=(0, math.inf))
    scheduler: str | None = setting(None, "Address of an existing dask scheduler (e.g. tcp://host:8786); its "
                                    "workers must see --images and --out.", metavar="ADDR")
    precision: str = same_as(ClipLabelerConfig, "precision")
    device: str = same_as(ClipLabelerConfig, "device")
    compile: str = same_as(ClipLabelerConfig, "compile")
    threads: int | None = same_as(RunSettings, "threads", note="In this process (--workers 0); each worker of "
                                  "--workers takes its share of its host's cores.")
    strict: bool = setting(False, "Exit with code 1 when any input was skipped (the shards are still written): one "
                           "line naming the first; `clasp inspect OUT` lists them all.")
    force: bool = setting(False, "Relabel an --out folder made with another model, size, dense mode, vocabulary "
                          "or shard size.")
    progress: bool = field(default=True)  # a progress bar on stderr (library callers may turn it off)

    def labeler(self, vocab=None) -> ClipLabelerConfig:
        """The labeler settings of this run, with the loaded vocabulary."""
        names = [f.name for f in fields(ClipLabelerConfig) if f.name not in ("vocab", "clip_size")]
        return ClipLabelerConfig(**{n: getattr(self, n) for n in names}, clip_size=tuple(self.clip_size), vocab=vocab)

    def check(self) -> None:
        """Refuse settings the run cannot use, before anything is read or started."""
        self.labeler().check()
        check_settings(self)
        if self.scheduler and self.workers:
            raise LabelingError("give --workers N (a local cluster) or --scheduler ADDRESS (an existing one), not both")
        for name in ("images", "out"):
            location = str(getattr(self, name)).replace(":/", "://", 1)  # a Path folds the URL's `//`
            if is_url(location):
                raise LabelingError(f"--{name} {location}: clasp label reads and writes local folders; label into a "
                                    "local --out, then publish the finished store (docs/store.md, \"A store at a URL\")")


def check_settings(config: Any) -> None:
    """Every declared setting of a labeling config (`clasp.settings.check_value`); LabelingError names the first
    that does not fit."""
    found = first_problem(config)
    if found is not None:
        raise LabelingError(found[1])
