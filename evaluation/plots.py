"""Small charts drawn with PIL only (no plotting library): line charts and grouped bars.

Enough for a reproduction report: axes with a few tick labels, one colour per
series, a legend. Values that are NaN or infinite are skipped.
"""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

PALETTE = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127))
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 64, 16, 36, 40


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default()


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    if not math.isfinite(low) or not math.isfinite(high) or high <= low:
        return [low]
    return [low + (high - low) * i / (count - 1) for i in range(count)]


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def line_chart(series: dict[str, tuple[list[float], list[float]]], path: str | Path, title: str,
               x_label: str = "step", size: tuple[int, int] = (640, 360)) -> Path:
    """One line per named series of (xs, ys); written as PNG at `path`."""
    width, height = size
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    font = _font()
    points = [(x, y) for xs, ys in series.values() for x, y in zip(xs, ys) if math.isfinite(x) and math.isfinite(y)]
    x0, y0, x1, y1 = MARGIN_LEFT, MARGIN_TOP, width - MARGIN_RIGHT, height - MARGIN_BOTTOM
    draw.text((x0, 10), title, fill="black", font=font)
    draw.rectangle((x0, y0, x1, y1), outline=(120, 120, 120))
    if points:
        xmin, xmax = min(p[0] for p in points), max(p[0] for p in points)
        ymin, ymax = min(p[1] for p in points), max(p[1] for p in points)
        if xmax == xmin:
            xmax = xmin + 1
        if ymax == ymin:
            ymax = ymin + 1
        sx = lambda x: x0 + (x - xmin) / (xmax - xmin) * (x1 - x0)  # noqa: E731
        sy = lambda y: y1 - (y - ymin) / (ymax - ymin) * (y1 - y0)  # noqa: E731
        for t in _ticks(ymin, ymax):
            draw.line((x0 - 4, sy(t), x0, sy(t)), fill="black")
            draw.text((4, sy(t) - 5), _fmt(t), fill="black", font=font)
        x_ticks = _ticks(xmin, xmax)
        if all(float(x).is_integer() for x, _ in points):  # steps: whole-number ticks only
            x_ticks = sorted({float(round(t)) for t in x_ticks})
        for t in x_ticks:
            draw.line((sx(t), y1, sx(t), y1 + 4), fill="black")
            draw.text((sx(t) - 10, y1 + 6), _fmt(t), fill="black", font=font)
        for k, (name, (xs, ys)) in enumerate(series.items()):
            colour = PALETTE[k % len(PALETTE)]
            line = [(sx(x), sy(y)) for x, y in zip(xs, ys) if math.isfinite(x) and math.isfinite(y)]
            if len(line) > 1:
                draw.line(line, fill=colour, width=2)
            elif line:
                draw.ellipse((line[0][0] - 2, line[0][1] - 2, line[0][0] + 2, line[0][1] + 2), fill=colour)
            draw.rectangle((x1 - 150, y0 + 8 + 14 * k, x1 - 140, y0 + 16 + 14 * k), fill=colour)
            draw.text((x1 - 135, y0 + 6 + 14 * k), name, fill="black", font=font)
    draw.text(((x0 + x1) // 2 - 10, height - 16), x_label, fill="black", font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def grouped_bars(groups: dict[str, list[float]], path: str | Path, title: str, bar_names: list[str],
                 size: tuple[int, int] = (640, 360)) -> Path:
    """Bars side by side for each named group (e.g. one group per task, one bar per expert)."""
    width, height = size
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    font = _font()
    x0, y0, x1, y1 = MARGIN_LEFT, MARGIN_TOP, width - MARGIN_RIGHT, height - MARGIN_BOTTOM
    draw.text((x0, 10), title, fill="black", font=font)
    draw.rectangle((x0, y0, x1, y1), outline=(120, 120, 120))
    top = max([v for vals in groups.values() for v in vals if math.isfinite(v)] + [1e-9])
    for t in _ticks(0.0, top):
        y = y1 - t / top * (y1 - y0)
        draw.line((x0 - 4, y, x0, y), fill="black")
        draw.text((4, y - 5), _fmt(t), fill="black", font=font)
    slot = (x1 - x0) / max(len(groups), 1)
    for g, (name, values) in enumerate(groups.items()):
        bar = slot * 0.8 / max(len(values), 1)
        for k, v in enumerate(values):
            if not math.isfinite(v):
                continue
            left = x0 + g * slot + slot * 0.1 + k * bar
            draw.rectangle((left, y1 - v / top * (y1 - y0), left + bar - 1, y1), fill=PALETTE[k % len(PALETTE)])
        draw.text((x0 + g * slot + slot * 0.4, y1 + 6), name, fill="black", font=font)
    for k, name in enumerate(bar_names):
        draw.rectangle((x1 - 110, y0 + 8 + 14 * k, x1 - 100, y0 + 16 + 14 * k), fill=PALETTE[k % len(PALETTE)])
        draw.text((x1 - 95, y0 + 6 + 14 * k), name, fill="black", font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
