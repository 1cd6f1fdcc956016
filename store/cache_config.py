"""The cache settings of URL stores, declared once for `clasp pretrain`, `verify`, `inspect` and `show`.

Light on purpose (no h5py, no fsspec): the command line imports it to build its options.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from clasp.settings import setting

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.I)


@dataclass
class CacheConfig:
    """Where shards fetched from a URL store are kept, and how much of them."""

    cache_dir: str = setting("", "Folder for shards fetched from a URL store (one subfolder per URL).",
                             shown="~/.cache/clasp/shards ($XDG_CACHE_HOME)", metavar="DIR", resumable=True)
    cache_size: str = setting("50G", "Bound of --cache-dir (all URLs together): bytes, or with a K, M, G or T "
                              "suffix (powers of 1024); least recently used shards not in use are removed.",
                              metavar="SIZE", resumable=True)

    @property
    def folder(self) -> Path:
        if self.cache_dir:
            return Path(self.cache_dir).expanduser()
        base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
        return Path(base) / "clasp" / "shards"

    @property
    def limit(self) -> int:
        return parse_size(self.cache_size)


def parse_size(text: str) -> int:
    """'500M' -> 524288000; a plain number is bytes. ValueError naming `cache_size` otherwise."""
    match = _SIZE.match(str(text))
    if not match or float(match.group(1)) * _UNITS[match.group(2).upper()] < 1:
        raise ValueError(f"cache_size must be a size such as 500M, 20G or 1T (or a number of bytes), got {text!r}")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])
