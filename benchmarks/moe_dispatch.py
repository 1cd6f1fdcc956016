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
calls and most favourable to the batched padding). Per preset and precision it
prints both times and the ratio batched / loop: below 1, the batched dispatch
is faster, and `moe.DISPATCH` should become "batched" on that device.
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


def timed(moe: PCMoE, dispatch: str, calls, autocast, device: torch.device) -> float:
    moe.dispatch = dispatch
    moe.zero_grad(set_to_none=True)
    synchronize(device)
    start = time.perf_counter()
    step(moe, calls, autocast)
    synchronize(device)
    return time.perf_counter() - start


def compare(args: argparse.Namespace, preset: str, precision: str, device: torch.device) -> tuple[float, float]:
    """Median seconds of (loop, batched) for one forward + backward of a step's calls."""
    vit = ViTConfig.preset(preset, experts=args.experts, top_k=args.top_k)
    torch.manual_seed(0)
    moe = PCMoE(vit.dim, vit.expert_hidden, args.experts, args.top_k).to(device)
    calls = [(torch.randn(args.batch_size * crops, tokens, vit.dim, device=device),
              torch.randn(args.batch_size * crops, vit.dim, device=device))
             for crops, tokens in ((args.global_crops, GLOBAL_TOKENS), (args.local_crops, LOCAL_TOKENS)) if crops]

    def autocast():
        return (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
                else contextlib.nullcontext())

    for _ in range(args.warmup):
        timed(moe, "loop", calls, autocast, device)
        timed(moe, "batched", calls, autocast, device)
    times = {"loop": [], "batched": []}
    for i in range(args.iters):  # ABBA order: load drift on a shared machine biases neither side
        for dispatch in (("loop", "batched") if i % 2 == 0 else ("batched", "loop")):
            times[dispatch].append(timed(moe, dispatch, calls, autocast, device))
    print(f"  {preset} (dim {vit.dim}, expert hidden {vit.expert_hidden}, {args.experts} experts, top-{args.top_k}) "
          f"{precision}: loop {statistics.median(times['loop']) * 1e3:.2f} ms, "
          f"batched {statistics.median(times['batched']) * 1e3:.2f} ms", flush=True)
    return statistics.median(times["loop"]), statistics.median(times["batched"])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads) if args.threads else use_available_cores()
    print_header("fp32", device=args.device, note="bf16 rows run under autocast")
    print(f"one PC-MoE layer, forward + backward of {args.global_crops}x{args.batch_size} global "
          f"and {args.local_crops}x{args.batch_size} local crops, median of {args.iters}:", flush=True)
    for preset in args.presets:
        for precision in args.precisions:
            loop, batched = compare(args, preset, precision, device)
            print(f"ratio batched / loop, {preset} {precision}: {batched / loop:.3f} "
                  f"({'batched' if batched < loop else 'loop'} is faster)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
