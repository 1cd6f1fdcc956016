"""PC-MoE dispatch: the loop of per-expert GEMMs against the batched one (stacked experts, one baddbmm per layer).

    python benchmarks/moe_dispatch.py                       # presets small and base, fp32 and bf16 autocast
    python benchmarks/moe_dispatch.py --device cuda
    python benchmarks/moe_dispatch.py --presets small --batch-size 2 --iters 1 --precisions fp32   # a quick check

One PC-MoE layer at a preset's shapes (its width, `expert_hidden`, 6 experts,
top-2 by default, as `clasp pretrain` builds it) runs forward + backward on the
tokens of one multi-crop step's calls: the global crops (256x128: 2 + 128
tokens a row) and the local crops (128x64: 2 + 32 tokens a row), `--batch-size`
images each. Both dispatches see the same layer, input and routing, timed
alternately in ABBA order (median of `--iters` after `--warmup`); the router is
random, so groups are near even (the case least favourable to the loop's small
calls and most favourable to the batched padding). Each iteration draws new
tokens, so the experts' row counts change as they do from one training step to
the next. Per preset and precision it prints both times and the ratio batched /
loop: below 1, the batched dispatch is faster, and `moe.DISPATCH` should become
"batched" on that device. A third timing, the loop with its slices only aligned
(`PCMoE.bucket_rows = False`), gives the ratio aligned / bucketed: what the
bucketed row counts save where new shapes cost a kernel build (bf16 on CPU).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

from clasp.hardware import use_available_cores
from clasp.pretraining.moe import PCMoE
from clasp.pretraining.vit import ViTConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import print_header  # noqa: E402

GLOBAL_TOKENS, LOCAL_TOKENS = 2 + 16 * 8, 2 + 8 * 4  # CLS and prompt token, then the patch grid


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["small", "base"], choices=["tiny", "small", "base"])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"],
                   help="bf16: under torch.autocast, as a bf16 run computes")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=32, help="images of each crop size")
    p.add_argument("--global-crops", type=int, default=2)
    p.add_argument("--local-crops", type=int, default=6)
    p.add_argument("--experts", type=int, default=6)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=6)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: the free-core rule)")
    return p.parse_args(argv)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step(moe: PCMoE, calls: list[tuple[torch.Tensor, torch.Tensor]], autocast) -> None:
    """Forward + backward of every call (one per crop size) and the balance loss, as a step runs them."""
    moe.reset_stats()
    with autocast():
        loss = sum(moe(x, prompt).float().square().mean() for x, prompt in calls) + moe.stats()[0]
    loss.backward()


# name: (PCMoE.dispatch, PCMoE.bucket_rows)
VARIANTS = {"loop": ("loop", None), "batched": ("batched", None), "aligned": ("loop", False)}


def timed(moe: PCMoE, variant: str, calls, autocast, device: torch.device) -> float:
    moe.dispatch, moe.bucket_rows = VARIANTS[variant]
    moe.zero_grad(set_to_none=True)
    synchronize(device)
    start = time.perf_counter()
    step(moe, calls, autocast)
    synchronize(device)
    return time.perf_counter() - start


def step_calls(args: argparse.Namespace, dim: int, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(tokens, prompts) of one step's calls, freshly drawn: a new routing, new row counts."""
    return [(torch.randn(args.batch_size * crops, tokens, dim, device=device),
             torch.randn(args.batch_size * crops, dim, device=device))
            for crops, tokens in ((args.global_crops, GLOBAL_TOKENS), (args.local_crops, LOCAL_TOKENS)) if crops]


def compare(args: argparse.Namespace, preset: str, precision: str, device: torch.device) -> dict[str, float]:
    """Median seconds of each of `VARIANTS` for one forward + backward of a step's calls."""
    vit = ViTConfig.preset(preset, experts=args.experts, top_k=args.top_k)
    torch.manual_seed(0)
    moe = PCMoE(vit.dim, vit.expert_hidden, args.experts, args.top_k).to(device)

    def autocast():
        return (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
                else contextlib.nullcontext())

    times = {variant: [] for variant in VARIANTS}
    for i in range(args.warmup + args.iters):  # every variant on the same calls, in ABBA order
        calls = step_calls(args, vit.dim, device)
        for variant in (list(VARIANTS) if i % 2 == 0 else list(VARIANTS)[::-1]):
            seconds = timed(moe, variant, calls, autocast, device)
            if i >= args.warmup:
                times[variant].append(seconds)
    medians = {variant: statistics.median(t) for variant, t in times.items()}
    print(f"  {preset} (dim {vit.dim}, expert hidden {vit.expert_hidden}, {args.experts} experts, top-{args.top_k}) "
          f"{precision}: " + ", ".join(f"{variant} {seconds * 1e3:.2f} ms" for variant, seconds in medians.items()),
          flush=True)
    return medians


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads) if args.threads else use_available_cores()
    print_header("fp32", device=args.device, note="bf16 rows run under autocast")
    print(f"one PC-MoE layer, forward + backward of {args.global_crops}x{args.batch_size} global "
          f"and {args.local_crops}x{args.batch_size} local crops, median of {args.iters}:", flush=True)
    for preset in args.presets:
        for precision in args.precisions:
            t = compare(args, preset, precision, device)
            print(f"ratio batched / loop, {preset} {precision}: {t['batched'] / t['loop']:.3f} "
                  f"({'batched' if t['batched'] < t['loop'] else 'loop'} is faster); "
                  f"ratio aligned / bucketed rows: {t['aligned'] / t['loop']:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
