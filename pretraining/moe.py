"""Prompt-controlled mixture of experts (PC-MoE): the MLP of the upper ViT blocks.

A router scores the experts from the token *and* the task prompt,

    logits = W_tok · x + W_prompt · LN(p_task)     (x: the normalised token, p_task: the learned prompt)

so the same token can be sent to different experts for different tasks. Each
token goes to its top-k experts; their outputs are mixed with the router's
probabilities renormalised over the chosen k. The prompt is layer-normalised
(no affine) before its projection so that it enters the router at the same
scale as the normalised token: neither input dominates at initialisation.

Dispatch groups the (token, slot) pairs by expert with one sort and one gather;
each expert runs once on its contiguous slice and adds its gated output back
onto its tokens with `index_add_`: a loop over experts, never over tokens. Every expert is called
every step, even on an empty slice, so each parameter is in the autograd graph
and DDP needs no `find_unused_parameters`. Each slice is padded with rows up to
a multiple of `ALIGN_ROWS`: the routed counts are arbitrary, and matrix
kernels run a row count that is not a multiple of their tile markedly slower
(up to ~15 % in bf16 on CPU, e.g. 2773 rows against 2784). Padded rows read
token 0 and carry a zero gate: they add exactly 0 to its output, their gradient
reaching the experts is 0, and the gather's backward never reads them
(`GatherCopies`), so they change neither outputs nor gradients.

In bf16 or fp16 on a CPU the slices are padded further, to one of
`ROW_BUCKETS_PER_OCTAVE` sizes per power of two (at most 1/16 more rows;
`low_precision_on_cpu`). There oneDNN builds a matrix kernel for each new shape and
caches it: ~5 ms for a new row count against ~1 ms to run a cached one (an
expert's first layer at preset small, AMX Xeon). Routed counts change every
step, so with rows only aligned nearly every expert call met a new shape and
the experts' GEMMs ran at half the speed of the dense ones; with the buckets the
few sizes a run meets are built once. fp32 matrix products (MKL) build nothing
per shape, so fp32 keeps the finer alignment and no extra padding.

Two ways to run the experts on those slices, the same sums (`PCMoE.dispatch`):

- `"loop"` (the default): one small GEMM pair per expert on its own slice;
- `"batched"`: every slice padded to the same row count (the largest group,
  rounded up to `ALIGN_ROWS`), the experts' weights stacked (E, out, in) at each
  call and run as one `torch.baddbmm` per layer: 2 matrix calls instead of 2E,
  at the price of padded rows for every expert below the largest group (uneven
  routing costs arithmetic on zeros). The parameters stay one `MLP` per expert,
  so state dicts, checkpoints and exports are the same under either.

`benchmarks/moe_dispatch.py` times both at the presets' shapes; flip the default
(`DISPATCH`) only on its figures.

Load balancing (Switch Transformer / GShard):

    balance = E · Σ_e f_e · P_e

with f_e the fraction of routed (token, slot) pairs that go to expert e (no
gradient) and P_e the mean router probability of expert e. It equals 1 when
routing is uniform (f_e = P_e = 1/E) and grows to E when every token goes to one
expert with certainty. Statistics are accumulated over every call between
`reset_stats()` and `stats()`, so crops of different sizes run as separate calls
still give one loss over all tokens of a step.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

ALIGN_ROWS = 32
ROW_BUCKETS_PER_OCTAVE = 16
DISPATCHES = ("loop", "batched")
DISPATCH = "loop"  # the default of every PCMoE; "batched" once benchmarks/moe_dispatch.py says it is not slower


def aligned(rows: int, bucketed: bool = False) -> int:
    """`rows` rounded up to a multiple of `ALIGN_ROWS`; with `bucketed`, to a multiple of
    2^(floor(log2 rows)) / `ROW_BUCKETS_PER_OCTAVE` if that is coarser: one of that many sizes per octave."""
    step = ALIGN_ROWS
    if bucketed:
        step = max(step, (1 << (max(rows, 1).bit_length() - 1)) // ROW_BUCKETS_PER_OCTAVE)
    return -(-rows // step) * step


def low_precision_on_cpu(x: torch.Tensor) -> bool:
    """Whether `x` is bf16 or fp16 on a CPU, where oneDNN computes it: there the experts' slices take few distinct
    row counts (module docstring) and the ViT's attention runs as plain ops (`vit.explicit_attention`)."""
    return x.device.type == "cpu" and x.dtype in (torch.bfloat16, torch.float16)


def set_dispatch(model: nn.Module, dispatch: str) -> int:
    """Run every PC-MoE inside `model` by `dispatch` ("loop" or "batched"); returns how many were set."""
    if dispatch not in DISPATCHES:
        raise ValueError(f"dispatch must be one of {DISPATCHES}, got {dispatch!r}")
    layers = [m for m in model.modules() if isinstance(m, PCMoE)]
    for layer in layers:
        layer.dispatch = dispatch
    return len(layers)


def balance_from_counts(counts: torch.Tensor, prob_sum: torch.Tensor, tokens: int) -> torch.Tensor:
    """E · Σ_e f_e · P_e from the routed (token, slot) pairs per expert and the router probabilities summed
    over `tokens` tokens: the one formula, used by `PCMoE.stats` over a whole step."""
    fraction = counts / counts.sum()
    mean_prob = prob_sum / tokens
    return counts.numel() * (fraction.to(mean_prob.device) * mean_prob).sum()


def load_balancing_loss(router_probs: torch.Tensor, expert_index: torch.Tensor, experts: int) -> torch.Tensor:
    """E · Σ_e f_e · P_e for one set of tokens.

    router_probs: (T, E) softmax over experts; expert_index: (T, k) chosen experts.
    """
    counts = torch.bincount(expert_index.reshape(-1), minlength=experts).to(router_probs.dtype)
    return balance_from_counts(counts, router_probs.sum(0), router_probs.shape[0])


class GatherCopies(torch.autograd.Function):
    """`x.index_select(0, source)` where every row t of x is copied to exactly the positions `slots[t]` (the
    other positions, padding, read any row): the backward sums each row's copies with one gather and k - 1
    adds instead of autograd's scatter-add (`index_add_`), which ran at ~2 ms against ~1.3 ms for 16,640
    rows of 384 in bf16 on a 2-core AMX Xeon."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, source: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(slots)
        return x.index_select(0, source)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (slots,) = ctx.saved_tensors
        copies = grad.index_select(0, slots.reshape(-1)).view(*slots.shape, grad.shape[1])
        total = copies[:, 0]
        for copy in range(1, slots.shape[1]):
            total = total + copies[:, copy]
        return total, None, None


def gather_copies(x: torch.Tensor, source: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """The experts' inputs: `GatherCopies` where a gradient is wanted, a plain gather otherwise (what an export
    traces)."""
    if torch.is_grad_enabled() and x.requires_grad:
        return GatherCopies.apply(x, source, slots)
    return x.index_select(0, source)


class MLP(nn.Module):
    """The two-layer GELU MLP of a ViT block; each expert is one of these."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class PCMoE(nn.Module):
    """Top-k mixture of `experts` MLPs routed by token and task prompt.

    `dispatch` ("loop" or "batched", module docstring) may be set on the class or on one instance at any time.
    """

    dispatch: str = DISPATCH
    bucket_rows: bool | None = None  # pad the slices to bucketed sizes; None: where `low_precision_on_cpu`

    def __init__(self, dim: int, hidden: int, experts: int, top_k: int) -> None:
        super().__init__()
        self.top_k = top_k
        self.router = nn.Linear(dim, experts)
        self.prompt_router = nn.Linear(dim, experts, bias=False)
        self.experts = nn.ModuleList(MLP(dim, hidden) for _ in range(experts))  # their count: len(self.experts)
        self.reset_stats()

    def reset_stats(self) -> None:
        self._counts = torch.zeros(len(self.experts))
        self._prob_sum: torch.Tensor | float = 0.0
        self._tokens = 0

    def stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(balance loss, expert load) over all tokens routed since `reset_stats()`.

        Expert load is the fraction of routed (token, slot) pairs per expert, shape (E,).
        """
        if self._tokens == 0:
            zero = self.router.weight.new_zeros(())
            return zero, torch.zeros(len(self.experts))
        return balance_from_counts(self._counts, self._prob_sum, self._tokens), self._counts / self._counts.sum()

    def route(self, x: torch.Tensor, prompt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Router probabilities (R, S, E) in fp32, chosen experts (R, S, k) and their renormalised gates.

        x: (R, S, D) tokens; prompt: (R, D) the task prompt of each row.
        """
        prompt = F.layer_norm(prompt, prompt.shape[-1:])
        logits = self.router(x) + self.prompt_router(prompt).unsqueeze(1)
        probs = logits.float().softmax(-1)
        gate, index = probs.topk(self.top_k, dim=-1)
        gate = gate / gate.sum(-1, keepdim=True)
        return probs, index, gate

    def forward(self, x: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        rows, seq, dim = x.shape
        tokens = rows * seq
        probs, index, gate = self.route(x, prompt)
        flat = x.reshape(tokens, dim)
        device = flat.device.type
        if torch.is_autocast_enabled(device):  # gather half the bytes; the experts would cast anyway
            flat = flat.to(torch.get_autocast_dtype(device))
        if self.dispatch not in DISPATCHES:
            raise ValueError(f"PCMoE.dispatch must be one of {DISPATCHES}, got {self.dispatch!r}")
        batched = self.dispatch == "batched"
        bucketed = low_precision_on_cpu(flat) if self.bucket_rows is None else self.bucket_rows
        source, gates, slots, sizes, padded = self._dispatch(index, gate, same_rows=batched, bucketed=bucketed)
        gathered = gather_copies(flat, source, slots)
        if batched:
            mixed = self._experts_batched(gathered, source, gates, tokens)
        else:
            mixed = self._experts_loop(gathered, source, gates, padded, tokens)

        self._counts = self._counts + torch.tensor(sizes, dtype=torch.float32)  # already on the host
        self._prob_sum = self._prob_sum + probs.reshape(-1, len(self.experts)).sum(0)
        self._tokens += tokens
        return mixed.view(rows, seq, dim)

    def _experts_loop(self, gathered: torch.Tensor, source: torch.Tensor, gates: torch.Tensor,
                      padded: list[int], tokens: int) -> torch.Tensor:
        """Each expert on its own slice, its gated output added onto its tokens."""
        mixed = None
        for expert, chunk, targets, weight in zip(self.experts, gathered.split(padded), source.split(padded),
                                                  gates.split(padded)):
            out = expert(chunk)
            out = out * weight.unsqueeze(-1).to(out.dtype)
            if mixed is None:
                mixed = out.new_zeros(tokens, gathered.shape[1])
            mixed.index_add_(0, targets, out)  # backward: a gather
        return mixed

    def _experts_batched(self, gathered: torch.Tensor, source: torch.Tensor, gates: torch.Tensor,
                         tokens: int) -> torch.Tensor:
        """All experts at once on equal slices (E, rows, D): stacked weights, one `baddbmm` per layer."""
        experts, dim = len(self.experts), gathered.shape[1]
        slices = gathered.view(experts, -1, dim)
        w1 = torch.stack([e.fc1.weight for e in self.experts]).transpose(1, 2)  # (E, D, H): a view, no copy
        b1 = torch.stack([e.fc1.bias for e in self.experts]).unsqueeze(1)  # (E, 1, H)
        w2 = torch.stack([e.fc2.weight for e in self.experts]).transpose(1, 2)  # (E, H, D)
        b2 = torch.stack([e.fc2.bias for e in self.experts]).unsqueeze(1)
        out = torch.baddbmm(b2, F.gelu(torch.baddbmm(b1, slices, w1)), w2).reshape(-1, dim)
        out = out * gates.unsqueeze(-1).to(out.dtype)
        return out.new_zeros(tokens, dim).index_add_(0, source, out)

    def _dispatch(self, index: torch.Tensor, gate: torch.Tensor, same_rows: bool = False,
                  bucketed: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int], list[int]]:
        """The (token, slot) pairs grouped by expert, each group padded to a multiple of `ALIGN_ROWS`.

        With `bucketed`, to one of the bucket sizes (`aligned`). With
        `same_rows`, every group is padded to the same size: the largest,
        rounded up. Returns the token of each padded position (0 for padding),
        its gate (0 for padding), the padded position of each (token, slot)
        pair as (T, k), and the routed and padded size of each expert's group.
        """
        tokens = index.shape[0] * index.shape[1]
        experts = index.reshape(-1)  # (T*k,) expert of each (token, slot) pair
        order = torch.argsort(experts, stable=True)
        sizes = torch.bincount(experts, minlength=len(self.experts)).tolist()
        padded = ([aligned(max(sizes), bucketed)] * len(sizes) if same_rows
                  else [aligned(size, bucketed) for size in sizes])
        # A sorted pair moves down by the padding of the groups before its own.
        padding_before = torch.tensor([0, *itertools.accumulate(p - s for p, s in zip(padded, sizes))][:-1],
                                      device=experts.device)
        position = torch.arange(experts.numel(), device=experts.device) + padding_before[experts[order]]
        source = torch.zeros(sum(padded), dtype=torch.long, device=experts.device)
        source[position] = torch.arange(tokens, device=experts.device).repeat_interleave(self.top_k)[order]
        gates = gate.new_zeros(sum(padded))
        gates[position] = gate.reshape(-1)[order]
        slots = torch.empty_like(position)
        slots[order] = position
        return source, gates, slots.view(tokens, self.top_k), sizes, padded
