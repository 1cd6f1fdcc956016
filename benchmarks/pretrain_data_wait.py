"""Data-wait fraction of a real `clasp pretrain` run: time waiting for the next batch / step time.

Writes a store of person-like JPEGs (the loader benchmark's generator), runs
`clasp pretrain` as a user would (preset small, `--precision auto`, batch 32,
one DataLoader worker by default) and reads the run's metrics.jsonl, where
every step logs `data_wait` (the fraction of that step spent in `next(loader)` + the copy to the
device) and `images_per_s`. The first step also pays for starting the worker
and filling its first batch, so the fraction is reported with and without it.
Target: <= 10% from the second step on. A step in fp32 on a CPU takes tens of
seconds, so the default of 6 steps (5 measured) keeps the run within minutes.

    python benchmarks/pretrain_data_wait.py [--steps 6] [--batch-size 32] [--preset small] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loader import make_data  # noqa: E402  (the loader benchmark's store generator)
from machine import print_header, verdict  # noqa: E402

from clasp.hardware import DEFAULT_PRECISION, PRECISIONS, use_available_cores  # noqa: E402

TARGET = 0.10


def weighted_wait(rows: list[dict], batch_images: int) -> float:
    """sum(wait seconds) / sum(step seconds), each step's seconds from its images/s."""
    seconds = [batch_images / r["images_per_s"] for r in rows]
    waits = [r["data_wait"] * s for r, s in zip(rows, seconds)]
    return sum(waits) / sum(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--preset", default="small")
    parser.add_argument("--precision", default=DEFAULT_PRECISION, choices=PRECISIONS, help="passed to `clasp pretrain`")
    parser.add_argument("--num-workers", type=int, default=1)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    use_available_cores()  # what `clasp pretrain` will set in its own process
    choice = print_header(args.precision, note="`clasp pretrain` resolves it the same way and logs it")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="clasp-data-wait-"))
    _, shards, _ = make_data(workdir, args.images)
    out = workdir / "run"
    command = [sys.executable, "-m", "clasp.cli", "pretrain", "--shards", str(shards), "--out", str(out), "--force",
               "--preset", args.preset, "--precision", args.precision, "--batch-size", str(args.batch_size),
               "--num-workers", str(args.num_workers), "--steps", str(args.steps), "--log-every", "1",
               "--save-every", str(args.steps)]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - started
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    print(f"preset {args.preset}, {choice.precision}, batch {args.batch_size}, {args.num_workers} worker(s), "
          f"{len(rows)} steps in {wall:.0f} s (process wall time)")
    for r in rows:
        print(f"  step {r['step']}: {args.batch_size / r['images_per_s']:.2f} s, {r['images_per_s']:.1f} img/s, "
              f"data wait {r['data_wait']:.1%}")
    print(f"data-wait fraction, all steps:        {weighted_wait(rows, args.batch_size):.1%}")
    if len(rows) > 1:
        wait = weighted_wait(rows[1:], args.batch_size)
        target = verdict(wait, TARGET, at_least=False, shown=f"{TARGET:.0%}")
        print(f"data-wait fraction, from step 2 on:  {wait:.1%}  {target}")


if __name__ == "__main__":
    main()
