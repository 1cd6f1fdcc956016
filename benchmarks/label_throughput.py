"""Throughput of `clasp label` against the bare CLIP vision forward, in one run.

    python benchmarks/label_throughput.py                    # ViT-B/16, 96 images, batch 32, --precision auto
    python benchmarks/label_throughput.py --preset tiny      # a quick check of the script itself
    python benchmarks/label_throughput.py --device cuda --precision bf16 --batch-size 256 --images 2048

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

The FLOPs of the CLIP vision forward for one image are counted with
`FlopCounterMode`; times the images/s of each side they give its achieved
GFLOP/s, printed as a fraction of the GEMM peak at CLIP's shapes
(`machine_peak.py`) in the same precision: how close the bare forward comes to
what the machine can multiply, and how much of that labeling keeps.
`--precision auto` resolves as `clasp label` does (fp32 on a CPU without native
bf16, where bf16 autocast would be several times slower). On a GPU (`--device
cuda`) the bare forward is synchronised before its clock stops, and both sides
print their MFU against the card's datasheet dense bf16 peak. The run labels
whole batches, so end-to-end fixed costs (the manifest, the shard's hash) are
part of the ratio; with few images they weigh more, which can only lower it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clasp.hardware import DEFAULT_PRECISION, PRECISIONS, use_available_cores
from clasp.labeling.decode import decode_input
from clasp.labeling.discover import discover_images
from clasp.labeling.run import LabelConfig, run_labeling
from clasp.labeling.config import ClipLabelerConfig
from clasp.labeling.shard_worker import build_clip_labeler, cached_labeler
from clasp.labeling.tiny_clip import clip_from_config
from clasp.store import LabelRows, Vocabulary, write_shard
from clasp.common.person_size import PERSON_HW

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import (  # noqa: E402
    count_flops, efficiency_line, mfu_line, op_shares, op_shares_line, print_header, synchronize, verdict,
)
from machine_peak import clip_shapes, peak_gflops  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
IMAGES = 96
TARGET = 0.90


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", default="ViT-B/16", choices=["ViT-B/16", "tiny"], help="CLIP architecture (random weights)")
    p.add_argument("--images", type=int, default=IMAGES, help="number of JPEG files to label")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--precision", default=DEFAULT_PRECISION, choices=PRECISIONS, help="resolved as `clasp label` does")
    p.add_argument("--clip-size", default="448x224", help="CLIP input HEIGHTxWIDTH")
    p.add_argument("--workers", type=int, default=0, help="as `clasp label --workers` (0: in this process)")
    p.add_argument("--repeats", type=int, default=1, help="measure both this many times (ABBA order); report medians")
    p.add_argument("--profile", action="store_true",
                   help="also time each stage on its own, and print the top ops of one labeling batch by time")
    p.add_argument("--work", type=Path, default=OUT, help="folder for the model, the images and the shards")
    p.add_argument("--device", default="cpu", help="as `clasp label --device` (cpu, cuda, cuda:N)")
    p.add_argument("--threads", type=int, default=None, help="as `clasp label --threads` (default: the free cores)")
    p.add_argument("--no-peak", action="store_true", help="skip measuring the GEMM peak at CLIP's shapes")
    p.add_argument("--compile", action="store_true",
                   help="as `clasp label --compile on`: both sides' CLIP forwards through torch.compile from the "
                        "first batch (without it both run eagerly: --compile off)")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend (eager: dynamo's tracing alone, a quick check of --compile)")
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
    device = str(labeler.device)
    synchronize(device)
    start = time.perf_counter()
    for pixels in batches:
        labeler.vision_forward(pixels)
    synchronize(device)
    return time.perf_counter() - start


def end_to_end(config: LabelConfig) -> tuple[float, int]:
    summary = run_labeling(config)
    return summary.seconds, summary.labeled_now


def profile_stages(labeler, images: Path, spec: ClipLabelerConfig, batch_size: int, store_hw=PERSON_HW) -> dict[str, float]:
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


def prepared_batches(labeler, images: Path, clip_size: tuple[int, int], batch_size: int) -> list[torch.Tensor]:
    """The images decoded, resized and preprocessed as the run does it: the baseline's input."""
    files = [f.path for f in discover_images(images)]
    decoded = [decode_input(images, f, PERSON_HW, clip_size) for f in files]
    return [labeler.preprocess([d.label_image for d in decoded[i:i + batch_size]])
            for i in range(0, len(decoded), batch_size)]


def labeling_peak(labeler, precision: str, batch_size: int, clip_size: tuple[int, int]) -> float:
    """The GEMM peak at this CLIP's shapes: batch x tokens rows, its width and MLP width."""
    vision = labeler.model.config.vision_config
    tokens = 1 + (clip_size[0] // vision.patch_size) * (clip_size[1] // vision.patch_size)
    return peak_gflops(precision, clip_shapes(batch_size, tokens, vision.hidden_size, vision.intermediate_size),
                       device=str(labeler.device))


def measure(args: argparse.Namespace, labeler, batches: list[torch.Tensor], config_for) -> tuple[list, list]:
    """images/s of the bare forward and of `run_labeling`, `--repeats` times in ABBA order."""
    images = sum(len(b) for b in batches)
    bare_rates, e2e_rates = [], []
    for r in range(args.repeats):
        # ABBA order: on a shared machine, load that drifts over time biases neither side.
        order = ("baseline", "end to end") if r % 2 == 0 else ("end to end", "baseline")
        for which in order:
            if which == "baseline":
                bare_rates.append(images / bare_forward(labeler, batches))
                continue
            out = args.work / f"shards-{r}"
            if out.exists():
                for p in out.iterdir():
                    p.unlink()
            seconds, labeled = end_to_end(config_for(out))
            assert labeled == images, f"labeled {labeled} of {images}"
            e2e_rates.append(labeled / seconds)
        print(f"  repeat {r + 1} ({order[0]} first): baseline {bare_rates[-1]:.2f} images/s, "
              f"end to end {e2e_rates[-1]:.2f} images/s", flush=True)
    return bare_rates, e2e_rates


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    use_available_cores(threads=args.threads)  # as `clasp label` in this process does
    choice = print_header(args.precision, device=args.device)
    clip_size = tuple(int(x) for x in args.clip_size.lower().split("x"))
    args.work.mkdir(parents=True, exist_ok=True)
    images = args.work / f"images-{args.images}"
    print(f"preparing {args.images} JPEG person crops and a {args.preset} CLIP (random weights) in {args.work}",
          flush=True)
    write_person_crops(images, args.images)
    model = prepare_model(args.work, args.preset)

    if args.compile_backend != "inductor":
        import clasp.labeling.labeler as labeler_module

        labeler_module.COMPILE_OPTIONS = {"backend": args.compile_backend}
    compile_choice = "on" if args.compile else "off"
    spec = ClipLabelerConfig(str(model), None, clip_size, "maskclip", choice.precision, args.device,
                             Vocabulary.default(), compile=compile_choice)
    labeler = cached_labeler(build_clip_labeler, spec)  # the run below reuses this process's labeler
    batches = prepared_batches(labeler, images, clip_size, args.batch_size)
    for pixels in batches[:1] + batches[-1:]:  # warm-up: kernel selection, allocator, compiling (the last batch
        labeler.vision_forward(pixels)  # may be smaller: its own graph)
        labeler.label(pixels)
    one_image = batches[0][:1].to(labeler.device, labeler.weights_dtype)
    flops_per_image = count_flops(lambda: labeler.model.vision_model(pixel_values=one_image,
                                                                      interpolate_pos_encoding=True))
    peak = float("nan") if args.no_peak else labeling_peak(labeler, choice.precision, args.batch_size, clip_size)
    print(f"torch threads {torch.get_num_threads()}, batch {args.batch_size}, {choice.precision}, "
          f"clip size {clip_size[0]}x{clip_size[1]}, workers {args.workers}, compile "
          f"{'on' if args.compile else 'off'}; CLIP vision forward "
          f"{flops_per_image / 1e9:.1f} GFLOP per image, {choice.precision} GEMM peak {peak:.1f} GFLOP/s", flush=True)

    def config_for(out: Path) -> LabelConfig:
        return LabelConfig(images=images, out=out, clip_model=str(model), clip_size=clip_size,
                           batch_size=args.batch_size, precision=choice.precision, workers=args.workers,
                           device=args.device, threads=args.threads, compile=compile_choice, progress=False)

    bare_rates, e2e_rates = measure(args, labeler, batches, config_for)
    bare, e2e = statistics.median(bare_rates), statistics.median(e2e_rates)
    print(f"baseline (bare CLIP vision forward, prepared batches): {bare:.2f} images/s")
    print(f"end to end (clasp label, files -> shards):              {e2e:.2f} images/s")
    print(efficiency_line("bare CLIP vision forward per image", flops_per_image, 1 / bare, peak, choice.precision))
    print(efficiency_line("end to end per image (same CLIP FLOPs)", flops_per_image, 1 / e2e, peak,
                          choice.precision))
    print(mfu_line("bare CLIP vision forward", flops_per_image * bare, 1.0, args.device))
    print(mfu_line("end to end", flops_per_image * e2e, 1.0, args.device))
    print(f"ratio end-to-end / baseline: {e2e / bare:.3f} {verdict(e2e / bare, TARGET, at_least=True)}")
    if args.profile:
        print("stages one after another, ms per image:")
        for name, seconds in profile_stages(labeler, images, spec, args.batch_size).items():
            print(f"  {name:32s} {seconds * 1000:8.2f}")
        print(op_shares_line("labeling one batch (vision forward, dense features, labels)",
                             op_shares(lambda: labeler.label(batches[0]))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
