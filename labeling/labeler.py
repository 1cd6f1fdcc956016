"""`ClipLabeler`: images in, stored labels out. The only CLIP object the labeling run talks to.

The run calls `preprocess` in a prefetch thread while `label` runs the model on
the previous batch, so `preprocess` touches no shared mutable state and does its
work in PIL and torch kernels that release the GIL.

Preprocessing resizes the whole image to `clip_size` (bicubic, antialiased, as
PIL does for CLIP's own processor) instead of CLIP's shortest-edge resize and
centre crop: a crop would cut off the head or feet of a person, and the label
grid must cover the whole stored image.

Precision: `auto` (the default) is resolved once, here, on the device the model
runs on, by `clasp.hardware.resolve_precision`: bf16 where the device multiplies
it natively, fp16 on CUDA without bf16, fp32 otherwise. `fp32`, `bf16` and `fp16`
(CUDA only) are honoured as asked; fp16 elsewhere is an error rather than a
silent fallback, so a run never records labels made at a precision other than
the one it used. Text embeddings, cosines and softmaxes are always computed in
float32. On CPU the vision tower's weights are cast to bf16 once instead of
running it under autocast: CPU autocast runs every op of this forward (layer
norm, softmax and GELU included) in bf16 anyway, so the cast computes the same
ops at the same precision without re-casting each weight on every batch
(`copy_` fell from 15 % to 8 % of the eager forward's time). On CUDA, autocast
keeps layer norm and softmax in fp32, so there the weights stay fp32 under
autocast.

`--compile` (`clasp.hardware.compile`): `on` compiles from the first batch;
`auto` compiles where `compile_pays`, nowhere for labeling since its eager
forward gained the fused linears (`fused_linear.py`). A compiled forward keeps
one batch shape: a shorter batch (a shard's last) is padded with zero images to
it and the padding's labels dropped, instead of compiling a second graph for a
size seen once per shard.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from PIL import Image

from clasp.hardware import PrecisionChoice, PrecisionError, probe_capability, resolve_precision
from clasp.hardware.compile import compiled_or_eager, compiling
from clasp.hardware.host_memory import keep_freed_memory_on
from clasp.labeling.clip_loading import load_clip, load_image_normalization, loaded_revision
from clasp.labeling.config import ClipLabelerConfig
from clasp.labeling.dense_features import DenseFeatures, dense_features, encode_tokens
from clasp.labeling.errors import LabelingError
from clasp.labeling.fused_linear import fusable, fuse_linears
from clasp.labeling.pseudo_labels import attribute_logits, part_labels, part_logits
from clasp.labeling.quick_gelu import fold_quick_gelu
from clasp.labeling.text_embeddings import build_text_embeddings
from clasp.store import ClipInfo, Vocabulary


def resolve_device_precision(config: ClipLabelerConfig) -> PrecisionChoice:
    """Check the settings (`ClipLabelerConfig.check`) and the device, before any model is loaded; the
    precision to use on that device."""
    config.check()
    try:
        device = torch.device(config.device)
    except RuntimeError:
        raise LabelingError(f"unknown device {config.device!r}; use e.g. cpu, cuda or cuda:1") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LabelingError(f"device {config.device!r} asked for, but torch sees no CUDA device here")
    try:
        return resolve_precision(config.precision, probe_capability(device))
    except PrecisionError as exc:
        raise LabelingError(f"{exc} (device {config.device!r})") from None


# --compile's options (tests choose the quick "eager" backend). Labeling is inference with fixed weights, so
# inductor may freeze them (fold and prepack them as constants), which its autotuned CPU GEMM templates need:
# ViT-B/16 in bf16 on AMX ran 9.0 images/s eagerly, 13.2 compiled by default, 15.3 so (61 s to compile), before
# quick-GELU was folded (quick_gelu.py); with the fold, eager 9.2 against compiled 11.1 in one process; with
# the tokens padded (dense_features.py) and freed memory kept (hardware/host_memory.py), eager 14.9 against
# compiled 15.8 (1.06x); with the fused linears (fused_linear.py) as well, eager 16.8 against compiled 16.0.
COMPILE_OPTIONS: dict = {"mode": "max-autotune-no-cudagraphs", "inductor_config": {"freezing": True}}


class ClipLabeler:
    """Loads CLIP and the vocabulary's text embeddings once; labels batches of preprocessed images."""

    def __init__(self, config: ClipLabelerConfig, vocab: Vocabulary | None = None) -> None:
        self.precision_choice = resolve_device_precision(config)
        self.config = config
        self.vocab = vocab if vocab is not None else config.vocab if config.vocab is not None else Vocabulary.default()
        self.device = torch.device(config.device)
        keep_freed_memory_on(self.device.type)  # else each batch page-faults its activations in again
        self.model, self.tokenizer = load_clip(config.clip_model, config.revision, self.device)
        patch = self.model.config.vision_config.patch_size
        height, width = config.clip_size
        if height % patch or width % patch:
            raise LabelingError(f"clip size {height}x{width} is not a multiple of the model's patch size {patch}")
        self.label_grid: tuple[int, int] = (height // patch, width // patch)
        normalization = load_image_normalization(config.clip_model, config.revision)
        self._mean = torch.tensor(normalization.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(normalization.std, dtype=torch.float32).view(1, 3, 1, 1)
        self.text = build_text_embeddings(self.model, self.tokenizer, self.vocab)
        fold_quick_gelu(self.model.vision_model)  # before any cast: each weight rounded once
        self.weights_dtype = self._cast_vision_tower()
        if fusable(self.device, self.weights_dtype):
            fuse_linears(self.model.vision_model.encoder)
        self.compiles = compiling(config.compile, self.precision_choice.precision, self.device.type)
        # both forwards through torch.compile under --compile, each falling back to eager on its own
        self._dense = compiled_or_eager(self._dense_eager, self.compiles, "the CLIP vision forward", **COMPILE_OPTIONS)
        self._vision = compiled_or_eager(self._vision_eager, self.compiles, "the bare CLIP vision forward",
                                         **COMPILE_OPTIONS)
        self._compiled_rows = 0  # the batch size the compiled dense forward was built for
        self.logit_scale = self.model.logit_scale.detach().float()
        self.clip_info = ClipInfo(
            model=config.clip_model,
            revision=loaded_revision(config.clip_model, config.revision),
            input_hw=(height, width),
            dense_mode=config.dense_mode,
            precision=self.precision_choice.precision,
        )

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """(N, 3, H, W) float32 normalised pixels at `clip_size`, on the CPU; thread-safe."""
        height, width = self.config.clip_size
        if not images:
            return torch.empty(0, 3, height, width)
        arrays = []
        for image in images:
            if image.mode != "RGB":
                image = image.convert("RGB")
            arrays.append(np.asarray(image.resize((width, height), Image.Resampling.BICUBIC)))
        pixels = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div_(255.0)
        return pixels.sub_(self._mean).div_(self._std)

    def _cast_vision_tower(self) -> torch.dtype:
        """The dtype the vision tower computes in: on CPU its weights are cast to the low precision (module
        docstring); elsewhere they stay fp32."""
        dtype = self.precision_choice.autocast_dtype
        if dtype is None or self.device.type != "cpu":
            return torch.float32
        self.model.vision_model.to(dtype)
        self.model.visual_projection.to(dtype)
        return dtype

    def _autocast(self) -> contextlib.AbstractContextManager:
        dtype = self.precision_choice.autocast_dtype
        if dtype is None or self.weights_dtype == dtype:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def _pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels.to(self.device, self.weights_dtype, non_blocking=True)

    def label(self, pixels: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(part_mask (N,h,w) uint8, part_conf (N,h,w) float16, attr_logits (N,A) float16)."""
        if len(pixels) == 0:
            return (np.zeros((0, *self.label_grid), np.uint8), np.zeros((0, *self.label_grid), np.float16),
                    np.zeros((0, self.vocab.num_attributes), np.float16))
        with torch.inference_mode(), self._autocast():
            features = self._dense_features(self._pixels(pixels))
        with torch.inference_mode():
            mask, conf = part_labels(part_logits(features.patches, self.text, self.logit_scale))
            attrs = attribute_logits(features.image, self.text, self.logit_scale)
        return (mask.cpu().numpy(), conf.to(torch.float16).cpu().numpy(), attrs.to(torch.float16).cpu().numpy())

    def _dense_features(self, pixels: torch.Tensor) -> DenseFeatures:
        """`dense_features`, compiled under `--compile`, a short batch padded to the compiled size."""
        if not self.compiles:
            return self._dense(pixels)
        rows = len(pixels)
        self._compiled_rows = self._compiled_rows or rows
        if rows >= self._compiled_rows:
            return self._dense(pixels)
        padded = torch.cat([pixels, pixels.new_zeros(self._compiled_rows - rows, *pixels.shape[1:])])
        features = self._dense(padded)
        return DenseFeatures(patches=features.patches[:rows], image=features.image[:rows])

    def _dense_eager(self, pixels: torch.Tensor) -> DenseFeatures:
        return dense_features(self.model, pixels, self.config.dense_mode)

    def vision_forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """The bare CLIP vision tower's last hidden state at the same size and precision, its tokens padded as
        `dense_features` pads them: the benchmark's baseline."""
        with torch.inference_mode(), self._autocast():
            return self._vision(self._pixels(pixels))

    def _vision_eager(self, pixels: torch.Tensor) -> torch.Tensor:
        return encode_tokens(self.model, pixels, len(self.model.vision_model.encoder.layers))
