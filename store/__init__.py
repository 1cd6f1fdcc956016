"""The label store: the only contract between `clasp label` and `clasp pretrain`.

`schema.py` spells out a shard, `vocabulary.py` the labels' meaning, `manifest.py` the folder; `writer.py`
writes shards that a crash cannot leave half-accepted, `reader.py` reads them (checked by `rowcheck.py`,
`attributes.py`), `verify.py`, `inspect.py` and `contact_sheet.py` are `clasp verify`, `inspect` and `show`
(settings in `reader_config.py`); `remote.py`, `fetch.py`, `cache.py` (`cache_config.py`) read a store at a URL.

The public names below are imported on first use (PEP 562), so that light
modules of the store (the schema, the manifest's choices) cost the CLI no
h5py import.
"""

from __future__ import annotations

from importlib import import_module

# public name -> the module of this package that defines it
_HOMES = {
    "NotAStoreError": "errors", "StoreError": "errors",
    "ClipInfo": "manifest", "LabeledWith": "manifest", "Manifest": "manifest", "ShardEntry": "manifest",
    "SkippedInput": "manifest", "StoredImageFormat": "manifest",
    "ShardFile": "reader", "ShardStore": "reader",
    "FORMAT_VERSION": "schema", "LabelRows": "schema", "shard_name": "schema",
    "VerifyReport": "verify", "verify_store": "verify",
    "Vocabulary": "vocabulary",
    "record_shard": "writer", "write_shard": "writer", "write_shard_for": "writer",
}

__all__ = sorted(_HOMES)


def __getattr__(name: str):
    """Import the module that defines `name` and keep the name here."""
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{_HOMES[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
