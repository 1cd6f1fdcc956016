"""The part/attribute vocabulary that both stages must agree on.

The vocabulary fixes what `part_mask` values and `attr_logits` columns mean, so
its hash is written into the manifest and every shard; a reader refuses shards
whose hash differs.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from clasp.store.errors import StoreError

DEFAULT_VOCAB_FILE = "default_vocab.json"


@dataclass(frozen=True)
class Part:
    name: str
    prompts: tuple[str, ...]


@dataclass(frozen=True)
class AttributeValue:
    name: str
    prompts: tuple[str, ...]


@dataclass(frozen=True)
class AttributeGroup:
    group: str
    values: tuple[AttributeValue, ...]


@dataclass(frozen=True)
class Vocabulary:
    """Parts (index 0 is background) and grouped, mutually exclusive attributes."""

    parts: tuple[Part, ...]
    attributes: tuple[AttributeGroup, ...]

    @property
    def part_names(self) -> list[str]:
        return [p.name for p in self.parts]

    @property
    def num_parts(self) -> int:
        return len(self.parts)

    @property
    def num_attributes(self) -> int:
        """Number of `attr_logits` columns: one per value of every group."""
        return sum(len(g.values) for g in self.attributes)

    @property
    def attribute_columns(self) -> list[tuple[str, str]]:
        """(group, value) for each `attr_logits` column, in manifest order."""
        return [(g.group, v.name) for g in self.attributes for v in g.values]

    def group_slices(self) -> list[tuple[str, slice]]:
        """The `attr_logits` columns of each group; a softmax is taken within one."""
        out, start = [], 0
        for g in self.attributes:
            out.append((g.group, slice(start, start + len(g.values))))
            start += len(g.values)
        return out

    def to_dict(self) -> dict:
        return {
            "parts": [{"name": p.name, "prompts": list(p.prompts)} for p in self.parts],
            "attributes": [
                {"group": g.group, "values": [{"name": v.name, "prompts": list(v.prompts)} for v in g.values]}
                for g in self.attributes
            ],
        }

    @property
    def sha256(self) -> str:
        """Hash of the canonical JSON of parts and attributes (prompts included)."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    @classmethod
    def from_dict(cls, data: dict, source: str | Path = "<vocabulary>") -> "Vocabulary":
        try:
            parts = tuple(Part(str(p["name"]), _prompts(p["prompts"], f"part {p['name']!r}", source))
                          for p in data["parts"])
            groups = tuple(
                AttributeGroup(
                    str(g["group"]),
                    tuple(AttributeValue(str(v["name"]), _prompts(v["prompts"], f"attribute {g['group']}={v['name']}",
                                                                  source))
                          for v in g["values"]),
                )
                for g in data["attributes"]
            )
        except (KeyError, TypeError) as exc:
            raise StoreError(source, f"not a vocabulary (missing or malformed field {exc})") from None
        vocab = cls(parts, groups)
        vocab.validate(source)
        return vocab

    def validate(self, source: str | Path = "<vocabulary>") -> None:
        if len(self.parts) < 2:
            raise StoreError(source, "a vocabulary needs background plus at least one part")
        if len(self.parts) > 255:
            raise StoreError(source, "at most 255 parts fit the uint8 part_mask")
        if not self.attributes:
            raise StoreError(source, "a vocabulary needs at least one attribute group")
        names = [p.name for p in self.parts]
        if len(set(names)) != len(names):
            raise StoreError(source, "part names must be unique")
        groups = [g.group for g in self.attributes]
        if len(set(groups)) != len(groups):
            raise StoreError(source, "attribute group names must be unique")
        for p in self.parts:
            if not p.prompts:
                raise StoreError(source, f"part {p.name!r} has no prompts")
        for g in self.attributes:
            if len(g.values) < 2:
                raise StoreError(source, f"attribute group {g.group!r} needs at least two values")
            values = [v.name for v in g.values]
            if len(set(values)) != len(values):
                twice = sorted({n for n in values if values.count(n) > 1})
                raise StoreError(source, f"attribute group {g.group!r} lists the value {twice[0]!r} more than once")
            for v in g.values:
                if not v.prompts:
                    raise StoreError(source, f"attribute {g.group}={v.name} has no prompts")

    @classmethod
    def load(cls, path: str | Path) -> "Vocabulary":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StoreError(path, "vocabulary file not found") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise StoreError(path, f"vocabulary is not valid JSON ({exc})") from None
        except OSError as exc:
            raise StoreError(path, f"cannot read vocabulary ({exc.strerror or exc})") from None
        if not isinstance(data, dict):
            raise StoreError(path, "not a vocabulary (expected a JSON object with parts and attributes)")
        return cls.from_dict(data, path)

    @classmethod
    def default(cls) -> "Vocabulary":
        """The shipped vocabulary: 6 parts, 11 attribute groups."""
        text = resources.files("clasp.store").joinpath(DEFAULT_VOCAB_FILE).read_text(encoding="utf-8")
        return cls.from_dict(json.loads(text), DEFAULT_VOCAB_FILE)


def _prompts(value, owner: str, source: str | Path) -> tuple[str, ...]:
    """A JSON list of non-empty strings. A bare string would otherwise become one prompt per character,
    and an empty prompt embeds CLIP's text of nothing."""
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        raise StoreError(source, f"{owner}: prompts must be a list of strings, got {type(value).__name__} "
                                 f"{str(value)[:40]!r}")
    empty = [i for i, p in enumerate(value) if not p.strip()]
    if empty:
        raise StoreError(source, f"{owner}: prompt {empty[0]} is empty")
    return tuple(value)
