"""One CLASP training step against one plain DINO step on the same ViT, batch, crops and precision.

CLASP: three task branches (instance, part, attribute), PC-MoE in the upper
blocks, DINO + part + attribute heads, EMA teacher. DINO: the same ViT preset
without MoE or extra heads (`ModelConfig.dino_baseline`). A step is forward +
backward + AdamW step + teacher update. The two are timed alternately in ABBA
order (so load from other processes hits both alike); the median of `--iters`
steps each is reported after untimed warm-up steps, as wall time and as this
process's CPU time. Each side warms up for at least `--warmup` steps and then
until one of its steps page-faults fewer than `WARM_FAULTS` pages (at most
`--max-warmup` steps): until then the process heap is still growing and, in
bf16 on a CPU, the PC-MoE's matrix kernels for new routed row counts are still
being built. At preset small in bf16 on an AMX Xeon, CLASP took ~8 steps to get
there (its step fell from 5.7 to 4.7 s meanwhile, 1,000,000 page faults down to
none), DINO three. On a machine shared with other jobs, `--threads 1` gives
the steadiest figures (two OpenMP threads stall whenever one is descheduled).

    python benchmarks/pretrain_step.py      # preset small, batch 32, 2 + 6 crops, --precision auto

The first warm-up step of each is run under `FlopCounterMode`: the FLOPs of one
CLASP step and one DINO step (forward + backward; the optimizer and the teacher
update do no matrix products). Their ratio is what the extra branches, the MoE
and the heads add in arithmetic; the time ratio beside it says how much more
they cost than that arithmetic (time ratio / FLOP ratio = 1: no overhead beyond
the FLOPs). Each step's achieved GFLOP/s is printed as a fraction of the GEMM
peak at the ViT's and the DINO head's shapes (`machine_peak.py`) in the same
precision. `--precision auto` resolves as `clasp pretrain` does (fp32 on a CPU
without native bf16, where bf16 autocast would be several times slower).

Target: time ratio CLASP / DINO <= 1.5 at preset small, batch 32, 2 + 6 crops.

On a GPU (`--device cuda`) each step is synchronised before its clock stops,
and each step's MFU is printed against the card's datasheet dense bf16 peak
(`machine.BF16_DENSE_TFLOPS`), beside the images/s one step consumes (what the
loader must deliver). `--compile` compiles both as `clasp pretrain --compile on`
does (`pretraining/compile_blocks.py`: the blocks' fixed-shape parts, eager with
one warning line where that fails), after the FLOPs are counted,
`--fused-adamw` the fused AdamW kernel, `--tf32` TF32 for fp32 matrix products.

    python benchmarks/pretrain_step.py --device cuda --preset base --batch-size 64 --precision bf16 --fused-adamw

`--fixed-experts` times a third side, a control: CLASP with every PC-MoE
replaced by its first `top_k` experts applied to every token and summed (the
experts' arithmetic without the router, the gather, the gates and the
scatter-add; not a model anyone trains). Its time ratio to DINO against its FLOP
ratio says how much of CLASP's cost beyond its FLOPs is the routing; on the AMX
Xeon in bf16 it was all of it (control 1.29 at a FLOP ratio of 1.31, CLASP 1.48
at 1.32): 0.54 s of a 4.53 s step; 0.30 s of 4.13 s once the tasks were stacked
through the upper blocks (`PromptedViT.forward_tasks`).
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import statistics
import sys
import time
import types
from pathlib import Path

import torch

from clasp.hardware import DEFAULT_PRECISION, PRECISIONS, PrecisionChoice, use_available_cores
from clasp.hardware.host_memory import keep_freed_memory
from clasp.pretraining.batch import MultiCropBatch
from clasp.pretraining.compile_blocks import compile_blocks
from clasp.pretraining.model import ClaspModel, ModelConfig
from clasp.pretraining.moe import DISPATCH, DISPATCHES, PCMoE, set_dispatch
from clasp.store import Vocabulary

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import (  # noqa: E402
    count_flops, efficiency_line, mfu_line, op_shares, op_shares_line, print_header, synchronize, verdict,
)
from machine_peak import dino_head_shapes, peak_gflops, vit_shapes  # noqa: E402

TARGET = 1.5
# fp32 on an idle 2-core CPU: a CLASP + DINO pair of small steps takes about a minute; 1 counted + 1 warm-up
# + 4 timed pairs fit in 10 minutes (more warm-up steps only while a side's heap still grows: module docstring).
WARMUP, ITERS = 2, 4
MAX_WARMUP = 12
WARM_FAULTS = 1000  # page faults of one step below which a side counts as warm (module docstring)


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
    def __init__(self, config: ModelConfig, choice: PrecisionChoice, device: str = "cpu",
                 fused_adamw: bool = False, name: str = "the model", moe_dispatch: str = DISPATCH) -> None:
        self.device = device
        self.model = ClaspModel(config).to(device)
        set_dispatch(self.model, moe_dispatch)
        self.name = name
        self.optimizer = torch.optim.AdamW(self.model.param_groups(), lr=1e-4, weight_decay=0.04,
                                           **({"fused": True} if fused_adamw else {}))
        self.autocast_dtype = choice.autocast_dtype  # None: fp32, no autocast

    def compile(self, backend: str) -> None:
        compile_blocks(self.model, self.name, backend=backend)

    def step(self, batch: MultiCropBatch) -> tuple[float, float]:
        """(wall seconds, CPU seconds of this process) for one step."""
        device_type = torch.device(self.device).type
        autocast = (torch.autocast(device_type, dtype=self.autocast_dtype) if self.autocast_dtype is not None
                    else contextlib.nullcontext())
        synchronize(self.device)
        start, start_cpu = time.perf_counter(), time.process_time()
        with autocast:
            loss, _ = self.model(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.model.update_teacher(0.996)
        synchronize(self.device)
        return time.perf_counter() - start, time.process_time() - start_cpu


def _fixed_experts_forward(self: PCMoE, x: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
    return sum(expert(x) for expert in self.experts[:self.top_k])


def fix_experts(model: torch.nn.Module) -> int:
    """Make every PC-MoE in `model` (student and teacher) run its first `top_k` experts on every token, unrouted:
    the `--fixed-experts` control (module docstring). Returns how many were changed."""
    layers = [m for m in model.modules() if isinstance(m, PCMoE)]
    for layer in layers:
        layer.forward = types.MethodType(_fixed_experts_forward, layer)
    return len(layers)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small", choices=["tiny", "small", "base"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--global-crops", type=int, default=2)
    parser.add_argument("--local-crops", type=int, default=6)
    parser.add_argument("--precision", default=DEFAULT_PRECISION, choices=PRECISIONS)
    parser.add_argument("--moe-layers", type=int, default=4)
    parser.add_argument("--experts", type=int, default=6)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--expert-mlp-ratio", type=float, default=None,
                        help="expert width / dim (default: mlp_ratio / top_k)")
    parser.add_argument("--dino-out-dim", type=int, default=8192)
    parser.add_argument("--depth", type=int, default=None, help="ViT depth instead of the preset's (quick checks)")
    parser.add_argument("--dim", type=int, default=None, help="ViT width instead of the preset's (quick checks)")
    parser.add_argument("--heads", type=int, default=None, help="attention heads instead of the preset's")
    parser.add_argument("--dino-hidden-dim", type=int, default=None, help="DINO head width (quick checks)")
    parser.add_argument("--warmup", type=int, default=WARMUP,
                        help="untimed steps at least, the first one counting FLOPs")
    parser.add_argument("--max-warmup", type=int, default=MAX_WARMUP,
                        help=f"untimed steps at most, warming up until a step page-faults < {WARM_FAULTS} pages")
    parser.add_argument("--iters", type=int, default=ITERS)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: the cores available)")
    parser.add_argument("--profile", action="store_true", help="also print the top ops of one step of each by time")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--compile", action="store_true",
                        help="compile both models' blocks as clasp pretrain --compile on does")
    parser.add_argument("--moe-dispatch", default=DISPATCH, choices=DISPATCHES,
                        help="how the PC-MoE runs its experts (pretraining/moe.py)")
    parser.add_argument("--compile-backend", default="inductor",
                        help="torch.compile backend (eager: dynamo's tracing alone, a quick check of --compile)")
    parser.add_argument("--fused-adamw", action="store_true", help="AdamW(fused=True)")
    parser.add_argument("--tf32", action="store_true", help="TF32 for fp32 matrix products and convolutions (CUDA)")
    parser.add_argument("--fixed-experts", action="store_true",
                        help="also time CLASP with its experts unrouted, a control (module docstring)")
    parser.add_argument("--no-peak", action="store_true",
                        help="skip measuring the GEMM peak at the step's shapes (its efficiency lines then say n/a)")
    return parser.parse_args(argv)


def step_shapes(args: argparse.Namespace, config: ModelConfig) -> tuple:
    """The GEMM shapes of one step, for the peak it is compared with."""
    dim, crops = config.vit.dim, args.global_crops + args.local_crops
    return (vit_shapes(dim, args.batch_size, args.global_crops, args.local_crops, args.experts, args.top_k,
                       config.vit.expert_hidden)
            + dino_head_shapes(dim, args.batch_size * crops, config.dino_hidden_dim, config.dino_bottleneck_dim,
                               args.dino_out_dim))


def page_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def warm_up(stepper: Stepper, batch: MultiCropBatch, least: int, most: int, done: int = 1) -> int:
    """Untimed steps (`done` already taken) until one page-faults fewer than `WARM_FAULTS` pages, at least
    `least` and at most `most` in all; returns how many were taken."""
    steps = done
    while steps < max(least, most):
        before = page_faults()
        stepper.step(batch)
        steps += 1
        if steps >= least and page_faults() - before < WARM_FAULTS:
            break
    return steps


def timed_steps(sides: list[Stepper], batch: MultiCropBatch, iters: int) -> dict[str, list]:
    """(wall, CPU) seconds of `iters` steps of each side, by name. The order turns round every step (ABBA for
    two sides), so load drift on a shared machine biases none of them."""
    times: dict[str, list] = {side.name: [] for side in sides}
    for i in range(iters):
        for side in (sides if i % 2 == 0 else sides[::-1]):
            times[side.name].append(side.step(batch))
        print(f"  step {i + 1}: " + ", ".join(f"{name} {t[-1][0]:.2f} s wall ({t[-1][1]:.2f} s CPU)"
                                              for name, t in times.items()), flush=True)
    return times


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    use_available_cores(threads=args.threads)
    if args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    choice = print_header(args.precision, device=args.device,
                          note=f"MoE dispatch {args.moe_dispatch}, compile {'on' if args.compile else 'off'}, "
                               f"fused AdamW {'on' if args.fused_adamw else 'off'}, "
                               f"TF32 {'on' if args.tf32 else 'off'}")
    if args.device == "cpu":
        keep_freed_memory()  # as `clasp pretrain` does on CPU; process-wide, so both sides alike

    torch.manual_seed(0)
    vocab = Vocabulary.default()
    batch = synthetic_batch(args.batch_size, args.global_crops, args.local_crops, vocab).to(args.device)
    vit = {k: getattr(args, k) for k in ("depth", "dim", "heads") if getattr(args, k) is not None}
    head = {"dino_out_dim": args.dino_out_dim}
    if args.dino_hidden_dim:
        head.update(dino_hidden_dim=args.dino_hidden_dim, dino_bottleneck_dim=min(256, args.dino_hidden_dim))
    clasp_config = ModelConfig.build(args.preset, vocab, moe_layers=args.moe_layers, experts=args.experts,
                                     top_k=args.top_k, expert_mlp_ratio=args.expert_mlp_ratio, **head, **vit)
    options = dict(device=args.device, fused_adamw=args.fused_adamw, moe_dispatch=args.moe_dispatch)
    clasp = Stepper(clasp_config, choice, name="CLASP", **options)
    dino = Stepper(ModelConfig.dino_baseline(args.preset, **head, **vit), choice, name="DINO", **options)
    sides = [clasp, dino]
    if args.fixed_experts:
        control = Stepper(clasp_config, choice, name="control", **options)
        fix_experts(control.model)
        sides.append(control)
    peak = (float("nan") if args.no_peak
            else peak_gflops(choice.precision, step_shapes(args, clasp_config), device=args.device))

    # counted eagerly: a compiled graph's kernels are not the ops FlopCounterMode sees
    flops = {side.name: count_flops(lambda: side.step(batch)) for side in sides}
    if args.compile:
        for side in sides:
            side.compile(args.compile_backend)
    print(f"FLOPs of one step (forward + backward): CLASP {flops['CLASP'] / 1e9:.1f} G, "
          f"DINO {flops['DINO'] / 1e9:.1f} G; "
          f"{choice.precision} GEMM peak at the step's shapes {peak:.1f} GFLOP/s", flush=True)
    warm = {side.name: warm_up(side, batch, args.warmup, args.max_warmup) for side in sides}
    print("warm-up steps: " + ", ".join(f"{name} {steps}" for name, steps in warm.items()), flush=True)
    times = timed_steps(sides, batch, args.iters)
    wall = {name: statistics.median(t[0] for t in side_times) for name, side_times in times.items()}
    cpu = {name: statistics.median(t[1] for t in side_times) for name, side_times in times.items()}
    report(args, choice, warm, wall, cpu, flops, peak)
    if args.profile:
        for side in sides:
            print(op_shares_line(f"{side.name} step", op_shares(lambda: side.step(batch))))


def report(args: argparse.Namespace, choice: PrecisionChoice, warm: dict[str, int], wall: dict[str, float],
           cpu: dict[str, float], flops: dict[str, float], peak: float) -> None:
    """The figures of the timed steps, each side by its name (CLASP, DINO and the control with --fixed-experts)."""
    clasp_s, dino_s = wall["CLASP"], wall["DINO"]
    print(f"preset={args.preset} batch={args.batch_size} crops={args.global_crops}+{args.local_crops} "
          f"precision={choice.precision} threads={torch.get_num_threads()} warm-up steps CLASP {warm['CLASP']}, "
          f"DINO {warm['DINO']}, iters={args.iters}")
    print(f"CLASP step (3 branches, MoE {args.moe_layers}x{args.experts} top-{args.top_k}, 3 heads): "
          f"{clasp_s:.3f} s wall, {cpu['CLASP']:.3f} s CPU")
    print(f"DINO step (same ViT, no MoE, DINO head only): {dino_s:.3f} s wall, {cpu['DINO']:.3f} s CPU")
    print(efficiency_line("CLASP step, forward + backward", flops["CLASP"], clasp_s, peak, choice.precision))
    print(efficiency_line("DINO step, forward + backward", flops["DINO"], dino_s, peak, choice.precision))
    print(mfu_line("CLASP step", flops["CLASP"], clasp_s, args.device))
    print(mfu_line("DINO step", flops["DINO"], dino_s, args.device))
    print(f"images/s one step consumes: CLASP {args.batch_size / clasp_s:.1f}, DINO {args.batch_size / dino_s:.1f} "
          f"(batch {args.batch_size})")
    report_ratios(clasp_s / dino_s, cpu["CLASP"] / cpu["DINO"], flops["CLASP"] / flops["DINO"])
    if args.fixed_experts:
        report_control(wall, flops)


def report_control(wall: dict[str, float], flops: dict[str, float]) -> None:
    """The `--fixed-experts` lines: the control against DINO, and what routing adds to a CLASP step."""
    ratio, flop_ratio = wall["control"] / wall["DINO"], flops["control"] / flops["DINO"]
    routing = wall["CLASP"] - wall["control"] * flops["CLASP"] / flops["control"]
    print(f"control (experts unrouted): {wall['control']:.3f} s wall; time ratio to DINO {ratio:.3f} at a FLOP ratio "
          f"of {flop_ratio:.3f} ({ratio / flop_ratio:.2f})")
    print(f"routing beyond its arithmetic: {routing:.3f} s a CLASP step ({100 * routing / wall['CLASP']:.0f} %): "
          f"the control's time scaled to CLASP's FLOPs, taken from CLASP's")


def report_ratios(wall: float, cpu: float, flops: float) -> None:
    # CPU time is what the step costs this process; wall time also counts waiting for a core
    # another process holds, so on a shared machine the CPU ratio is the steadier figure.
    print(f"FLOP ratio CLASP / DINO: {flops:.3f} (the arithmetic the branches, MoE and heads add)")
    print(f"time ratio CLASP / DINO: {wall:.3f} (wall) {verdict(wall, TARGET, at_least=False)}, "
          f"{cpu:.3f} (CPU time) {verdict(cpu, TARGET, at_least=False)}")
    print(f"time ratio / FLOP ratio: {wall / flops:.2f} (wall), {cpu / flops:.2f} (CPU time); "
          f"1.00 = CLASP costs exactly its extra FLOPs, above = overhead beyond the arithmetic")


if __name__ == "__main__":
    main()
