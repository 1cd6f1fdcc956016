"""`clasp synth` images/s against the bare cost of writing the same number of JPEG files.

The baseline (`jpeg_baseline.py`) encodes one fixed 256x128 image as JPEG (same
quality) and writes it N times: what any generator must pay at least. The ratio
synth / baseline says how much the drawing, the camera model and the ground
truth add (1.0 would be free). Both run in this process, alternately,
`--repeats` times; the best of each counts (the machine is shared). CPU seconds
are printed too. Target: synth >= 200 images/s (wall). No model runs here, so no
precision applies; the header still prints the machine and what
`--precision auto` resolves to.

    python benchmarks/synth_throughput.py [--identities 100] [--images-per-id 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from clasp.datasets.synth import SynthConfig, synthesize
from clasp.datasets.synth.writer import JPEG_QUALITY

sys.path.insert(0, str(Path(__file__).resolve().parent))
from jpeg_baseline import best_times, rate_lines, write_jpegs  # noqa: E402
from machine import print_header, verdict  # noqa: E402

TARGET = 200.0  # images/s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--identities", type=int, default=100)
    parser.add_argument("--images-per-id", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print_header(note="no model here: drawing and JPEG encoding are the same in every precision")
    n = args.identities * args.images_per_id
    config = {"identities": args.identities, "images_per_id": args.images_per_id, "cameras": 4, "seed": 0}
    best = best_times({
        "synth": lambda folder: synthesize(SynthConfig(folder, **config)),
        "baseline": lambda folder: write_jpegs(folder, n, JPEG_QUALITY),
    }, args.repeats)
    print("\n".join(rate_lines(best, n, "images")))
    synth_rate = n / best["synth"][0]
    print(f"synth: {synth_rate:.0f} images/s {verdict(synth_rate, TARGET, at_least=True)}")
    print(f"ratio synth / baseline (wall): {best['baseline'][0] / best['synth'][0]:.2f}")


if __name__ == "__main__":
    main()
