"""`clasp synth` images/s against the bare cost of writing the same number of JPEG files.

The baseline encodes one fixed 256x128 image as JPEG (same quality) and writes
it N times: what any generator must pay at least. The ratio synth / baseline
says how much the drawing, the camera model and the ground truth add (1.0 would
be free). Both run in this process, alternately, `--repeats` times; the best of
each counts (the machine is shared). CPU seconds are printed too. Target:
synth >= 200 images/s (wall). No model runs here, so no precision applies; the
header still prints the machine and what `--precision auto` resolves to.

    python benchmarks/synth_throughput.py [--identities 100] [--images-per-id 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from clasp.evaluation.synth import SynthConfig, synthesize
from clasp.evaluation.synth.writer import JPEG_QUALITY

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import print_header, verdict  # noqa: E402

TARGET = 200.0  # images/s


def baseline(folder: Path, n: int) -> tuple[float, float]:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 128, 3), dtype=np.uint8))
    folder.mkdir(parents=True, exist_ok=True)
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(n):
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=JPEG_QUALITY)
        (folder / f"{i:06d}.jpg").write_bytes(buf.getvalue())
    return time.perf_counter() - wall, time.process_time() - cpu


def synth(folder: Path, identities: int, per_id: int) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    synthesize(SynthConfig(folder, identities=identities, images_per_id=per_id, cameras=4, seed=0))
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--identities", type=int, default=100)
    parser.add_argument("--images-per-id", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print_header("auto", note="no model here: drawing and JPEG encoding are the same in every precision")
    n = args.identities * args.images_per_id
    best = {"synth": (float("inf"), 0.0), "baseline": (float("inf"), 0.0)}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for name in ("synth", "baseline"):
                folder = Path(tmp) / f"{name}{r}"
                wall, cpu = (synth(folder, args.identities, args.images_per_id) if name == "synth"
                             else baseline(folder, n))
                best[name] = min(best[name], (wall, cpu))
                shutil.rmtree(folder)
    for name, (wall, cpu) in best.items():
        print(f"{name:>8}: {n / wall:7.0f} images/s wall, {n / max(cpu, 1e-9):7.0f} images/s per CPU second")
    synth_rate = n / best["synth"][0]
    print(f"synth: {synth_rate:.0f} images/s {verdict(synth_rate, TARGET, at_least=True)}")
    print(f"ratio synth / baseline (wall): {best['baseline'][0] / best['synth'][0]:.2f}")


if __name__ == "__main__":
    main()
