"""`make reproduce`: synthetic world -> label -> pretrain -> export -> eval, with baselines and a report.

Environment: CLIP_MODEL, IMAGES, STEPS, PRESET, SEED, PRETRAIN_WORLD_SEED (see clasp.reproduce.pipeline).
Output: reproduce/out/results.md (+ charts as PNG, or SVG with `--plot-format svg`; logs, JSON).
`--ladder` adds CLASP on ground-truth labels with 25, 50 and 75 % of their values corrupted
(`make reproduce-ladder`, into reproduce/ladder).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from clasp.evaluation.plots import PLOT_FORMATS
from clasp.reproduce.pipeline import LADDER, ReproduceConfig, StageFailed, run_reproduce


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out",
                        help="output folder (default: reproduce/out)")
    parser.add_argument("--identities", type=int, default=None, help="identities of the synthetic world")
    parser.add_argument("--images-per-id", type=int, default=None, help="images per identity")
    parser.add_argument("--ladder", action="store_true",
                        help=f"also pre-train on ground truth with noise {', '.join(f'{n:g}' for n in LADDER)}")
    parser.add_argument("--plot-format", default="png", help=f"format of the charts: {' or '.join(PLOT_FORMATS)} "
                        "(default png)")
    args = parser.parse_args()
    overrides = {"out": args.out, "ladder": LADDER if args.ladder else (), "plot_format": args.plot_format}
    if args.identities:
        overrides["identities"] = args.identities
    if args.images_per_id:
        overrides["images_per_id"] = args.images_per_id
    try:
        config = ReproduceConfig.from_env(**overrides)
    except ValueError as exc:  # a setting given here or in the environment
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        run_reproduce(config)
    except (StageFailed, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
