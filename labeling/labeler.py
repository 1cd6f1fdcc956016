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
float32.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from PIL import Image

from clasp.hardware import PrecisionChoice, PrecisionError, probe_capability, resolve_precision
from clasp.hardware.compile import compiled_or_eager
from clasp.labeling.clip_loading import load_clip, load_image_normalization, loaded_revision
from clasp.labeling.config import ClipLabelerConfig
from clasp.labeling.dense_features import dense_features
from clasp.labeling.errors import LabelingError
from clasp.labeling.pseudo_labels import attribute_logits, part_labels, part_logits
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


COMPILE_OPTIONS: dict = {}  # torch.compile's options for --compile (tests choose the quick "eager" backend)


class ClipLabeler:
    """Loads CLIP and the vocabulary's text embeddings once; labels batches of preprocessed images."""

    def __init__(self, config: ClipLabelerConfig, vocab: Vocabulary | None = None) -> None:
        self.precision_choice = resolve_device_precision(config)
        self.config = config
        self.vocab = vocab if vocab is not None else config.vocab if config.vocab is not None else Vocabulary.default()
        self.device = torch.device(config.device)
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
        # --compile: both forwards through torch.compile, each falling back to eager on its own
        self._dense = compiled_or_eager(self._dense_eager, config.compile, "the CLIP vision forward", **COMPILE_OPTIONS)
        self._vision = compiled_or_eager(self.model.vision_model, config.compile, "the bare CLIP vision forward",
                                         **COMPILE_OPTIONS)
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

    def _autocast(self) -> contextlib.AbstractContextManager:
        dtype = self.precision_choice.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def label(self, pixels: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(part_mask (N,h,w) uint8, part_conf (N,h,w) float16, attr_logits (N,A) float16)."""
        if len(pixels) == 0:
            return (np.zeros((0, *self.label_grid), np.uint8), np.zeros((0, *self.label_grid), np.float16),
                    np.zeros((0, self.vocab.num_attributes), np.float16))
        with torch.inference_mode(), self._autocast():
            features = self._dense(pixels.to(self.device, non_blocking=True))
        with torch.inference_mode():
            mask, conf = part_labels(part_logits(features.patches, self.text, self.logit_scale))
            attrs = attribute_logits(features.image, self.text, self.logit_scale)
        return (mask.cpu().numpy(), conf.to(torch.float16).cpu().numpy(), attrs.to(torch.float16).cpu().numpy())

    def _dense_eager(self, pixels: torch.Tensor):
        return dense_features(self.model, pixels, self.config.dense_mode)

    def vision_forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """The bare CLIP vision tower at the same size, precision and mode: the benchmark's baseline."""
        with torch.inference_mode(), self._autocast():
            out = self._vision(pixel_values=pixels.to(self.device, non_blocking=True), interpolate_pos_encoding=True)
        return out.last_hidden_state
