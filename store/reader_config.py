"""The settings of the commands that read a store (`clasp verify`, `inspect`, `show`), declared once.

`ReaderSettings.on_bad_row` is how any reader of a store treats a row that
fails a check (`rowcheck.py`); `clasp pretrain` takes it from here too. Every
command reads a folder or a URL, so each config also holds the cache settings
of `CacheConfig` and gives them back as `config.cache`.

Light on purpose (no h5py, numpy or PIL): the command line imports it to build its options.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from clasp.settings import same_as, setting
from clasp.store.cache_config import CacheConfig


@dataclass
class ReaderSettings:
    """What every reader of a store decides about bad rows."""

    on_bad_row: str = setting("stop", "A row that fails a check (a chunk that does not decompress, an image that "
                              "does not decode, part_mask outside the vocabulary, part_conf outside [0, 1], "
                              "attr_logits not finite): stop with one line naming shard, row and field, or skip it "
                              "and count it.", choices=("stop", "skip"))


class _FetchesShards:
    """A config with `cache_dir` and `cache_size`: where a URL store's shards are fetched to."""

    cache_dir: str
    cache_size: str

    @property
    def cache(self) -> CacheConfig:
        return CacheConfig(cache_dir=self.cache_dir, cache_size=self.cache_size)


@dataclass
class VerifyConfig(_FetchesShards):
    root: Path | str  # a shard folder or its URL
    deep: bool = setting(False, "Also decode every row: every compressed chunk, every image, every label value "
                         "(part_mask in the vocabulary, part_conf in [0, 1], finite attr_logits); prints each "
                         "shard's time.")
    cache_dir: str = same_as(CacheConfig, "cache_dir")
    cache_size: str = same_as(CacheConfig, "cache_size")


@dataclass
class InspectConfig(_FetchesShards):
    root: Path | str  # a shard folder or its URL
    as_json: bool = setting(False, "Print the summary as JSON (machine-readable) instead of text.", flag_name="json")
    examples_per_reason: int = setting(3, "Example paths listed for each skip reason.", limits=(0, math.inf),
                                       flag_name="examples")
    on_bad_row: str = same_as(ReaderSettings, "on_bad_row")
    cache_dir: str = same_as(CacheConfig, "cache_dir")
    cache_size: str = same_as(CacheConfig, "cache_size")


@dataclass
class ContactSheetConfig(_FetchesShards):
    root: Path | str  # a shard folder or its URL
    out: Path = setting(None, "Folder to write contact_sheet.png into (created if missing).", required=True)
    n: int = setting(16, "Number of images on the sheet (fewer if the store or shard holds fewer).",
                     limits=(1, math.inf), flag_name="-n")
    seed: int = setting(0, "Seed of the random sample of images.")
    shard: str | None = setting(None, "Sample from this shard only: its file name (shard-000003.h5) or its index.",
                                shown="all shards")
    columns: int | None = setting(None, "Images per row of the sheet.", shown="ceil(sqrt(n)), at most 8",
                                  limits=(1, math.inf))
    image_height: int = setting(256, "Display height of each image in pixels (at least 16; the width follows the "
                                "stored aspect ratio).", limits=(16, math.inf))
    attribute_lines: int = setting(4, "Attribute groups listed under each image, most confident first.",
                                   limits=(0, math.inf), flag_name="attributes")
    on_bad_row: str = same_as(ReaderSettings, "on_bad_row", note="A skipped image keeps its tile, greyed out.")
    cache_dir: str = same_as(CacheConfig, "cache_dir")
    cache_size: str = same_as(CacheConfig, "cache_size")
    alpha: float = 0.55  # opacity of the part colours over the greyscale image
