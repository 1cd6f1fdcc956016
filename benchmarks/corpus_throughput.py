"""`clasp synth-corpus` pairs/s against the bare cost of writing the same number of JPEG files.

The baseline encodes one fixed 256x128 image as JPEG (the corpus quality) and
writes it N times: what any writer of N full-size pictures pays at least. The
corpus draws a person for every picture and writes smaller crops for regions, so
the ratio corpus / baseline says what drawing, isolating and captioning cost
beyond that (1.0 would be free). Both run in this process, alternately,
`--repeats` times; the best of each counts (the machine is shared). The target
is at least 200 pairs/s.

    python benchmarks/corpus_throughput.py [--pairs 3000] [--repeats 3]
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

from clasp.evaluation.synth.corpus import JPEG_QUALITY, CorpusConfig, write_corpus

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import print_header  # noqa: E402


def baseline(folder: Path, n: int) -> tuple[float, float]:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 128, 3), dtype=np.uint8))
    folder.mkdir(parents=True, exist_ok=True)
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(n):
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=JPEG_QUALITY)
        (folder / f"{i:06d}.jpg").write_bytes(buf.getvalue())
    return time.perf_counter() - wall, time.process_time() - cpu


def corpus(folder: Path, n: int) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    write_corpus(CorpusConfig(folder, pairs=n, seed=0))
    return time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print_header("auto", note="no model here: drawing and JPEG encoding are the same in every precision")
    best = {"corpus": (float("inf"), 0.0), "baseline": (float("inf"), 0.0)}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for name, run in (("corpus", corpus), ("baseline", baseline)):
                folder = Path(tmp) / f"{name}{r}"
                best[name] = min(best[name], run(folder, args.pairs))
                shutil.rmtree(folder)
    for name, (wall, cpu) in best.items():
        print(f"{name:>8}: {args.pairs / wall:7.0f} pairs/s wall, {args.pairs / max(cpu, 1e-9):7.0f} pairs/s per CPU second")
    print(f"ratio corpus / baseline (wall): {best['baseline'][0] / best['corpus'][0]:.2f}")


if __name__ == "__main__":
    main()
