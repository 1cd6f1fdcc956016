"""`clasp truth-labels`: a label store whose labels are a synthetic world's ground truth, optionally corrupted.

A control, not a method: no real data set has true part masks and attributes
for every pre-training image. Pre-training on it tells what labels of a known
quality buy downstream, so the CLIP's labels can be placed on a ladder (noise
0 is the upper bound; `make reproduce-ladder` adds 0.25, 0.5 and 0.75).

Each row is written as `clasp label` would write it for the same image, with
the labels replaced:
- `image` is the world's JPEG as it lies on disk (already at the store size),
  `key` the sha1 of those bytes, so `clasp eval-labels` matches rows to the truth;
- `part_mask`: the truth mask brought to `grid` by majority per cell
  (`clasp.datasets.label_grid`), `part_conf` 1 everywhere;
- `attr_logits`: +TRUTH_LOGIT for each group's true value, -TRUTH_LOGIT for the
  others (softmax 0.9993 on the true value of a two-value group at T = 1).

Noise P: every cell independently, and every (row, group) independently, is
replaced with probability P by a value drawn uniformly from the *other* values,
so the share of wrong cells and wrong group values is P itself (within
sampling error). The corruption is a pure function of (seed, row order).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clasp.evaluation.config import TruthStoreConfig  # the settings of `clasp truth-labels`
from clasp.evaluation.errors import EvalInputError
from clasp.datasets.label_grid import majority_downsample
from clasp.datasets.synth.writer import JPEG_QUALITY
from clasp.datasets.truth import SynthTruth
from clasp.store import ClipInfo, LabelRows, Manifest, Vocabulary, record_shard, shard_name, write_shard_for
from clasp.store.manifest import StoredImageFormat
from clasp.common.person_size import PERSON_HW

TRUTH_LOGIT = 4.0
TRUTH_MODEL_PREFIX = "synthetic ground truth"  # the manifest's clip.model starts with it
NOISE_STREAM = 7  # random stream of the corruption, apart from every stream of `clasp synth`
READ_ROWS = 256  # truth masks read and written per block


@dataclass
class TruthStoreSummary:
    rows: int
    shards: int
    part_cells_changed: float  # share of cells whose part differs from the truth
    attribute_values_changed: float  # share of (row, group) values that differ from the truth
    seconds: float


def truth_model_name(world: Path, noise: float) -> str:
    """The manifest's `clip.model` of a truth store: says what made the labels."""
    return f"{TRUTH_MODEL_PREFIX} of {Path(world).resolve().name} (noise {noise:g})"


def corrupt(values: np.ndarray, classes: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    """Replace each entry with probability `noise` by one of the `classes - 1` other values, uniformly."""
    hit = rng.random(values.shape) < noise
    shift = rng.integers(1, classes, size=values.shape) if classes > 1 else np.zeros(values.shape, np.int64)
    return np.where(hit, (values.astype(np.int64) + shift) % classes, values).astype(values.dtype)


def truth_logits(values: np.ndarray, vocab: Vocabulary) -> np.ndarray:
    """(N, G) value index per group -> (N, A) logits: +TRUTH_LOGIT on the value, -TRUTH_LOGIT elsewhere."""
    logits = np.full((len(values), vocab.num_attributes), -TRUTH_LOGIT, np.float32)
    rows = np.arange(len(values))
    for g, (_, columns) in enumerate(vocab.group_slices()):
        logits[rows, columns.start + values[:, g]] = TRUTH_LOGIT
    return logits


def check_config(config: TruthStoreConfig) -> None:
    if not 0.0 <= config.noise <= 1.0:
        raise EvalInputError(f"--noise must be in [0, 1], got {config.noise}")
    h, w = config.grid
    if not (1 <= h <= PERSON_HW[0] and 1 <= w <= PERSON_HW[1]):
        raise EvalInputError(f"--grid {h}x{w} must lie within the image's {PERSON_HW[0]}x{PERSON_HW[1]} pixels")
    if config.shard_size < 1:
        raise EvalInputError(f"--shard-size must be at least 1, got {config.shard_size}")
    if (Path(config.out) / "manifest.json").exists() or any(Path(config.out).glob("shard-*")):
        raise EvalInputError(f"{config.out}: already holds a store; choose an empty folder")


def write_truth_store(config: TruthStoreConfig, progress=None) -> TruthStoreSummary:
    """Write the store; `progress(rows_done)` after each block. Returns what was written and how much was changed."""
    check_config(config)
    start = time.perf_counter()
    truth, vocab = SynthTruth.load(config.world), Vocabulary.default()
    if truth.part_names != vocab.part_names:
        raise EvalInputError(f"{truth.parts_file}: parts {truth.part_names} are not the vocabulary's {vocab.part_names}")
    values = truth.attribute_indices(vocab)
    rng = np.random.default_rng([config.seed, NOISE_STREAM])
    manifest = Manifest(ClipInfo(truth_model_name(config.world, config.noise), input_hw=PERSON_HW), vocab,
                        tuple(config.grid), StoredImageFormat(quality=JPEG_QUALITY),
                        shard_size=config.shard_size)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    changed_cells = changed_values = 0
    for index, first in enumerate(range(0, len(truth), config.shard_size)):
        block = np.arange(first, min(first + config.shard_size, len(truth)))
        parts: list[LabelRows] = []
        for rows in np.array_split(block, max(1, -(-len(block) // READ_ROWS))):
            masks = majority_downsample(truth.read_masks(rows), config.grid, vocab.num_parts)
            noisy_masks = corrupt(masks, vocab.num_parts, config.noise, rng)
            noisy_values = np.stack([corrupt(values[rows, g], len(group.values), config.noise, rng)
                                     for g, group in enumerate(vocab.attributes)], axis=1)
            changed_cells += int((noisy_masks != masks).sum())
            changed_values += int((noisy_values != values[rows]).sum())
            parts.append(_rows(truth, rows, noisy_masks, truth_logits(noisy_values, vocab)))
            if progress is not None:
                progress(int(rows[-1]) + 1)
        record_shard(manifest, out, write_shard_for(manifest, out, shard_name(index), LabelRows.concat(parts)))
    if not len(truth):
        manifest.save(out)
    cells = len(truth) * config.grid[0] * config.grid[1]
    return TruthStoreSummary(rows=len(truth), shards=len(manifest.shards),
                             part_cells_changed=changed_cells / max(cells, 1),
                             attribute_values_changed=changed_values / max(values.size, 1),
                             seconds=time.perf_counter() - start)


def _rows(truth: SynthTruth, rows: np.ndarray, masks: np.ndarray, logits: np.ndarray) -> LabelRows:
    images = []
    for i in rows:
        path = truth.images_dir / truth.paths[i]
        try:
            images.append(path.read_bytes())
        except OSError as exc:
            raise EvalInputError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return LabelRows(image=images, key=[hashlib.sha1(b).hexdigest() for b in images],
                     path=[truth.paths[i] for i in rows],
                     orig_hw=np.tile(np.array(PERSON_HW, np.uint16), (len(rows), 1)),
                     part_mask=masks, part_conf=np.ones(masks.shape, np.float16),
                     attr_logits=logits.astype(np.float16))

