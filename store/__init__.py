"""The label store: the only contract between `clasp label` and `clasp pretrain`."""

from clasp.store.errors import NotAStoreError, StoreError
from clasp.store.manifest import ClipInfo, ImageStore, LabeledWith, Manifest, ShardEntry, SkippedInput
from clasp.store.reader import ShardFile, ShardStore
from clasp.store.schema import FORMAT_VERSION, LabelRows, shard_name
from clasp.store.verify import VerifyReport, verify_store
from clasp.store.vocabulary import Vocabulary
from clasp.store.writer import record_shard, write_shard, write_shard_for

__all__ = [
    "FORMAT_VERSION", "ClipInfo", "ImageStore", "LabelRows", "LabeledWith", "Manifest", "NotAStoreError", "ShardEntry", "ShardFile",
    "ShardStore", "SkippedInput", "StoreError", "VerifyReport", "Vocabulary", "record_shard",
    "shard_name", "verify_store", "write_shard", "write_shard_for",
]
