"""`clasp synth-corpus` pairs/s against the bare cost of writing the same number of JPEG files.

The baseline (`jpeg_baseline.py`) encodes one fixed 256x128 image as JPEG (the
corpus quality) and writes it N times: what any writer of N full-size pictures
pays at least. The corpus draws a person for every picture and writes smaller
crops for regions, so the ratio corpus / baseline says what drawing, isolating
and captioning cost beyond that (1.0 would be free). Both run in this process,
alternately, `--repeats` times; the best of each counts (the machine is shared).
The target is at least 200 pairs/s.

    python benchmarks/corpus_throughput.py [--pairs 3000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from clasp.datasets.synth.corpus import JPEG_QUALITY, CorpusConfig, write_corpus

sys.path.insert(0, str(Path(__file__).resolve().parent))
from jpeg_baseline import best_times, rate_lines, write_jpegs  # noqa: E402
from machine import print_header  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print_header(note="no model here: drawing and JPEG encoding are the same in every precision")
    best = best_times({
        "corpus": lambda folder: write_corpus(CorpusConfig(folder, pairs=args.pairs, seed=0)),
        "baseline": lambda folder: write_jpegs(folder, args.pairs, JPEG_QUALITY),
    }, args.repeats)
    print("\n".join(rate_lines(best, args.pairs, "pairs")))
    print(f"ratio corpus / baseline (wall): {best['baseline'][0] / best['corpus'][0]:.2f}")


if __name__ == "__main__":
    main()
