"""Turning one image file into what a shard row needs, or into a reason to skip it.

Decisions, so that every input gets a defined outcome:

- **Orientation**: the EXIF orientation tag is applied; the stored image and the
  labels are upright, and `orig_hw` is the upright height and width.
- **Colour**: every mode ends as 8-bit RGB. CMYK and YCbCr convert; 16-bit
  grayscale is scaled to 8 bit by its full range (65535 -> 255) rather than
  clipped; palette images convert through their palette.
- **Alpha** (RGBA, LA, palette with transparency): composited on **white**. Cut-out
  people on a transparent background then look like studio crops; dropping the
  alpha channel would expose whatever colour the encoder left under transparent
  pixels (often black or garbage).
- **Size limits**: images with a side below `MIN_SIDE` pixels are skipped (there is
  nothing to label in a 5x3 thumbnail, upsampled 50 times). Images above
  `MAX_PIXELS` are skipped before decoding (decompression bombs). Large JPEGs are
  decoded at a reduced scale (`Image.draft`) that still covers the sizes we
  resize to, which makes an 8000x8000 photo cost about as much as a 1000x1000 one.
  A side longer than the store can record (`MAX_ORIG_SIDE`, 65535) is skipped
  too: a 70000x20 strip is under the pixel limit but is no person crop.
- **Resizing**: a plain resize to the target height x width (no crop, no padding),
  the convention of person re-identification crops (SOLIDER, Market-1501). The
  stored image and the labeler's input come from the same decoded image, so the
  label grid lines up with the stored pixels.
- **Failures**: zero-byte, truncated, corrupt and non-image files, and files that
  cannot be read, become a `DecodeSkip` with a reason; nothing raises.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from clasp.common.person_size import PERSON_HW
from clasp.store.schema import MAX_ORIG_SIDE

MIN_SIDE = 16
MAX_PIXELS = 80_000_000  # 80 megapixels: above 8000x8000, below Pillow's own bomb warning
STORE_QUALITY = 95
_RESAMPLE = Image.Resampling.BICUBIC
_ROTATING_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that swap width and height
_WHITE = (255, 255, 255)


@dataclass
class DecodedImage:
    path: str
    key: str  # sha1 of the file's bytes
    orig_hw: tuple[int, int]  # upright source height, width
    store_jpeg: bytes  # the image at the store size, JPEG
    label_image: Image.Image  # RGB, at the labeler's input size


@dataclass
class DecodeSkip:
    path: str
    reason: str


def decode_input(root: str | Path, rel_path: str, store_hw: tuple[int, int] = PERSON_HW,
                 label_hw: tuple[int, int] = (448, 224), quality: int = STORE_QUALITY,
                 fs_path: str | None = None) -> DecodedImage | DecodeSkip:
    """Read `root/rel_path` (or `root/fs_path`, the file system's name when `rel_path` is its
    escaped form) and produce the stored JPEG and the labeler's input image, recorded as `rel_path`."""
    try:
        data = (Path(root) / (fs_path if fs_path is not None else rel_path)).read_bytes()
    except OSError as exc:
        return DecodeSkip(rel_path, f"cannot read file: {exc.strerror or exc}")
    if not data:
        return DecodeSkip(rel_path, "empty file (0 bytes)")
    result = decode_bytes(data, store_hw, label_hw, quality)
    if isinstance(result, str):
        return DecodeSkip(rel_path, result)
    orig_hw, store_jpeg, label_image = result
    return DecodedImage(rel_path, hashlib.sha1(data).hexdigest(), orig_hw, store_jpeg, label_image)


def decode_bytes(data: bytes, store_hw: tuple[int, int], label_hw: tuple[int, int],
                 quality: int = STORE_QUALITY) -> tuple[tuple[int, int], bytes, Image.Image] | str:
    """(orig_hw, stored JPEG bytes, labeler image), or a reason string when the image is unusable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size  # before `draft` shrinks it
            too = _size_problem(width, height)
            if too:
                return too
            if image.format == "JPEG":
                # Decode at 1/2, 1/4 or 1/8 scale when that still covers every target size.
                side = max(*store_hw, *label_hw)
                image.draft(None, (side, side))
            # Load before reading EXIF: a PNG's getexif() loads the pixels itself and
            # would swallow a decoding error.
            image.load()
            orientation = _exif_orientation(image)
            rotated = orientation in _ROTATING_ORIENTATIONS
            orig_hw = (width, height) if rotated else (height, width)
            upright = _transposed(image) if orientation != 1 else image
            rgb = to_rgb(upright)
    except UnidentifiedImageError:
        return "not an image (format not recognised)"
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return f"too large: {exc}"
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        text = str(exc) or type(exc).__name__
        if "truncated" in text.lower():
            return f"truncated file: {text}"
        return f"cannot decode: {text}"
    except Exception as exc:  # noqa: BLE001 - a broken file must never stop the run
        return f"cannot decode: {type(exc).__name__}: {exc}"
    label_image = rgb.resize((label_hw[1], label_hw[0]), _RESAMPLE, reducing_gap=3.0)
    store_image = label_image if tuple(label_hw) == tuple(store_hw) else rgb.resize(
        (store_hw[1], store_hw[0]), _RESAMPLE, reducing_gap=3.0)
    buf = io.BytesIO()
    store_image.save(buf, "JPEG", quality=quality)
    return orig_hw, buf.getvalue(), label_image


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB from any Pillow mode (see the module docstring for the choices)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(image, dtype=np.float64)
        scale = 257.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 1.0
        gray = np.clip(np.rint(arr / scale), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(image, dtype=np.float64)
        top = 1.0 if arr.max(initial=0) <= 1.0 else 255.0
        return Image.fromarray(np.clip(np.rint(arr / top * 255), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _transposed(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # noqa: BLE001 - keep the pixels as stored rather than skip the image
        return image


def _exif_orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - a broken EXIF block means "no rotation"
        return 1


def _size_problem(w: int, h: int) -> str | None:
    if h * w > MAX_PIXELS:
        return f"too large: {w}x{h} pixels (width x height) exceeds the {MAX_PIXELS // 1_000_000} megapixel limit"
    if max(h, w) > MAX_ORIG_SIDE:
        return f"too long a side: {w}x{h} pixels (width x height); the store records sides up to {MAX_ORIG_SIDE}"
    if min(h, w) < MIN_SIDE:
        return f"too small: {w}x{h} pixels (width x height); both sides must be at least {MIN_SIDE}"
    return None

