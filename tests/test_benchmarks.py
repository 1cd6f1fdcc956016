"""The benchmarks run: each on tiny sizes, for its arguments and its output lines (never for figures)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_benchmark(*args: str, timeout: int = 120) -> str:
    done = subprocess.run([sys.executable, *args], cwd=BENCHMARKS, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


def test_moe_dispatch_prints_loop_batched_and_their_ratio_per_preset_and_precision() -> None:
    out = run_benchmark("moe_dispatch.py", "--presets", "tiny", "--batch-size", "1", "--global-crops", "1",
                        "--local-crops", "1", "--warmup", "0", "--iters", "1", "--threads", "1")
    assert "ratio batched / loop, tiny fp32:" in out and "ratio batched / loop, tiny bf16:" in out
    assert "loop" in out and "batched" in out and "ms" in out
