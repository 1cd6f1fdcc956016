"""Load a CLIP (hub id or local folder) through `transformers`, failing with advice the user can act on.

A hub model and the bundled offline model (`clasp tiny-clip DIR`) take the same
`from_pretrained` path, so what the tests exercise is what a real run does.
Remote code is never trusted: only the stock `CLIPModel` and `CLIPTokenizer`.

A folder is accepted only when its config is a CLIP config and every weight of
the model was read from it. `from_pretrained` itself fills what is missing with
random values and only warns, so a BERT checkpoint, or a CLIP folder whose
vision weights were deleted, would otherwise label every image with noise and
record the folder as the CLIP. The labeler uses every part of the model (vision
tower, text tower, both projections, the temperature), so no key may be missing.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import CLIPModel, CLIPTokenizer, PretrainedConfig
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from transformers.utils import cached_file
from transformers.utils import logging as transformers_logging
from transformers.utils.hub import extract_commit_hash

from clasp.labeling.errors import LabelingError

PROCESSOR_CONFIG = "preprocessor_config.json"
CLIP_MODEL_TYPES = ("clip",)  # `model_type` values of the configs the labeler reads
KEYS_SHOWN = 3  # missing weights named in the error


class ClipLoadError(LabelingError):
    """The CLIP model could not be loaded; the one-line message says how to proceed."""

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason
        super().__init__(
            f"cannot load CLIP model {name!r} ({reason}); pass a local model folder with --clip-model DIR, "
            f"or create the bundled offline model with `clasp tiny-clip DIR` and use --clip-model DIR"
        )


@dataclass(frozen=True)
class ImageNormalization:
    """Per-channel mean and std the model was trained with (from its image-processor config)."""

    mean: tuple[float, float, float] = tuple(OPENAI_CLIP_MEAN)
    std: tuple[float, float, float] = tuple(OPENAI_CLIP_STD)


def _looks_like_path(name: str) -> bool:
    """Hub ids are `name` or `owner/name`; anything else that was meant is a folder."""
    return name.startswith(("/", ".", "~")) or name.count("/") > 1 or Path(name).expanduser().exists()


def _reason(name: str, exc: BaseException) -> str:
    folder = Path(name).expanduser()
    if _looks_like_path(name) and not folder.exists():
        return "no such folder"
    if folder.exists() and not folder.is_dir():
        return "not a folder"
    first_line = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {first_line[:200]}"


def load_clip(name_or_folder: str | os.PathLike, revision: str | None = None,
              device: str | torch.device = "cpu") -> tuple[CLIPModel, CLIPTokenizer]:
    """The CLIP model (eval mode, fp32, on `device`) and its tokenizer, or a `ClipLoadError`."""
    name = str(name_or_folder)
    progress_bars = transformers_logging.is_progress_bar_enabled()
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.disable_progress_bar()  # the labeling run has its own progress bar
    transformers_logging.set_verbosity_error()  # a refused folder is our one line, not a table of missing keys
    try:
        _check_model_type(name, revision)
        model, loading = CLIPModel.from_pretrained(name, revision=revision, trust_remote_code=False,
                                                   output_loading_info=True)
        tokenizer = CLIPTokenizer.from_pretrained(name, revision=revision, trust_remote_code=False)
    except ClipLoadError:
        raise
    except Exception as exc:  # from_pretrained raises OSError, ValueError, safetensors and JSON errors alike
        raise ClipLoadError(name, _reason(name, exc)) from exc
    finally:
        transformers_logging.set_verbosity(verbosity)
        if progress_bars:
            transformers_logging.enable_progress_bar()
    _check_all_weights_loaded(name, loading)
    return model.to(device=device, dtype=torch.float32).eval(), tokenizer


def _check_model_type(name: str, revision: str | None) -> None:
    """Refuse a config of another kind of model before its weights are read."""
    config, _ = PretrainedConfig.get_config_dict(name, revision=revision)
    model_type = config.get("model_type")
    if model_type not in CLIP_MODEL_TYPES:
        raise ClipLoadError(name, f"its config.json has model_type {model_type!r}; the labeler reads CLIP models "
                                  f"(model_type {', '.join(map(repr, CLIP_MODEL_TYPES))})")


def _check_all_weights_loaded(name: str, loading: dict) -> None:
    """Refuse a model any of whose weights `from_pretrained` had to invent or could not fit."""
    missing = sorted(loading.get("missing_keys") or ())
    mismatched = sorted(str(m[0] if isinstance(m, tuple) else m) for m in loading.get("mismatched_keys") or ())
    for kind, keys in (("missing", missing), ("of another shape", mismatched)):
        if keys:
            shown = ", ".join(keys[:KEYS_SHOWN]) + (f" and {len(keys) - KEYS_SHOWN} more" if len(keys) > KEYS_SHOWN else "")
            raise ClipLoadError(name, f"{len(keys)} weights {kind} in the folder's checkpoint: {shown}")


def load_image_normalization(name_or_folder: str | os.PathLike, revision: str | None = None) -> ImageNormalization:
    """Mean/std from the model's `preprocessor_config.json`; OpenAI's CLIP values when it has none."""
    try:
        path = cached_file(str(name_or_folder), PROCESSOR_CONFIG, revision=revision,
                           _raise_exceptions_for_missing_entries=False)
    except OSError:
        path = None
    if path is None:
        return ImageNormalization()
    config = json.loads(Path(path).read_text(encoding="utf-8"))
    default = ImageNormalization()
    return ImageNormalization(tuple(config.get("image_mean", default.mean)), tuple(config.get("image_std", default.std)))


def loaded_revision(name_or_folder: str | os.PathLike, requested: str | None = None) -> str | None:
    """The revision to record: the hub commit the files were read from (a moving branch or tag is
    pinned this way), else the one asked for; None for a plain local folder."""
    try:
        config_file = cached_file(str(name_or_folder), "config.json", revision=requested,
                                  _raise_exceptions_for_missing_entries=False)
    except OSError:
        config_file = None
    return extract_commit_hash(config_file, None) or requested
