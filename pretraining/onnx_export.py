"""`clasp export --format onnx`: the backbone as one ONNX graph, task prompt fixed, batch axis free.

```
model.onnx   input  images   float32 (batch, 3, H, W), RGB in [0, 1]   (H, W: the export's image_hw)
             output cls      float32 (batch, D)
             output patches  float32 (batch, N, D), N = (H/p)(W/p) patch tokens, row-major
             metadata_props: format, task, image_hw, input, normalization, clasp_version, source
```

ImageNet normalisation happens inside the graph, as in `load_backbone`'s
module; uint8 images are divided by 255 first (a graph input has one dtype).

The PC-MoE's eager dispatch (moe.py: sort the (token, slot) pairs by expert,
run each expert on its slice of data-dependent length, `index_add_` back)
does not export: torch.export stops at `counts.tolist()`, and the TorchScript
exporter at the split sizes. For export only, `DenseMoE` computes the same
mixture densely: the same router (`PCMoE.route`), its top-k gates scattered
into a (tokens, experts) matrix that is zero for the experts not chosen, and
every expert run on every token, summed in expert order. A token's output is
then 0 + Σ over its chosen experts of gate·expert(x), in the order the eager
path adds them, and the unchosen experts add exact zeros; it costs
experts/top_k times the eager expert work, which inference can afford. The
eager path stays what training runs.

The written graph is checked before the export counts as done: onnxruntime's
outputs against PyTorch's on random images (`onnx_difference`).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import logging
import math
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Iterator

import torch
from torch import nn

from clasp.errors import RunError
from clasp.pretraining.moe import PCMoE
from clasp.pretraining.vit import PromptedViT, TaskBackbone

ONNX_PACKAGES = ("onnx", "onnxruntime", "onnxscript")  # the `onnx` extra of setup.cfg
INPUT_NAME, OUTPUT_NAMES = "images", ("cls", "patches")
EXAMPLE_BATCH = 2  # traced with 2 images; the batch axis is symbolic
PROTOBUF_LIMIT = 2**31 - 1  # weights over half of it go to model.onnx.data beside the graph (protobuf's 2 GB cap)


class OnnxExportError(RunError, RuntimeError):
    """The exporter failed, or the written graph does not compute what PyTorch computes."""


def missing_onnx_packages() -> list[str]:
    """The packages of ONNX_PACKAGES that cannot be imported here."""
    return [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]


class DenseMoE(nn.Module):
    """The output of `moe` computed without data-dependent shapes (see the module docstring)."""

    def __init__(self, moe: PCMoE) -> None:
        super().__init__()
        self.moe = moe

    def forward(self, x: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
        probs, index, gate = self.moe.route(x, prompt)
        weights = torch.zeros_like(probs).scatter(-1, index, gate).to(x.dtype)  # (R, S, E), zero where not chosen
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.moe.experts):
            out = out + expert(x) * weights[..., e:e + 1]
        return out


class ExportedBackbone(nn.Module):
    """images (B, 3, H, W) → (cls, patches) for one task, with every MoE block dense; for tracing only."""

    def __init__(self, backbone: TaskBackbone) -> None:
        super().__init__()
        self.vit: PromptedViT = copy.deepcopy(backbone.backbone).eval()
        self.task = backbone.task
        for block in self.vit.moe_blocks:
            block.moe = DenseMoE(block.moe)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.vit.forward_shared(images)  # no routing statistics: nothing here trains
        if not self.vit.config.moe_layers:
            return self.vit.forward_tasks(tokens, (self.task,))[self.task]
        return self.vit.forward_task(tokens, self.task)


def example_images(backbone: TaskBackbone, batch: int, seed: int = 0) -> torch.Tensor:
    h, w = backbone.backbone.config.img_hw
    return torch.rand(batch, 3, h, w, generator=torch.Generator().manual_seed(seed))


def write_onnx(backbone: TaskBackbone, path: Path, metadata: dict[str, str]) -> None:
    """Trace `backbone` and write the graph to `path` (+ `path`.data when over the protobuf limit).

    Written in a temporary folder beside it and moved in, the graph last: a
    failed export leaves no half-written graph.
    """
    module = ExportedBackbone(backbone)
    large = sum(p.numel() * p.element_size() for p in module.parameters()) > PROTOBUF_LIMIT // 2
    batch = torch.export.Dim("batch")
    with torch.no_grad(), warnings.catch_warnings(), _quiet_exporter():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(module, (example_images(backbone, EXAMPLE_BATCH),), dynamo=True,
                                        input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
                                        dynamic_shapes={INPUT_NAME: {0: batch}}, external_data=large, verbose=False)
        except Exception as exc:  # noqa: BLE001 - the exporter raises many types; one line names it
            raise OnnxExportError(f"torch.onnx.export failed ({type(exc).__name__}: "
                                  f"{' '.join(str(exc).split())[:300]})") from None
    program.model.metadata_props.update(metadata)
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".onnx-", dir=path.parent))
    try:
        program.save(str(scratch / path.name), external_data=large)
        written = sorted(scratch.iterdir(), key=lambda f: f.name == path.name)  # the graph last
        for file in written:
            os.replace(file, path.parent / file.name)
        if not large:  # an older, larger export's weights
            path.with_name(path.name + ".data").unlink(missing_ok=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter's progress lines and its notes on absent torchvision ops are no news to a user."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def onnx_difference(path: Path, backbone: TaskBackbone, batch_sizes: tuple[int, ...] = (1, 3)) -> float:
    """Largest |onnxruntime − PyTorch| over CLS and patch tokens of random images, at each batch size."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    worst = 0.0
    for seed, batch in enumerate(batch_sizes):
        images = example_images(backbone, batch, seed=seed + 1)
        with torch.no_grad():
            want = backbone(images)
        got = session.run(list(OUTPUT_NAMES), {INPUT_NAME: images.numpy()})
        for mine, theirs in zip(want, got):
            difference = float((mine - torch.from_numpy(theirs)).abs().max())
            worst = max(worst, difference if math.isfinite(difference) else math.inf)
    return worst
