"""One CLASP training step against one plain DINO step on the same ViT, batch, crops and precision.

CLASP: three task branches (instance, part, attribute), PC-MoE in the upper
blocks, DINO + part + attribute heads, EMA teacher. DINO: the same ViT preset
without MoE or extra heads (`ModelConfig.dino_baseline`). A step is forward +
backward + AdamW step + teacher update. The two are timed alternately in ABBA
order (so load from other processes hits both alike); the median of `--iters`
steps each is reported after `--warmup` untimed steps, as wall time and as this
process's CPU time. On a machine shared with other jobs, `--threads 1` gives
the steadiest figures (two OpenMP threads stall whenever one is descheduled).

    python benchmarks/pretrain_step.py --preset small --batch-size 32 --precision bf16

Target: ratio ≤ 1.5 at preset small, batch 32, bf16 autocast on CPU, 2 + 6 crops.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from clasp.pretraining.batch import MultiCropBatch
from clasp.pretraining.host_memory import keep_freed_memory
from clasp.pretraining.model import ClaspModel, ModelConfig
from clasp.store import Vocabulary


def synthetic_batch(batch_size: int, global_crops: int, local_crops: int, vocab: Vocabulary) -> MultiCropBatch:
    g = torch.Generator().manual_seed(0)
    return MultiCropBatch(
        global_crops=torch.randint(0, 256, (global_crops, batch_size, 3, 256, 128), dtype=torch.uint8, generator=g),
        local_crops=torch.randint(0, 256, (local_crops, batch_size, 3, 128, 64), dtype=torch.uint8, generator=g),
        part_mask=torch.randint(0, vocab.num_parts, (global_crops, batch_size, 16, 8), generator=g),
        part_conf=torch.rand(global_crops, batch_size, 16, 8, generator=g),
        attr_logits=torch.randn(batch_size, vocab.num_attributes, generator=g) * 5,
        row_id=torch.arange(batch_size),
    )


class Stepper:
    def __init__(self, config: ModelConfig, precision: str) -> None:
        self.model = ClaspModel(config)
        self.optimizer = torch.optim.AdamW(self.model.param_groups(), lr=1e-4, weight_decay=0.04)
        self.precision = precision

    def step(self, batch: MultiCropBatch) -> tuple[float, float]:
        """(wall seconds, CPU seconds of this process) for one step."""
        autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if self.precision == "bf16"
                    else contextlib.nullcontext())
        start, start_cpu = time.perf_counter(), time.process_time()
        with autocast:
            loss, _ = self.model(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.model.update_teacher(0.996)
        return time.perf_counter() - start, time.process_time() - start_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small", choices=["tiny", "small", "base"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--global-crops", type=int, default=2)
    parser.add_argument("--local-crops", type=int, default=6)
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp32"])
    parser.add_argument("--moe-layers", type=int, default=4)
    parser.add_argument("--experts", type=int, default=6)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--expert-mlp-ratio", type=float, default=None,
                        help="expert width / dim (default: mlp_ratio / top_k)")
    parser.add_argument("--dino-out-dim", type=int, default=8192)
    parser.add_argument("--warmup", type=int, default=4, help="untimed steps first (the heap reaches its steady size)")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()  # as `clasp pretrain` does on CPU; process-wide, so both sides alike

    torch.manual_seed(0)
    vocab = Vocabulary.default()
    batch = synthetic_batch(args.batch_size, args.global_crops, args.local_crops, vocab)
    clasp = Stepper(ModelConfig.build(args.preset, vocab, moe_layers=args.moe_layers, num_experts=args.experts,
                                      top_k=args.top_k, dino_out_dim=args.dino_out_dim,
                                      expert_mlp_ratio=args.expert_mlp_ratio), args.precision)
    dino = Stepper(ModelConfig.dino_baseline(args.preset, dino_out_dim=args.dino_out_dim), args.precision)

    for _ in range(args.warmup):
        clasp.step(batch)
        dino.step(batch)
    clasp_times, dino_times = [], []
    for i in range(args.iters):  # ABBA order: load drift on a shared machine biases neither side
        if i % 2 == 0:
            clasp_times.append(clasp.step(batch))
            dino_times.append(dino.step(batch))
        else:
            dino_times.append(dino.step(batch))
            clasp_times.append(clasp.step(batch))
    clasp_s, dino_s = (statistics.median(t[0] for t in clasp_times), statistics.median(t[0] for t in dino_times))
    clasp_cpu, dino_cpu = (statistics.median(t[1] for t in clasp_times), statistics.median(t[1] for t in dino_times))
    print(f"preset={args.preset} batch={args.batch_size} crops={args.global_crops}+{args.local_crops} "
          f"precision={args.precision} threads={torch.get_num_threads()} iters={args.iters}")
    print(f"CLASP step (3 branches, MoE {args.moe_layers}x{args.experts} top-{args.top_k}, 3 heads): "
          f"{clasp_s:.3f} s wall, {clasp_cpu:.3f} s CPU")
    print(f"DINO step (same ViT, no MoE, DINO head only): {dino_s:.3f} s wall, {dino_cpu:.3f} s CPU")
    # CPU time is what the step costs this process; wall time also counts waiting for a core
    # another process holds, so on a shared machine the CPU ratio is the steadier figure.
    print(f"ratio CLASP / DINO: {clasp_s / dino_s:.3f} (wall), {clasp_cpu / dino_cpu:.3f} (CPU time)")


if __name__ == "__main__":
    main()
