"""Throughput of `clasp label` against the bare CLIP vision forward, in one run.

    python benchmarks/label_throughput.py                    # ViT-B/16, 256 images, batch 32, bf16
    python benchmarks/label_throughput.py --preset tiny      # a quick check of the script itself

On the same JPEG files (person crops of 256x128 to 400x200 written by this
script), it measures

- end to end: `run_labeling` in this process (files on disk -> finished,
  hashed shards: read, decode, resize, preprocess, CLIP, part masks and
  attribute logits, JPEG encode at store size, HDF5 write), images/s;
- baseline: `ClipLabeler.vision_forward` on already-prepared batches of the same
  images at the same size, batch size and precision, images/s;

and prints both and their ratio (target >= 0.90: the pipeline keeps the model
busy). The CLIP is built from the preset's config with random weights, offline;
the model is loaded once before timing, as a labeling run loads it once. With
`--profile` it also prints the cost of each stage done one after another.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clasp.labeling.decode import decode_input
from clasp.labeling.discover import discover_images
from clasp.labeling.run import LabelConfig, run_labeling
from clasp.labeling.shard_worker import LabelerSpec, build_clip_labeler, cached_labeler
from clasp.labeling.tiny_clip import clip_from_config
from clasp.store import LabelRows, Vocabulary, write_shard

OUT = Path(__file__).resolve().parent / "out"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", default="ViT-B/16", choices=["ViT-B/16", "tiny"], help="CLIP architecture (random weights)")
    p.add_argument("--images", type=int, default=256, help="number of JPEG files to label")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--clip-size", default="448x224", help="CLIP input HEIGHTxWIDTH")
    p.add_argument("--workers", type=int, default=0, help="as `clasp label --workers` (0: in this process)")
    p.add_argument("--repeats", type=int, default=1, help="measure both this many times (ABBA order); report medians")
    p.add_argument("--profile", action="store_true", help="also time each stage on its own")
    p.add_argument("--work", type=Path, default=OUT, help="folder for the model, the images and the shards")
    return p.parse_args(argv)


def write_person_crops(folder: Path, n: int, seed: int = 0) -> None:
    """Smooth colour blobs plus sensor noise: JPEG sizes and decode costs like real crops."""
    if folder.exists() and len(list(folder.glob("*.jpg"))) == n:
        return
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.jpg"):
        old.unlink()
    rng = np.random.default_rng(seed)
    for i in range(n):
        h = int(rng.integers(256, 401))
        w = h // 2
        coarse = Image.fromarray(rng.integers(0, 255, (8, 4, 3), dtype=np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
        pixels = np.asarray(coarse, dtype=np.int16) + rng.normal(0, 6, (h, w, 3)).astype(np.int16)
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(folder / f"{i:05d}.jpg", quality=90)


def prepare_model(work: Path, preset: str) -> Path:
    folder = work / f"clip-{preset.replace('/', '-')}"
    if not (folder / "config.json").exists():
        clip_from_config(folder, preset, seed=0) if preset != "tiny" else clip_from_config(folder, "tiny", seed=0)
    return folder


def bare_forward(labeler, batches: list[torch.Tensor]) -> float:
    start = time.perf_counter()
    for pixels in batches:
        labeler.vision_forward(pixels)
    return time.perf_counter() - start


def end_to_end(config: LabelConfig) -> tuple[float, int]:
    summary = run_labeling(config)
    return summary.seconds, summary.labeled_now


def profile_stages(labeler, images: Path, spec: LabelerSpec, batch_size: int, store_hw=(256, 128)) -> dict[str, float]:
    """Seconds per image for each stage, run one after another (no overlap)."""
    files = [f.path for f in discover_images(images)]
    t = {"read+decode+resize+JPEG encode": 0.0, "preprocess": 0.0, "label (CLIP + labels)": 0.0, "h5 write": 0.0}
    rows = []
    for start in range(0, len(files), batch_size):
        t0 = time.perf_counter()
        decoded = [decode_input(images, f, store_hw, spec.clip_size) for f in files[start:start + batch_size]]
        t1 = time.perf_counter()
        pixels = labeler.preprocess([d.label_image for d in decoded])
        t2 = time.perf_counter()
        mask, conf, logits = labeler.label(pixels)
        t3 = time.perf_counter()
        t["read+decode+resize+JPEG encode"] += t1 - t0
        t["preprocess"] += t2 - t1
        t["label (CLIP + labels)"] += t3 - t2
        rows.append(LabelRows([d.store_jpeg for d in decoded], [d.key for d in decoded], [d.path for d in decoded],
                              np.array([d.orig_hw for d in decoded], np.uint16), mask, conf, logits))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_shard(Path(tmp) / "shard-000000.h5", LabelRows.concat(rows), vocab_sha256=spec.vocab.sha256,
                    clip_model="bench", label_grid=tuple(labeler.label_grid), num_attributes=spec.vocab.num_attributes)
        t["h5 write"] = time.perf_counter() - t0
    return {k: v / len(files) for k, v in t.items()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    clip_size = tuple(int(x) for x in args.clip_size.lower().split("x"))
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    images = work / f"images-{args.images}"
    print(f"preparing {args.images} JPEG person crops and a {args.preset} CLIP (random weights) in {work}", flush=True)
    write_person_crops(images, args.images)
    model = prepare_model(work, args.preset)

    vocab = Vocabulary.default()
    spec = LabelerSpec(str(model), None, clip_size, "maskclip", args.precision, "cpu", vocab)
    labeler = cached_labeler(build_clip_labeler, spec)  # the run below reuses this process's labeler
    files = [f.path for f in discover_images(images)]
    decoded = [decode_input(images, f, (256, 128), clip_size) for f in files]
    batches = [labeler.preprocess([d.label_image for d in decoded[i:i + args.batch_size]])
               for i in range(0, len(decoded), args.batch_size)]
    del decoded
    labeler.vision_forward(batches[0])  # warm-up: kernel selection, allocator
    labeler.label(batches[0])
    print(f"torch threads {torch.get_num_threads()}, batch {args.batch_size}, {args.precision}, "
          f"clip size {clip_size[0]}x{clip_size[1]}, workers {args.workers}", flush=True)

    bare_rates, e2e_rates = [], []
    for r in range(args.repeats):
        # ABBA order: on a shared machine, load that drifts over time biases neither side.
        order = ("baseline", "end to end") if r % 2 == 0 else ("end to end", "baseline")
        for which in order:
            if which == "baseline":
                bare_rates.append(len(files) / bare_forward(labeler, batches))
                continue
            out = work / f"shards-{r}"
            if out.exists():
                for p in out.iterdir():
                    p.unlink()
            config = LabelConfig(images=images, out=out, clip_model=str(model), clip_size=clip_size,
                                 batch_size=args.batch_size, precision=args.precision, workers=args.workers,
                                 progress=False)
            seconds, labeled = end_to_end(config)
            assert labeled == len(files), f"labeled {labeled} of {len(files)}"
            e2e_rates.append(labeled / seconds)
        print(f"  repeat {r + 1} ({order[0]} first): baseline {bare_rates[-1]:.2f} images/s, "
              f"end to end {e2e_rates[-1]:.2f} images/s", flush=True)

    bare, e2e = statistics.median(bare_rates), statistics.median(e2e_rates)
    print(f"baseline (bare CLIP vision forward, prepared batches): {bare:.2f} images/s")
    print(f"end to end (clasp label, files -> shards):              {e2e:.2f} images/s")
    print(f"ratio end-to-end / baseline: {e2e / bare:.3f} (target >= 0.90)")
    if args.profile:
        print("stages one after another, ms per image:")
        for name, seconds in profile_stages(labeler, images, spec, args.batch_size).items():
            print(f"  {name:32s} {seconds * 1000:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
