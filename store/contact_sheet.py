"""`clasp show`: a contact sheet to judge pseudo-labels at a glance.

Each sampled image appears twice side by side, plain and with its part mask
overlaid (the label grid upsampled with nearest neighbour, one semi-transparent
colour per part, background left uncoloured), followed by its source path and the
top value of its most confident attribute groups. A legend maps colours to
parts. Pillow only: no plotting library is needed.
"""

from __future__ import annotations

import colorsys
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from clasp.store.attributes import TopValue, top_values
from clasp.store.errors import StoreError
from clasp.store.manifest import ShardEntry
from clasp.store.reader import ShardStore
from clasp.store.reader_config import ContactSheetConfig
from clasp.store.rowcheck import BadDataError, BadRows, image_problem, label_problems

SHEET_NAME = "contact_sheet.png"

# Distinct, saturated colours (Trubetskoy's list), in part-index order from 1;
# more parts than this get evenly spaced hues.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (145, 30, 180), (245, 130, 48),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (0, 128, 128), (170, 110, 40), (128, 0, 0),
)

BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
FAINT_INK = (110, 110, 110)


@dataclass
class Tile:
    shard: str
    row: int
    key: str
    path: str
    image_box: tuple[int, int, int, int]  # (left, top, right, bottom) of the plain image
    overlay_box: tuple[int, int, int, int]  # of the image with the part mask overlaid
    attributes: list[TopValue]


@dataclass
class ContactSheet:
    path: Path
    size: tuple[int, int]  # (width, height) in pixels
    tiles: list[Tile] = field(default_factory=list)
    rows_available: int = 0  # rows the sample was drawn from
    bad_rows: int = 0  # sampled rows left out because they failed a check (on_bad_row=skip)
    notes: list[str] = field(default_factory=list)


def part_colours(num_parts: int) -> list[tuple[int, int, int] | None]:
    """Colour of each part index; None for background (index 0), which stays uncoloured."""
    colours: list[tuple[int, int, int] | None] = [None]
    extra = num_parts - 1 - len(PALETTE)
    for i in range(1, num_parts):
        if i <= len(PALETTE):
            colours.append(PALETTE[i - 1])
        else:
            r, g, b = colorsys.hsv_to_rgb((i - len(PALETTE) - 1) / max(extra, 1), 0.85, 0.95)
            colours.append((int(r * 255), int(g * 255), int(b * 255)))
    return colours


def upsample_nearest(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """The (h, w) label grid at (height, width): display pixel y takes grid row floor(y * h / height)."""
    gh, gw = mask.shape
    rows = np.arange(height) * gh // height
    cols = np.arange(width) * gw // width
    return mask[rows[:, None], cols[None, :]]


def overlay_mask(image: np.ndarray, mask: np.ndarray, colours: list, alpha: float) -> np.ndarray:
    """Part colours blended into a greyscale copy of an (H, W, 3) uint8 image.

    The image is turned grey first so that every colour on the overlay is a
    label, never the clothing or the scene; background cells stay grey. The
    label grid is upsampled by nearest neighbour, so each cell stays a block.
    """
    height, width = image.shape[:2]
    big = upsample_nearest(mask, height, width)
    grey = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    out = np.repeat(grey[..., None], 3, axis=2)
    for index, colour in enumerate(colours):
        if colour is None:
            continue
        where = big == index
        out[where] = (1 - alpha) * out[where] + alpha * np.asarray(colour, np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def make_contact_sheet(config: ContactSheetConfig) -> ContactSheet:
    """Sample `config.n` rows with a seeded RNG, draw the sheet, write `contact_sheet.png` in `config.out`."""
    if config.n < 1:
        raise ValueError("n must be at least 1")
    store = ShardStore.open(config.root, cache=config.cache)
    entries = _pick_shards(store, config.shard)
    offsets, picked = _sample_rows(store, entries, config)
    total = int(offsets[-1])
    vocab = store.manifest.vocab
    bad = BadRows(config.on_bad_row)
    samples = _read_samples(store, entries, offsets, picked, config.attribute_lines, bad)
    if not samples:
        raise StoreError(store.root, f"every sampled row is bad: {bad.note()}")
    layout = _Layout.for_config(config, store.manifest.image_store.hw, len(samples), vocab.part_names)
    sheet = Image.new("RGB", layout.size, BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    colours = part_colours(vocab.num_parts)
    title = (f"{store.location} - {len(samples)} of {total:,} images"
             + (f" in {entries[0].file}" if config.shard is not None else "") + f", seed {config.seed}")
    title = _fit(title, layout.font_title, layout.size[0] - 2 * layout.margin, from_left=True)
    draw.text((layout.margin, layout.margin), title, fill=INK, font=layout.font_title)
    _draw_legend(draw, layout, vocab.part_names, colours)
    tiles = [_draw_tile(sheet, draw, layout, i, sample, colours, config.alpha) for i, sample in enumerate(samples)]
    out_path = _save_png(sheet, config.out)
    return ContactSheet(out_path, sheet.size, tiles, total, bad_rows=bad.count, notes=[bad.note()] if bad.count else [])


def _sample_rows(store: ShardStore, entries: list[ShardEntry], config: ContactSheetConfig) -> tuple[np.ndarray, np.ndarray]:
    """(each shard's first global row, then the total; the sorted global rows picked by the seeded RNG)."""
    offsets = np.cumsum([0] + [e.rows for e in entries])
    total = int(offsets[-1])
    if total == 0:
        where = f"shard {entries[0].file}" if config.shard is not None else "the store"
        raise StoreError(store.root / (entries[0].file if config.shard is not None else "manifest.json"),
                         f"{where} holds no images to show")
    rng = np.random.default_rng(config.seed)
    return offsets, np.sort(rng.choice(total, size=min(config.n, total), replace=False))


def _read_samples(store: ShardStore, entries: list[ShardEntry], offsets: np.ndarray, picked: np.ndarray,
                  attribute_lines: int, bad: BadRows) -> list[tuple]:
    """The picked rows, shard by shard, each shard opened once; bad rows left to `bad`."""
    samples = []
    for s, entry in enumerate(entries):
        local = [int(g - offsets[s]) for g in picked if offsets[s] <= g < offsets[s + 1]]
        if not local:
            continue
        with store.open_shard(entry, check_bytes=True) as shard:
            for row in local:
                sample = _read_sample(shard, row, store.manifest, attribute_lines, bad)
                if sample is not None:
                    samples.append(sample)
    return samples


def _draw_tile(sheet: Image.Image, draw: ImageDraw.ImageDraw, layout: "_Layout", i: int, sample: tuple,
               colours: list, alpha: float) -> Tile:
    """Tile `i`: the plain image (a grey placeholder if it does not decode), the overlay, path and attributes."""
    file, row, key, path, data, mask, tops = sample
    left, top = layout.tile_origin(i)
    plain = _decode(data, layout.image_wh)
    image_box = (left, top, left + layout.image_wh[0], top + layout.image_wh[1])
    overlay_left = left + layout.image_wh[0] + layout.pair_gap
    overlay_box = (overlay_left, top, overlay_left + layout.image_wh[0], top + layout.image_wh[1])
    if plain is None:
        draw.rectangle(image_box, fill=(200, 200, 200))
        draw.text((image_box[0] + 4, image_box[1] + 4), "cannot\ndecode", fill=INK, font=layout.font)
        plain_array = np.full((layout.image_wh[1], layout.image_wh[0], 3), 200, np.uint8)
    else:
        sheet.paste(plain, image_box[:2])
        plain_array = np.asarray(plain)
    sheet.paste(Image.fromarray(overlay_mask(plain_array, mask, colours, alpha)), overlay_box[:2])
    y = top + layout.image_wh[1] + 3
    draw.text((left, y), _fit(path, layout.font, layout.tile_w, from_left=True), fill=FAINT_INK, font=layout.font)
    for t in tops:
        y += layout.line_h
        text = _fit(f"{t.group}: {t.value}  {t.probability:.2f}", layout.font, layout.tile_w)
        draw.text((left, y), text, fill=INK, font=layout.font)
    return Tile(file, row, key, path, image_box, overlay_box, tops)


def _save_png(sheet: Image.Image, out: Path) -> Path:
    """Write `out/contact_sheet.png` through a temp file and a rename."""
    out.mkdir(parents=True, exist_ok=True)
    out_path = out / SHEET_NAME
    tmp = out_path.with_name(out_path.name + ".tmp")
    sheet.save(tmp, format="PNG")
    tmp.replace(out_path)
    return out_path


def _read_sample(shard, row: int, manifest, attribute_lines: int, bad: BadRows) -> tuple | None:
    """One row for a tile, its values checked; None when its labels are bad and `bad` skips it."""
    try:
        rows = shard.read(row, row + 1, fields=("image", "key", "path", "part_mask", "part_conf", "attr_logits"))
    except BadDataError as exc:
        bad.bad(shard.path, exc.rows, exc.detail)
        return None
    problem = label_problems(rows, manifest.vocab.num_parts)[0]
    if problem:
        bad.bad(shard.path, f"row {row}", problem)
        return None
    problem = image_problem(rows.image[0], manifest.image_store.hw)
    if problem:  # skipped: the tile stays, with a grey placeholder saying so, since its labels are good
        bad.bad(shard.path, f"row {row}", problem)
    return (shard.path.name, row, rows.key[0], rows.path[0], rows.image[0], rows.part_mask[0],
            top_values(rows.attr_logits[0], manifest.vocab, attribute_lines))


def _pick_shards(store: ShardStore, shard: str | None) -> list[ShardEntry]:
    if not store.shards:
        raise StoreError(store.root / "manifest.json", "the store lists no shards, nothing to show")
    if shard is None:
        return list(store.shards)
    for entry in store.shards:
        if entry.file == shard:
            return [entry]
    if shard.isdigit() and int(shard) < len(store.shards):
        return [store.shards[int(shard)]]
    raise StoreError(store.root / "manifest.json",
                     f"no shard {shard!r} (give a file name or an index from 0 to {len(store.shards) - 1})")


def _decode(data: bytes, wh: tuple[int, int]) -> Image.Image | None:
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.convert("RGB").resize(wh, Image.Resampling.BILINEAR)
    except Exception:  # noqa: BLE001 - one bad image must not stop the sheet
        return None


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow built without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _text_width(text: str, font) -> float:
    return font.getlength(text)


def _fit(text: str, font, width: float, from_left: bool = False) -> str:
    """Shorten `text` with an ellipsis until it fits `width` pixels (keeping the end for paths)."""
    if _text_width(text, font) <= width:
        return text
    while len(text) > 1:
        text = text[1:] if from_left else text[:-1]
        candidate = "…" + text if from_left else text + "…"
        if _text_width(candidate, font) <= width:
            return candidate
    return "…"


@dataclass
class _Layout:
    """Pixel geometry of the sheet; every size follows from the config and the store's image size."""

    image_wh: tuple[int, int]
    columns: int
    tiles: int
    text_lines: int
    legend_rows: int
    font: object
    font_title: object
    line_h: int
    margin: int = 16
    pair_gap: int = 4
    gutter: int = 20
    legend_swatch: int = 14

    @classmethod
    def for_config(cls, config: ContactSheetConfig, store_hw: tuple[int, int], tiles: int,
                   part_names: list[str]) -> "_Layout":
        h = config.image_height
        w = max(1, round(h * store_hw[1] / store_hw[0]))
        columns = max(1, min(config.columns or min(8, math.ceil(math.sqrt(tiles))), tiles))
        font_size = 13 if w >= 96 else 11
        font = _font(font_size)
        line_h = font_size + 4
        layout = cls((w, h), columns, tiles, 1 + config.attribute_lines, 1, font, _font(15), line_h)
        names = [n for n, _ in _legend_entries(part_names, part_colours(len(part_names)))]
        last_y = _legend_positions(layout, names)[-1][1]
        layout.legend_rows = 1 + (last_y - layout.margin - 24) // (layout.legend_swatch + 8)
        return layout

    @property
    def tile_w(self) -> int:
        return 2 * self.image_wh[0] + self.pair_gap

    @property
    def tile_h(self) -> int:
        return self.image_wh[1] + 3 + self.text_lines * self.line_h

    @property
    def content_w(self) -> int:
        return self.columns * self.tile_w + (self.columns - 1) * self.gutter

    @property
    def header_h(self) -> int:
        return 24 + self.legend_rows * (self.legend_swatch + 8) + 10

    @property
    def size(self) -> tuple[int, int]:
        rows = math.ceil(self.tiles / self.columns)
        return (self.content_w + 2 * self.margin,
                self.margin + self.header_h + rows * self.tile_h + (rows - 1) * self.gutter + self.margin)

    def tile_origin(self, i: int) -> tuple[int, int]:
        r, c = divmod(i, self.columns)
        return (self.margin + c * (self.tile_w + self.gutter),
                self.margin + self.header_h + r * (self.tile_h + self.gutter))


def _legend_entries(part_names: list[str], colours: list) -> list[tuple[str, tuple[int, int, int] | None]]:
    return [("background (uncoloured)", None), *zip(part_names[1:], colours[1:])]


def _legend_positions(layout: "_Layout", names: list[str]) -> list[tuple[int, int]]:
    """Left-to-right flow of (swatch + name) entries, wrapping at the content width."""
    positions, x, row = [], 0, 0
    for name in names:
        w = layout.legend_swatch + 6 + int(_text_width(name, layout.font)) + 22
        if x and x + w > layout.content_w:
            x, row = 0, row + 1
        positions.append((layout.margin + x, layout.margin + 24 + row * (layout.legend_swatch + 8)))
        x += w
    return positions


def _draw_legend(draw: ImageDraw.ImageDraw, layout: "_Layout", part_names: list[str], colours: list) -> None:
    entries = _legend_entries(part_names, colours)
    for (name, colour), (x, y) in zip(entries, _legend_positions(layout, [n for n, _ in entries])):
        draw.rectangle((x, y, x + layout.legend_swatch, y + layout.legend_swatch), fill=colour or (160, 160, 160),
                       outline=INK)
        draw.text((x + layout.legend_swatch + 6, y), name, fill=INK, font=layout.font)
