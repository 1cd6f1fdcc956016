"""The floor an image generator is measured against: writing N person-size JPEG files and nothing else.

`write_jpegs` encodes one fixed random PERSON_HW picture at the generator's
JPEG quality and writes it N times, so the only work left is what any writer
of N full-size pictures pays at least; this time over a generator's says what
its drawing adds (1.0 would be free).

`best_times` runs the generator and the floor into fresh folders alternately,
`repeats` times, and keeps each one's fastest round (its wall and CPU time): on
a shared machine the fastest is the least disturbed, and alternating exposes
both to the same load.

Benchmarks are run as `python benchmarks/NAME.py` and import this module as
`jpeg_baseline`, as they do `machine`.
"""

from __future__ import annotations

import io
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from clasp.common.person_size import PERSON_HW

Run = Callable[[Path], object]  # writes its output into the (new) folder it is given


def write_jpegs(folder: Path, n: int, quality: int) -> None:
    """Encode one fixed random person-size picture as JPEG at `quality` and write it `n` times into `folder`."""
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (*PERSON_HW, 3), dtype=np.uint8))
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=quality)
        (folder / f"{i:06d}.jpg").write_bytes(buf.getvalue())


def timed(run: Run, folder: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) that `run(folder)` took."""
    wall, cpu = time.perf_counter(), time.process_time()
    run(folder)
    return time.perf_counter() - wall, time.process_time() - cpu


def best_times(runs: dict[str, Run], repeats: int) -> dict[str, tuple[float, float]]:
    """Each run's (wall, CPU) seconds in its fastest of `repeats` rounds, the runs alternating within a round."""
    best = {name: (float("inf"), 0.0) for name in runs}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            for name, run in runs.items():
                folder = Path(tmp) / f"{name}{r}"
                best[name] = min(best[name], timed(run, folder))
                shutil.rmtree(folder)
    return best


def rate_lines(best: dict[str, tuple[float, float]], n: int, unit: str) -> list[str]:
    """One line per run: `n` items per wall second and per CPU second (e.g. `unit` = "pairs")."""
    return [f"{name:>8}: {n / wall:7.0f} {unit}/s wall, {n / max(cpu, 1e-9):7.0f} {unit}/s per CPU second"
            for name, (wall, cpu) in best.items()]
