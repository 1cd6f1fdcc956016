"""The benchmarks run: each on tiny sizes, for its arguments and its output lines (never for figures)."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def benchmark_module(name: str) -> ModuleType:
    """A script of benchmarks/ imported as a module; the scripts import each other by name, so their folder
    goes on the path (once)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(name)


def run_benchmark(*args: str, timeout: int = 120) -> str:
    done = subprocess.run([sys.executable, *args], cwd=BENCHMARKS, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


def test_moe_dispatch_prints_loop_batched_and_their_ratio_per_preset_and_precision() -> None:
    out = run_benchmark("moe_dispatch.py", "--presets", "tiny", "--batch-size", "1", "--global-crops", "1",
                        "--local-crops", "1", "--warmup", "0", "--iters", "1", "--threads", "1")
    assert "ratio batched / loop, tiny fp32:" in out and "ratio batched / loop, tiny bf16:" in out
    assert "loop" in out and "batched" in out and "ms" in out
    assert "ratio aligned / bucketed rows:" in out


def gpu_sh(tmp_path: Path, *args: str, timeout: int = 300) -> tuple[subprocess.CompletedProcess, str]:
    out = tmp_path / "figures.txt"
    env = {**__import__("os").environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(BENCHMARKS / "gpu.sh"), "--out", str(out), *args], capture_output=True,
                          text=True, timeout=timeout, env=env)
    return done, out.read_text() if out.exists() else ""


def test_gpu_sh_parses_and_refuses_unknown_arguments(tmp_path: Path) -> None:
    assert subprocess.run(["bash", "-n", str(BENCHMARKS / "gpu.sh")]).returncode == 0
    done, _ = gpu_sh(tmp_path, "--frobnicate")
    assert done.returncode == 2 and "unknown argument --frobnicate" in done.stderr
    done, _ = gpu_sh(tmp_path, "--only", "label,nothing")
    assert done.returncode == 2 and "unknown step nothing" in done.stderr
    done, _ = gpu_sh(tmp_path, "--help")
    assert done.returncode == 0 and "--dry-run" in done.stdout


def test_gpu_sh_dry_run_of_the_loader_and_moe_steps_writes_their_figures(tmp_path: Path) -> None:
    done, figures = gpu_sh(tmp_path, "--dry-run", "--only", "loader,moe")
    assert done.returncode == 0, figures[-3000:] + done.stderr[-2000:]
    assert "## loader, one worker:" in figures and "## MoE dispatch:" in figures
    assert "loader, one worker: shards per worker:" in figures and "MoE dispatch: ratio batched / loop" in figures
    assert "steps failed: 0" in figures


@pytest.mark.slow
def test_gpu_sh_dry_run_runs_every_step(tmp_path: Path) -> None:
    done, figures = gpu_sh(tmp_path, "--dry-run", timeout=600)
    assert done.returncode == 0, figures[-3000:] + done.stderr[-2000:]
    for step in ("label eager", "pretrain plain AdamW", "pretrain fused AdamW, TF32",
                 "pretrain fused AdamW, TF32, batched MoE", "loader, one worker",
                 "MoE dispatch", "label compiled", "pretrain compiled, fused AdamW, TF32"):
        assert f"## {step}:" in figures, step
    assert "pretrain fused AdamW, TF32: time ratio CLASP / DINO" in figures
    assert "pretrain plain AdamW: control (experts unrouted):" in figures
    assert "pretrain plain AdamW: routing beyond its arithmetic:" in figures
    assert "label eager: ratio end-to-end / baseline" in figures
    assert "loader workers to keep up with the fastest CLASP step:" in figures and "steps failed: 0" in figures


def test_the_card_peaks_are_found_by_the_name_torch_reports() -> None:
    card_peak_tflops = benchmark_module("machine").card_peak_tflops

    assert card_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert card_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert card_peak_tflops("NVIDIA H200") == 989.0
    assert card_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert card_peak_tflops("NVIDIA L4") == 121.0 and card_peak_tflops("NVIDIA L40S") == 362.0
    assert card_peak_tflops("NVIDIA GeForce RTX 4090") == 165.0
    assert card_peak_tflops("Tesla T4") is None


def test_flops_of_onednn_fused_linears_and_cpu_attention_are_counted() -> None:
    """The labeler's fused linears and CPU attention count as the plain ops they replace would."""
    import torch.nn.functional as F

    count_flops = benchmark_module("machine").count_flops

    x, w, b = torch.randn(2, 10, 16), torch.randn(32, 16), torch.randn(32)
    assert count_flops(lambda: torch.ops.mkldnn._linear_pointwise(x, w, b, "swish", [], "")) == 2 * 20 * 32 * 16
    assert count_flops(lambda: F.linear(x, w, b)) == 2 * 20 * 32 * 16
    q = torch.randn(1, 2, 8, 4)
    assert count_flops(lambda: F.scaled_dot_product_attention(q, q, q)) == 4 * 2 * 8 * 8 * 4


def test_op_shares_rank_the_ops_by_the_time_they_took() -> None:
    machine = benchmark_module("machine")
    op_shares, op_shares_line = machine.op_shares, machine.op_shares_line

    a, small = torch.randn(400, 400), torch.randn(10)

    def work() -> None:
        for _ in range(3):
            a @ a  # ~0.4 GFLOP: far longer than the adds
        small + small

    shares = op_shares(work, top=8)
    assert [name for name, _ in shares] == ["mm", "add"]
    assert shares[0][1] > shares[1][1] and sum(share for _, share in shares) == pytest.approx(1.0)
    assert op_shares_line("work", shares).startswith("work, top 2 ops by time: mm ")


def test_the_fixed_experts_control_runs_the_first_top_k_experts_on_every_token() -> None:
    fix_experts = benchmark_module("pretrain_step").fix_experts

    from clasp.pretraining.model import ClaspModel, ModelConfig
    from clasp.store import Vocabulary

    config = ModelConfig.build("tiny", Vocabulary.default(), depth=2, dim=32, heads=2, moe_layers=2, experts=3,
                               top_k=2, dino_out_dim=16, dino_hidden_dim=16, dino_bottleneck_dim=16)
    model = ClaspModel(config)
    assert fix_experts(model) == 4  # two MoE layers in the student, two in the teacher
    layer = model.student["backbone"].moe_blocks[0].moe
    x, prompt = torch.randn(2, 5, 32), torch.randn(2, 32)
    expected = layer.experts[0](x) + layer.experts[1](x)
    assert torch.equal(layer(x, prompt), expected)
    assert not torch.equal(layer.experts[2](x), layer.experts[0](x))  # the third expert is left out


def test_pretrain_step_reports_the_control_against_dino_and_what_routing_costs() -> None:
    out = run_benchmark("pretrain_step.py", "--preset", "tiny", "--depth", "2", "--dim", "64", "--heads", "2",
                        "--dino-out-dim", "64", "--dino-hidden-dim", "64", "--moe-layers", "1", "--experts", "2",
                        "--top-k", "1", "--batch-size", "2", "--global-crops", "1", "--local-crops", "1",
                        "--precision", "fp32", "--warmup", "1", "--max-warmup", "1", "--iters", "2", "--no-peak",
                        "--threads", "1", "--fixed-experts")
    assert "warm-up steps: CLASP 1, DINO 1, control 1" in out
    assert out.count(" control ") >= 2  # each timed step lists the control beside CLASP and DINO
    found = re.search(r"control \(experts unrouted\): ([\d.]+) s wall; time ratio to DINO ([\d.]+) "
                      r"at a FLOP ratio of ([\d.]+)", out)
    assert found and all(float(value) > 0 for value in found.groups())
    assert float(found.group(3)) < float(re.search(r"FLOP ratio CLASP / DINO: ([\d.]+)", out).group(1))
    assert re.search(r"routing beyond its arithmetic: -?[\d.]+ s a CLASP step \(-?\d+ %\)", out)
