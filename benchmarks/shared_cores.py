"""`clasp pretrain` and `clasp label` on cores another job keeps busy: images/s idle and beside 1 and 2 busy
processes, with the thread rule of `clasp.hardware` (threads from the free cores) and with the rule it
replaced (threads from the allowed cores, forced here with OMP_NUM_THREADS = the allowed cores). Each
figure is the best of two runs, one before and one after the other rule's, so that the order favours neither.

Targets: beside one busy process, at least 40 % of the idle figure (a fair share is 50 %), and idle
unchanged (at least 97 % of the old rule's idle figure). The busy processes are plain Python loops, one per
busy core, started before the command and killed after it. Run it on an otherwise idle machine.

    python benchmarks/shared_cores.py [--steps 8] [--images 1536] [--only pretrain|label] [--workdir DIR]

`clasp label`'s figure is its summary line's, which counts loading the CLIP too: give it enough images
that labeling dominates.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loader import make_data  # noqa: E402  (the loader benchmark's store generator)
from machine import print_header, verdict  # noqa: E402

from clasp.hardware import DEFAULT_PRECISION, available_cores  # noqa: E402

LOADED_TARGET, IDLE_TARGET = 0.40, 0.97
SPIN = "while True: pass"


@contextmanager
def busy_processes(count: int) -> Iterator[None]:
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(count)]
    try:
        yield
    finally:
        for spin in spinners:
            spin.kill()
            spin.wait()


def env_for(rule: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    if rule == "old":
        env["OMP_NUM_THREADS"] = str(available_cores())
    return env | {"HF_HUB_OFFLINE": "1"}


def pretrain_images_per_s(shards: Path, out: Path, steps: int, rule: str) -> float:
    """Median images/s of the steps after the first of a tiny `clasp pretrain` (batch 16, 2+2 crops)."""
    subprocess.run([sys.executable, "-m", "clasp.cli", "pretrain", "--shards", str(shards), "--out", str(out),
                    "--force", "--preset", "tiny", "--precision", DEFAULT_PRECISION, "--batch-size", "16", "--global-crops", "2",
                    "--local-crops", "2", "--num-workers", "1", "--steps", str(steps), "--log-every", "1",
                    "--save-every", str(steps)], check=True, env=env_for(rule), capture_output=True)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(r["images_per_s"] for r in rows if "images_per_s" in r and r.get("step", 0) > 1)


def label_images_per_s(images: Path, clip: Path, out: Path, rule: str) -> float:
    """images/s of `clasp label` with the offline tiny CLIP at 224x112, from its summary line."""
    result = subprocess.run([sys.executable, "-m", "clasp.cli", "label", "--images", str(images), "--out", str(out),
                             "--force", "--clip-model", str(clip), "--clip-size", "224x112", "--precision", DEFAULT_PRECISION],
                            check=True, env=env_for(rule), capture_output=True, text=True)
    return float(re.search(r"([\d.]+) images/s", result.stdout).group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--images", type=int, default=1536)
    parser.add_argument("--only", choices=("pretrain", "label"), default=None)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    print_header(note=f"{available_cores()} cores allowed; busy processes are Python loops")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="clasp-shared-cores-"))
    images, shards, _ = make_data(workdir, args.images)
    clip = workdir / "clip"
    subprocess.run([sys.executable, "-m", "clasp.cli", "tiny-clip", str(clip)], check=True, capture_output=True)
    commands = {"pretrain": lambda rule, n: pretrain_images_per_s(shards, workdir / f"run-{rule}-{n}", args.steps, rule),
                "label": lambda rule, n: label_images_per_s(images, clip, workdir / f"shards-{rule}-{n}", rule)}
    for name, measure in commands.items():
        if args.only not in (None, name):
            continue
        figures = {}
        for busy in (0, 1, 2):
            for rule in ("old", "new", "new", "old"):  # twice each, in both orders: the best of two
                with busy_processes(busy):
                    figure = measure(rule, busy)
                figures[rule, busy] = max(figure, figures.get((rule, busy), 0.0))
            for rule in ("old", "new"):
                print(f"{name:8s} {busy} busy  {rule} rule  {figures[rule, busy]:7.2f} images/s", flush=True)
        idle = figures["new", 0] / figures["old", 0]
        loaded = figures["new", 1] / figures["new", 0]
        print(f"{name}: idle new/old {idle:.3f} {verdict(idle, IDLE_TARGET, True)}; beside one busy process "
              f"{loaded:.3f} of idle {verdict(loaded, LOADED_TARGET, True)} (old rule "
              f"{figures['old', 1] / figures['old', 0]:.3f}); beside two {figures['new', 2] / figures['new', 0]:.3f}")


if __name__ == "__main__":
    main()
