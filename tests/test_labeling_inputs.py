"""Image discovery and decoding: every kind of input gets a defined outcome."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clasp.labeling.decode import MAX_PIXELS, MIN_SIDE, DecodedImage, DecodeSkip, decode_bytes, decode_input
from clasp.labeling.discover import discover_images
from clasp.labeling.errors import LabelingError

STORE_HW, LABEL_HW = (256, 128), (64, 32)


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def decoded(data: bytes) -> tuple[tuple[int, int], np.ndarray, np.ndarray]:
    result = decode_bytes(data, STORE_HW, LABEL_HW)
    assert not isinstance(result, str), result
    orig_hw, jpeg, label_image = result
    return orig_hw, np.asarray(Image.open(io.BytesIO(jpeg))), np.asarray(label_image)


def test_discover_is_recursive_sorted_case_insensitive_and_posix(tmp_path: Path) -> None:
    for rel in ["b/2.JPG", "a/1.png", "a/z/3.WebP", "ünï/ß.jpeg", "c.bmp", "notes.txt", "x.gif", "a/raw.tiff"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x" * 3)
    found = discover_images(tmp_path)
    assert [f.path for f in found] == ["a/1.png", "a/z/3.WebP", "b/2.JPG", "c.bmp", "ünï/ß.jpeg"]
    assert all(f.size == 3 and f.mtime_ns > 0 for f in found)


@pytest.mark.parametrize("case", ["missing", "file", "empty", "no-images"])
def test_discover_refuses_unusable_folders(tmp_path: Path, case: str) -> None:
    target = tmp_path / "images"
    if case == "file":
        target.write_bytes(b"")
    elif case == "empty":
        target.mkdir()
    elif case == "no-images":
        target.mkdir()
        (target / "readme.txt").write_text("hi")
    with pytest.raises(LabelingError, match=str(target)):
        discover_images(target)


def test_rgb_jpeg_is_resized_to_store_and_label_size() -> None:
    rgb = np.zeros((300, 150, 3), np.uint8)
    rgb[:150] = (200, 30, 30)  # red top half, black bottom half
    orig_hw, store, label = decoded(encode(Image.fromarray(rgb), "JPEG", quality=95))
    assert orig_hw == (300, 150)
    assert store.shape == (*STORE_HW, 3) and label.shape == (*LABEL_HW, 3)
    assert abs(int(store[10, 64, 0]) - 200) < 8 and store[-10, 64].max() < 8


def test_exif_rotation_is_applied_and_orig_hw_is_upright() -> None:
    rgb = np.zeros((100, 200, 3), np.uint8)  # stored landscape: left half white
    rgb[:, :100] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise
    orig_hw, store, _ = decoded(encode(Image.fromarray(rgb), "JPEG", quality=95, exif=exif.tobytes()))
    assert orig_hw == (200, 100)
    # After a clockwise turn the white (left) half is on top.
    assert store[:100].mean() > 240 and store[-100:].mean() < 15


def test_modes_end_as_rgb() -> None:
    grey16 = Image.fromarray(np.full((64, 32), 40000, np.uint16))
    _, store16, _ = decoded(encode(grey16, "PNG"))
    assert abs(store16.mean() - 40000 / 257) < 2  # scaled by range, not clipped to white

    cmyk = Image.new("CMYK", (32, 64), (0, 255, 255, 0))  # pure red in CMYK
    _, store_cmyk, _ = decoded(encode(cmyk, "JPEG", quality=95))
    assert store_cmyk[..., 0].mean() > 200 and store_cmyk[..., 1].mean() < 40

    palette = Image.new("RGB", (32, 64), (0, 0, 255)).convert("P")
    _, store_p, _ = decoded(encode(palette, "PNG"))
    assert store_p[..., 2].mean() > 230 and store_p[..., 0].mean() < 20

    rgba = np.zeros((64, 32, 4), np.uint8)
    rgba[:32] = (0, 255, 0, 255)  # opaque green top, fully transparent (black) bottom
    _, store_a, _ = decoded(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert store_a[:100, :, 1].mean() > 240 and store_a[:100, :, 0].mean() < 15
    assert store_a[-100:].mean() > 245  # composited on white, not black

    grey = Image.new("L", (32, 64), 77)
    _, store_l, _ = decoded(encode(grey, "BMP"))
    assert store_l.shape == (*STORE_HW, 3) and abs(store_l.mean() - 77) < 2


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` (a decompression bomb's shape)."""
    data = bytearray(encode(Image.new("1", (1, 1)), "PNG"))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def corrupt_png() -> bytes:
    """A PNG with a valid header and checksums whose compressed pixel data is garbage."""
    png = bytearray(encode(Image.fromarray(np.random.default_rng(8).integers(0, 255, (160, 80, 3), np.uint8)), "PNG"))
    at = png.index(b"IDAT")
    size = struct.unpack(">I", png[at - 4:at])[0]
    data = bytearray(png[at + 4:at + 4 + size])
    data[100:400] = bytes(range(256)) + bytes(44)
    png[at + 4:at + 4 + size] = data
    png[at + 4 + size:at + 8 + size] = struct.pack(">I", zlib.crc32(b"IDAT" + bytes(data)))
    return bytes(png)


def test_bad_inputs_become_reasons() -> None:
    good = encode(Image.new("RGB", (64, 128), (1, 2, 3)), "JPEG")
    cases = {
        "truncated": (good[: len(good) // 2], "truncated"),
        "not an image": (b"GIF89 definitely not", "not an image"),
        "corrupt header": (b"\xff\xd8\xff" + bytes(2000), "not an image"),
        "corrupt data": (corrupt_png(), "cannot decode"),
        "tiny": (encode(Image.new("RGB", (5, 3)), "PNG"), "too small: 5x3"),
        "bomb": (png_header_only(20000, 20000), "too large"),
    }
    for name, (data, expected) in cases.items():
        result = decode_bytes(data, STORE_HW, LABEL_HW)
        assert isinstance(result, str) and expected in result, (name, result)


def test_size_limits_are_inclusive_at_the_boundary() -> None:
    ok = decode_bytes(encode(Image.new("RGB", (MIN_SIDE, MIN_SIDE)), "PNG"), STORE_HW, LABEL_HW)
    assert not isinstance(ok, str)
    assert MAX_PIXELS >= 8000 * 8000


def test_huge_jpeg_is_labeled_via_draft(tmp_path: Path) -> None:
    big = encode(Image.new("L", (8000, 8000), 90), "JPEG", quality=75)
    (tmp_path / "huge.jpg").write_bytes(big)
    result = decode_input(tmp_path, "huge.jpg", STORE_HW, LABEL_HW)
    assert isinstance(result, DecodedImage)
    assert result.orig_hw == (8000, 8000)
    assert abs(np.asarray(Image.open(io.BytesIO(result.store_jpeg))).mean() - 90) < 2


def test_decode_input_keys_by_sha1_and_reports_empty_and_unreadable(tmp_path: Path) -> None:
    data = encode(Image.new("RGB", (32, 64), (9, 9, 9)), "PNG")
    (tmp_path / "a.png").write_bytes(data)
    (tmp_path / "empty.jpg").write_bytes(b"")
    result = decode_input(tmp_path, "a.png", STORE_HW, LABEL_HW)
    import hashlib

    assert isinstance(result, DecodedImage) and result.key == hashlib.sha1(data).hexdigest()
    assert decode_input(tmp_path, "empty.jpg") == DecodeSkip("empty.jpg", "empty file (0 bytes)")
    gone = decode_input(tmp_path, "gone.jpg")
    assert isinstance(gone, DecodeSkip) and gone.reason.startswith("cannot read file")
    if os.name == "posix" and os.geteuid() != 0:
        (tmp_path / "locked.png").write_bytes(data)
        os.chmod(tmp_path / "locked.png", 0)
        assert decode_input(tmp_path, "locked.png").reason.startswith("cannot read file")
