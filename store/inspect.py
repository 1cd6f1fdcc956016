"""`clasp inspect`: what a shard folder holds, in numbers a person can sanity-check.

The label statistics are accumulated chunk by chunk (one HDF5 storage chunk of
rows at a time, images never decoded), so a folder of any size is summarised in
constant memory. Each shard's sha256 is checked against the manifest first
(the whole file is read once), and every chunk's label values are checked
(`rowcheck.py`): a bad row stops the command, or with `on_bad_row="skip"` is
left out of the numbers and counted.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field

import numpy as np

from clasp.store.attributes import group_argmax
from clasp.store.manifest import SkippedInput
from clasp.common.percent import percent
from clasp.store.reader import ShardStore
from clasp.store.reader_config import InspectConfig
from clasp.store.rowcheck import BadDataError, BadRows, label_problems
from clasp.store.schema import LabelRows

LABEL_FIELDS = ("part_mask", "part_conf", "attr_logits")


@dataclass
class PartShare:
    name: str
    cells: int
    share: float  # of all label cells of all images
    mean_conf: float | None  # mean part_conf over the cells labelled with this part


@dataclass
class ValueShare:
    name: str
    images: int  # images whose top value in the group is this one
    share: float


@dataclass
class GroupDistribution:
    group: str
    values: list[ValueShare]


@dataclass
class SkipReason:
    reason: str  # the first clause of the recorded reasons
    count: int
    examples: list[str]


@dataclass
class StoreSummary:
    root: str
    clasp_version: str
    images: int
    shards: int
    total_bytes: int
    bytes_per_image: float | None
    clip_model: str
    clip_revision: str | None
    clip_size: list[int]
    dense_mode: str
    label_grid: list[int]
    image_store: dict
    vocab_sha256: str
    parts: list[PartShare]
    attributes: list[GroupDistribution]
    skipped: int
    skipped_by_reason: list[SkipReason]
    # Label cells whose part index is outside the vocabulary (0 in a healthy store).
    invalid_part_cells: int = 0
    # Rows left out because they failed a check (on_bad_row=skip); named in `notes`.
    bad_rows: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def inspect_store(config: InspectConfig) -> StoreSummary:
    """Summarise the shard folder at `config.root` (raises `StoreError` for a bad one)."""
    store = ShardStore.open(config.root, cache=config.cache)
    manifest = store.manifest
    vocab = manifest.vocab
    tally = _LabelTally.empty(vocab)
    bad = BadRows(config.on_bad_row)
    for entry in store.shards:
        with store.open_shard(entry, check_bytes=True) as shard:
            for chunk in _good_chunks(shard, vocab.num_parts, bad):
                tally.add(chunk, vocab)
    notes = [] if tally.images else ["the store holds no images"]
    if bad.note():
        notes.append(bad.note())
    total_bytes = sum(e.bytes for e in manifest.shards)
    return StoreSummary(
        root=str(config.root),
        clasp_version=manifest.clasp_version,
        images=tally.images,
        shards=len(manifest.shards),
        total_bytes=total_bytes,
        bytes_per_image=total_bytes / tally.images if tally.images else None,
        clip_model=manifest.clip.model,
        clip_revision=manifest.clip.revision,
        clip_size=list(manifest.clip.input_hw),
        dense_mode=manifest.clip.dense_mode,
        label_grid=list(manifest.label_grid),
        image_store={"hw": list(manifest.image_store.hw), "codec": manifest.image_store.codec,
                     "quality": manifest.image_store.quality},
        vocab_sha256=vocab.sha256,
        parts=tally.part_shares(vocab),
        attributes=tally.attribute_shares(vocab),
        skipped=len(manifest.skipped),
        skipped_by_reason=group_skipped(manifest.skipped, config.examples_per_reason),
        invalid_part_cells=tally.invalid,
        bad_rows=bad.count,
        notes=notes,
    )


@dataclass
class _LabelTally:
    """Label counts summed chunk by chunk: cells and confidence per part, top value per attribute group."""

    part_cells: np.ndarray  # (num_parts,) int64
    part_conf_sum: np.ndarray  # (num_parts,) float64
    group_counts: list[np.ndarray]  # per group, images whose top value is each value
    invalid: int = 0  # cells whose part index is outside the vocabulary
    images: int = 0

    @classmethod
    def empty(cls, vocab) -> "_LabelTally":
        return cls(np.zeros(vocab.num_parts, np.int64), np.zeros(vocab.num_parts, np.float64),
                   [np.zeros(len(g.values), np.int64) for g in vocab.attributes])

    def add(self, chunk: LabelRows, vocab) -> None:
        self.images += len(chunk)
        mask = chunk.part_mask.ravel()
        counts = np.bincount(mask, minlength=vocab.num_parts)
        conf = np.bincount(mask, weights=chunk.part_conf.ravel().astype(np.float64), minlength=vocab.num_parts)
        self.part_cells += counts[: vocab.num_parts]
        self.part_conf_sum += conf[: vocab.num_parts]
        self.invalid += int(counts[vocab.num_parts:].sum())
        for counter, top in zip(self.group_counts, group_argmax(chunk.attr_logits, vocab)):
            counter += np.bincount(top, minlength=len(counter))

    def part_shares(self, vocab) -> list[PartShare]:
        total_cells = max(int(self.part_cells.sum()) + self.invalid, 1)
        return [
            PartShare(name, int(n), int(n) / total_cells, float(self.part_conf_sum[i] / n) if n else None)
            for i, (name, n) in enumerate(zip(vocab.part_names, self.part_cells))
        ]

    def attribute_shares(self, vocab) -> list[GroupDistribution]:
        return [
            GroupDistribution(g.group, [ValueShare(v.name, int(n), int(n) / max(self.images, 1))
                                        for v, n in zip(g.values, counts)])
            for g, counts in zip(vocab.attributes, self.group_counts)
        ]


def _good_chunks(shard, num_parts: int, bad: BadRows):
    """The shard's label chunks with bad rows left out (or the first one raised), per `bad.on_bad_row`."""
    step = shard.chunk_rows
    for start in range(0, shard.rows, step):
        stop = min(start + step, shard.rows)
        try:
            chunk = shard.read(start, stop, LABEL_FIELDS)
        except BadDataError as exc:
            bad.bad(shard.path, exc.rows, exc.detail, count=stop - start)
            continue
        problems = label_problems(chunk, num_parts)
        if any(problems):
            for i, problem in enumerate(problems):
                if problem:
                    bad.bad(shard.path, f"row {start + i}", problem)
            keep = np.array([p is None for p in problems])
            chunk = LabelRows(image=[], key=[k for k, ok in zip(chunk.key, keep) if ok], path=[],
                              orig_hw=chunk.orig_hw, part_mask=chunk.part_mask[keep],
                              part_conf=chunk.part_conf[keep], attr_logits=chunk.attr_logits[keep])
        yield chunk


def reason_head(reason: str) -> str:
    """The first clause of a skip reason: 'cannot decode: broken data stream' -> 'cannot decode'.

    Reasons carry file-specific details after a colon or in parentheses; cutting
    them off lets identical problems be counted together.
    """
    head = re.split(r"[:;(]|, ", reason, maxsplit=1)[0].strip()
    return head or reason.strip() or "(no reason given)"


def group_skipped(skipped: list[SkippedInput], examples: int = 3) -> list[SkipReason]:
    """Skipped inputs counted by reason head, most frequent first, with a few example paths."""
    paths: dict[str, list[str]] = defaultdict(list)
    for s in skipped:
        paths[reason_head(s.reason)].append(s.path)
    counts = Counter({reason: len(p) for reason, p in paths.items()})
    return [SkipReason(reason, n, paths[reason][:examples]) for reason, n in counts.most_common()]


# --------------------------------------------------------------------------- text


def render_summary(s: StoreSummary) -> str:
    """The summary as aligned plain text for a terminal."""
    grid_h, grid_w = s.label_grid
    lines = [
        f"{s.root}  (written by clasp {s.clasp_version})",
        f"  images      {s.images:,} in {s.shards} shard{'s' if s.shards != 1 else ''}, "
        f"{_bytes(s.total_bytes)}" + (f" ({_bytes(s.bytes_per_image)} per image)" if s.bytes_per_image else ""),
        f"  CLIP        {s.clip_model}" + (f" @ {s.clip_revision}" if s.clip_revision else "")
        + f", input {s.clip_size[0]}x{s.clip_size[1]}, dense mode {s.dense_mode}",
        f"  label grid  {grid_h}x{grid_w} ({grid_h * grid_w} cells per image)",
        f"  stored      {s.image_store['hw'][0]}x{s.image_store['hw'][1]} "
        f"{s.image_store['codec']} q{s.image_store['quality']}",
        f"  vocabulary  sha256 {s.vocab_sha256[:16]}…, {len(s.parts)} parts, {len(s.attributes)} attribute groups, "
        f"{sum(len(g.values) for g in s.attributes)} values",
        "",
        "parts: share of label cells, mean confidence",
    ]
    name_w = max((len(p.name) for p in s.parts), default=0)
    for p in s.parts:
        conf = f"conf {p.mean_conf:.2f}" if p.mean_conf is not None else "conf -"
        lines.append(f"  {p.name:<{name_w}}  {percent(p.share, 5)}%  {_bar(p.share)}  {conf}")
    if s.invalid_part_cells:
        lines.append(f"  (outside the vocabulary: {s.invalid_part_cells:,} cells)")
    lines += ["", "attributes: share of images whose top value in the group is …"]
    group_w = max((len(g.group) for g in s.attributes), default=0)
    for g in s.attributes:
        ranked = sorted(g.values, key=lambda v: -v.images)
        values = "  ".join(f"{v.name} {percent(v.share)}%" for v in ranked)
        lines.append(f"  {g.group:<{group_w}}  {values}")
    lines += ["", f"skipped inputs: {s.skipped:,}"]
    reason_w = max((len(r.reason) for r in s.skipped_by_reason), default=0)
    for r in s.skipped_by_reason:
        lines.append(f"  {r.reason:<{reason_w}}  {r.count:>6,}  e.g. {', '.join(r.examples)}")
    for note in s.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def _bar(x: float, width: int = 20) -> str:
    n = int(round(x * width))
    return "#" * n + "." * (width - n)


def _bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")
