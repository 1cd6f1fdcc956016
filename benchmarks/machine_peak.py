"""The machine's GEMM rate (GFLOP/s) in fp32 and bf16 at the matrix shapes our models multiply.

    python benchmarks/machine_peak.py                        # every shape set, fp32 and bf16
    python benchmarks/machine_peak.py --sets clip-B/16 --precisions fp32

Nearly all the arithmetic of labeling and pre-training is dense matrix products
(`F.linear`): tokens x in-features times in-features x out-features. How fast
this machine does those, at our shapes and in each precision, is the ceiling
any of our compute benchmarks can reach; `peak_gflops(precision, shapes)` gives
the best rate over a set of shapes in a few seconds, and the compute benchmarks
print their achieved GFLOP/s as a fraction of it at their own precision. The
table below also shows what bf16 costs where the CPU only emulates it.

Shapes (rows = tokens of one step or batch; 2·rows·in·out FLOPs each):

- `clip-B/16`: CLIP ViT-B/16 labeling at 448x224, batch 32: 32 x 393 tokens,
  768->2304 (qkv), 768->3072 and 3072->768 (MLP);
- `vit-tiny`, `vit-small`: the pre-training ViT (dim 192 / 384), batch 32 with
  2 global crops (129 tokens) and 6 local crops (33 tokens): dim->3dim (qkv),
  dim->4dim, 4dim->dim (MLP), and the MoE experts (width 2dim, each expert
  sees top-k/experts = 1/3 of the tokens);
- `dino-head`: the DINO head on 32 x 8 crop tokens of ViT-small: 384->2048,
  2048->2048, 2048->256, 256->8192 prototypes.

Each product runs once untimed, then `--repeats` timed samples of at least
50 ms each (a short product runs several times in a sample); the best sample
counts (the machine may be shared: the best is the least disturbed). Rows are
capped at `--max-rows` (default 2048): past a few thousand rows a GEMM's rate
no longer changes, and the cap keeps the emulated-bf16 runs short.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import choose_precision, header_lines  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MAX_ROWS = 2048
REPEATS = 5
MIN_SAMPLE_S = 0.05
CLIP_TOKENS = 1 + (448 // 16) * (224 // 16)  # 393
GLOBAL_TOKENS, LOCAL_TOKENS = 1 + (256 // 16) * (128 // 16), 1 + (128 // 16) * (64 // 16)  # 129, 33


@dataclass(frozen=True)
class Gemm:
    """One `F.linear`: (rows, k) inputs times a (n, k) weight."""

    name: str
    rows: int
    k: int
    n: int

    @property
    def flops(self) -> int:
        return 2 * self.rows * self.k * self.n


def clip_shapes(batch: int = 32, tokens: int = CLIP_TOKENS, width: int = 768, mlp: int = 3072) -> tuple[Gemm, ...]:
    rows = batch * tokens
    return (Gemm("qkv", rows, width, 3 * width), Gemm("mlp in", rows, width, mlp), Gemm("mlp out", rows, mlp, width))


def vit_shapes(dim: int, batch: int = 32, global_crops: int = 2, local_crops: int = 6, experts: int = 6,
               top_k: int = 2, expert_width: int | None = None) -> tuple[Gemm, ...]:
    """The ViT's products for global and local crops; MoE experts are dim -> expert_width (4·dim/top_k) -> dim."""
    shapes = []
    expert_width = expert_width or 4 * dim // top_k
    for crop, rows in (("global", batch * global_crops * GLOBAL_TOKENS), ("local", batch * local_crops * LOCAL_TOKENS)):
        expert_rows = rows * top_k // experts
        shapes += [Gemm(f"{crop} qkv", rows, dim, 3 * dim), Gemm(f"{crop} mlp in", rows, dim, 4 * dim),
                   Gemm(f"{crop} mlp out", rows, 4 * dim, dim),
                   Gemm(f"{crop} expert in", expert_rows, dim, expert_width),
                   Gemm(f"{crop} expert out", expert_rows, expert_width, dim)]
    return tuple(shapes)


def dino_head_shapes(dim: int = 384, rows: int = 32 * 8, hidden: int = 2048, bottleneck: int = 256,
                     prototypes: int = 8192) -> tuple[Gemm, ...]:
    return (Gemm("head in", rows, dim, hidden), Gemm("head hidden", rows, hidden, hidden),
            Gemm("head bottleneck", rows, hidden, bottleneck), Gemm("prototypes", rows, bottleneck, prototypes))


SHAPE_SETS: dict[str, tuple[Gemm, ...]] = {
    "clip-B/16": clip_shapes(),
    "vit-tiny": vit_shapes(192),
    "vit-small": vit_shapes(384),
    "dino-head": dino_head_shapes(),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_gflops(shape: Gemm, precision: str, repeats: int = REPEATS, max_rows: int = MAX_ROWS,
                device: str = "cpu") -> float:
    """Best GFLOP/s of `F.linear` at `shape` (rows capped at `max_rows`, 0 = no cap) over `repeats` samples.

    A sample repeats the product until it lasts at least `MIN_SAMPLE_S`, so that
    a product of a few milliseconds is not measured by one timer reading.
    """
    rows = min(shape.rows, max_rows) if max_rows else shape.rows
    dev, dtype = torch.device(device), DTYPES[precision]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, shape.k, generator=g).to(dev, dtype)
    w = (torch.randn(shape.n, shape.k, generator=g) * shape.k ** -0.5).to(dev, dtype)
    with torch.inference_mode():
        first = _seconds_per_call(x, w, 1, dev)  # also the warm-up: kernel selection, packing buffers
        calls = max(1, math.ceil(MIN_SAMPLE_S / first))
        best = min(_seconds_per_call(x, w, calls, dev) for _ in range(repeats))
    return 2 * rows * shape.k * shape.n / best / 1e9


def _seconds_per_call(x: torch.Tensor, w: torch.Tensor, calls: int, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    for _ in range(calls):
        F.linear(x, w)
    _sync(device)
    return (time.perf_counter() - start) / calls


def peak_gflops(precision: str, shapes: tuple[Gemm, ...] = SHAPE_SETS["clip-B/16"], repeats: int = REPEATS,
                max_rows: int = MAX_ROWS, device: str = "cpu") -> float:
    """The best GEMM rate over `shapes` in `precision`: the ceiling for a model made of these products."""
    return max(gemm_gflops(s, precision, repeats, max_rows, device) for s in shapes)


def print_table(sets: list[str], precisions: list[str], repeats: int, max_rows: int, device: str) -> None:
    print(f"rows: tokens of the whole step or batch; each product is timed on at most {max_rows or 'all'} of them")
    print(f"{'set':10s} {'product':18s} {'rows x in -> out':>22s} " + " ".join(f"{p + ' GFLOP/s':>13s}"
                                                                           for p in precisions), flush=True)
    best = {p: 0.0 for p in precisions}
    for name in sets:
        for shape in SHAPE_SETS[name]:
            rates = {p: gemm_gflops(shape, p, repeats, max_rows, device) for p in precisions}
            for p, rate in rates.items():
                best[p] = max(best[p], rate)
            dims = f"{shape.rows} x {shape.k} -> {shape.n}"
            print(f"{name:10s} {shape.name:18s} {dims:>22s} " + " ".join(f"{rates[p]:13.1f}" for p in precisions),
                  flush=True)
    print("peak over these shapes: " + ", ".join(f"{p} {rate:.1f} GFLOP/s" for p, rate in best.items()))
    if "fp32" in best and "bf16" in best:
        print(f"bf16 / fp32 at the peak: {best['bf16'] / best['fp32']:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--sets", nargs="+", default=list(SHAPE_SETS), choices=list(SHAPE_SETS))
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    parser.add_argument("--repeats", type=int, default=REPEATS, help="timed samples per product; the best counts")
    parser.add_argument("--max-rows", type=int, default=MAX_ROWS, help="cap on the rows of a product (0: none)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the cores available)")
    args = parser.parse_args(argv)
    from clasp.hardware import DEFAULT_PRECISION, use_available_cores

    torch.set_num_threads(args.threads) if args.threads else use_available_cores()
    for line in header_lines(choose_precision(DEFAULT_PRECISION, args.device)):
        print(line, flush=True)
    if args.device == "cpu" and "fp16" in args.precisions:
        print("note: fp16 on a CPU has no fast path (`clasp` refuses it there); measured for reference only")
    print_table(args.sets, args.precisions, args.repeats, args.max_rows, args.device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
