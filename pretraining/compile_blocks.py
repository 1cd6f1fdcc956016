"""`--compile` for training: the ViT's fixed-shape parts through torch.compile, the PC-MoE's routing eager.

A whole CLASP forward does not compile usefully: each PC-MoE layer sends a
data-dependent number of rows to each expert, so the graph breaks at every
expert and its shapes change at every step (on a 2-core AMX Xeon the whole
forward had not compiled after nine minutes). What does compile is the part of
every block whose shapes the crop size fixes: the dense `Block`s whole, and the
attention of the MoE blocks.

`Block.forward` and `Attention.forward` are each compiled once, as functions of
the module, and every block calls that one compiled function: the blocks share
its graphs (one per crop size and grad mode), and a compile failure is one
warning line for all of them, after which every block runs eagerly. The modules
themselves are not wrapped (only their `forward` attribute is replaced), so
state dicts, checkpoints, DDP and exports see the same model.
"""

from __future__ import annotations

import functools
import logging

from torch import nn

from clasp.hardware.compile import compiled_or_eager, compiling
from clasp.pretraining.vit import Attention, Block, MoEBlock


COMPILE_OPTIONS: dict = {}  # torch.compile's options under `--compile` (tests choose the quick "eager" backend)


def compile_blocks(model: nn.Module, what: str = "the model", **options) -> int:
    """Route every dense block and every MoE block's attention in `model` through one compiled function each;
    returns how many modules now do. `options`: `compiled_or_eager`'s (torch.compile's)."""
    options = {"dynamic": False, **options}  # crop sizes are few and fixed: one static graph each
    block = compiled_or_eager(Block.forward, True, f"{what}'s transformer blocks", **options)
    attention = compiled_or_eager(Attention.forward, True, f"{what}'s MoE-block attention", **options)
    count = 0
    for module in model.modules():
        if isinstance(module, Block):
            module.forward = functools.partial(block, module)
            count += 1
        elif isinstance(module, MoEBlock):
            module.attn.forward = functools.partial(attention, module.attn)
            count += 1
    return count


def compile_if_asked(model: nn.Module, choice: str, precision: str, device_type: str) -> bool:
    """`--compile` of a training command (`choice`: on, off, auto at this resolved precision and device)."""
    if not compiling(choice, precision, device_type, training=True):
        return False
    count = compile_blocks(model, **COMPILE_OPTIONS)
    logging.getLogger("clasp").info(f"--compile: {count} blocks run through torch.compile, the PC-MoE routing "
                                    "eagerly")
    return True
