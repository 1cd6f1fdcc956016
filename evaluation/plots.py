"""Charts for the reports of `make reproduce` and `make reproduce-finetune`, drawn with matplotlib.

Every chart is a `matplotlib.figure.Figure` built with the object-oriented API;
pyplot is never imported: no global list of open figures, no display and no
backend to pick, so drawing is safe off the main thread and on a headless
machine. Charts are returned rather than written, so that a test reads the
drawn lines, bars, error bars and images back from them; `save` writes one as
PNG (the default) or SVG (`--plot-format svg`).

What every chart shares: one colour per name (`colours`; callers pass the same
mapping to every picture so a method keeps its colour), values that are None,
NaN or infinite are left out (never drawn as zero), an interval is an error bar
on a point or a bar and a band around a reference level, a y axis turns
logarithmic when its values span a factor of LOG_SPAN or more, and legends sit
outside the axes where they cannot hide data.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

PLOT_FORMATS = ("png", "svg")
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")  # matplotlib's tab10
SIZE = (8.0, 4.5)  # inches; a 960 x 540 PNG at DPI
DPI = 120
LOG_SPAN = 10.0  # largest / smallest value from which a log scale reads better than a linear one
MARK_GID = "mark"  # gid of the vertical marks (resumes), for readers of the figure or the SVG
CHAR_INCHES = 0.08  # width of a tick label's character, a little over the average at matplotlib's 10 pt
ANNOTATE_CELLS = 80  # heat maps with at most this many cells print each value

Series = tuple[Sequence[float], Sequence[float]]
Bounds = tuple[float, float]


@dataclass(frozen=True)
class Level:
    """A horizontal reference: a baseline's score (its interval drawn as a band) or a loss bound."""

    value: float
    low: float | None = None
    high: float | None = None


def check_plot_format(value: str) -> str:
    if value not in PLOT_FORMATS:
        raise ValueError(f"--plot-format {value!r}: not one of {', '.join(PLOT_FORMATS)}")
    return value


def colours(names: Sequence[str]) -> dict[str, str]:
    """One palette colour per name, in order."""
    return {name: PALETTE[k % len(PALETTE)] for k, name in enumerate(names)}


def is_number(value) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def save(fig: Figure, path: str | Path, plot_format: str = "png") -> Path:
    """Write `fig` at `path` with the format's suffix (an existing .png/.svg suffix is replaced).

    SVG is written without a date, so that the same figure gives the same file."""
    path = Path(path)
    if path.suffix.lower() in (".png", ".svg"):
        path = path.with_suffix("")
    path = path.with_name(f"{path.name}.{check_plot_format(plot_format)}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format=plot_format, dpi=DPI, metadata={"Date": None} if plot_format == "svg" else {})
    return path


def new_figure(panels: int = 1, size: tuple[float, float] = SIZE) -> tuple[Figure, list[Axes]]:
    """A figure with `panels` axes side by side; constrained layout keeps labels and legends inside it."""
    fig = Figure(figsize=size, layout="constrained")
    return fig, list(fig.subplots(1, panels, squeeze=False).flat)


def finish(fig: Figure, title: str, order: Sequence[str] = ()) -> Figure:
    """Title and one legend for the whole figure (each label once, in `order` first), outside the axes:
    on the right of one panel (its title over the axes, clear of the legend), under several."""
    entries: dict[str, object] = {}
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    labels = list(dict.fromkeys([*(n for n in order if n in entries), *entries]))
    handles = [entries[n] for n in labels]
    if len(fig.axes) == 1:
        fig.axes[0].set_title(title)
        if labels:
            fig.legend(handles, labels, loc="outside right upper", fontsize="small")
        return fig
    fig.suptitle(title)
    if labels:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 6), fontsize="small")
    return fig


def wants_log(values: Sequence[float]) -> bool:
    """True when every value is positive and the largest is LOG_SPAN times the smallest or more."""
    shown = [float(v) for v in values if is_number(v)]
    return bool(shown) and min(shown) > 0 and max(shown) / min(shown) >= LOG_SPAN


def log_y(ax: Axes) -> None:
    """A log y axis labelled 0.1, 0.2, 0.5, 1, ... in plain numbers rather than powers of ten."""
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def draw_points(ax: Axes, name: str, series: Series, colour: str, bounds: tuple[Sequence, Sequence] | None) -> None:
    """One line through the finite points; error bars where `bounds` (lows, highs) gives both ends."""
    rows = [(x, y, k) for k, (x, y) in enumerate(zip(*series)) if is_number(x) and is_number(y)]
    xs, ys = [float(x) for x, _, _ in rows], [float(y) for _, y, _ in rows]
    ax.plot(xs, ys, color=colour, label=name, lw=1.6, marker="o" if len(xs) <= 30 else None, ms=4)
    if bounds is None:
        return
    lows, highs = bounds
    bars = [(x, y, lows[k], highs[k]) for x, y, k in rows if is_number(lows[k]) and is_number(highs[k])]
    if bars:
        ax.errorbar([b[0] for b in bars], [b[1] for b in bars], fmt="none", ecolor=colour, capsize=4, elinewidth=1.2,
                    yerr=[[b[1] - b[2] for b in bars], [b[3] - b[1] for b in bars]])


def draw_level(ax: Axes, name: str, level: Level, colour: str) -> None:
    """A dashed horizontal line, with its interval as a pale band."""
    ax.axhline(level.value, color=colour, ls="--", lw=1.3, label=name)
    if is_number(level.low) and is_number(level.high):
        ax.axhspan(level.low, level.high, color=colour, alpha=0.12, lw=0)


def draw_marks(ax: Axes, name: str, xs: Sequence[float], colour: str) -> None:
    """Dotted vertical lines (gid MARK_GID), one legend entry for all."""
    for k, x in enumerate(xs):
        ax.axvline(x, color=colour, ls=":", lw=1.4, gid=MARK_GID, label=name if k == 0 else "_nolegend_")


def line_chart(series: Mapping[str, Series], title: str, x_label: str = "step", y_label: str = "", *,
               intervals: Mapping[str, tuple[Sequence, Sequence]] | None = None,
               levels: Mapping[str, Level] | None = None, marks: Mapping[str, Sequence[float]] | None = None,
               faint: Mapping[str, Series] | None = None, palette: Mapping[str, str] | None = None,
               log: bool | None = None, keys: Mapping[str, dict] | None = None) -> Figure:
    """One line per named series of (xs, ys), with error bars where `intervals` gives a series' (lows, highs).

    `faint`: series drawn thin and pale under the named ones, in the colour of the series of the same name (the
    raw values under a running mean); `levels`: dashed horizontal references; `marks`: dotted vertical lines
    (e.g. the steps where a run was resumed); a name starting with "_" stays out of the legend. `keys`: legend
    entries that explain a line style (label → Line2D properties), with no data. `log` None: a log y axis when
    `wants_log` of the values drawn."""
    palette = {**colours([*series, *(levels or {}), *(marks or {})]), **(palette or {})}
    fig, (ax,) = new_figure()
    for label, style in (keys or {}).items():
        ax.plot([], [], label=label, **style)
    for name, (xs, ys) in (faint or {}).items():
        shown = [(x, y) for x, y in zip(xs, ys) if is_number(x) and is_number(y)]
        ax.plot([x for x, _ in shown], [y for _, y in shown], color=palette.get(name), lw=0.7, alpha=0.3)
    for name, points in series.items():
        draw_points(ax, name, points, palette[name], (intervals or {}).get(name))
    for name, level in (levels or {}).items():
        draw_level(ax, name, level, palette[name])
    for name, xs in (marks or {}).items():
        draw_marks(ax, name, xs, palette[name])
    drawn = [y for _, ys in [*series.values(), *(faint or {}).values()] for y in ys]
    if wants_log(drawn) if log is None else log:
        log_y(ax)
    ax.set(xlabel=x_label, ylabel=y_label)
    ax.grid(alpha=0.3)
    return finish(fig, title, [*series, *(levels or {}), *(marks or {}), *(keys or {})])


def draw_bars(ax: Axes, groups: Mapping[str, Mapping[str, float]], palette: Mapping[str, str],
              intervals: Mapping[str, Mapping[str, Bounds]] | None = None) -> None:
    """Side by side within each group, one bar per name; black error bars where `intervals` has both ends."""
    names = list(dict.fromkeys(name for bars in groups.values() for name in bars))
    width = 0.8 / max(len(names), 1)
    ends = []
    for k, name in enumerate(names):
        offset = (k - (len(names) - 1) / 2) * width
        shown = [(g + offset, bars[name], group) for g, (group, bars) in enumerate(groups.items())
                 if is_number(bars.get(name))]
        ax.bar([x for x, _, _ in shown], [v for _, v, _ in shown], width, color=palette[name], label=name)
        for x, v, group in shown:
            low, high = (intervals or {}).get(group, {}).get(name, (None, None))
            if is_number(low) and is_number(high):
                ends.append((x, v, low, high))
    if ends:
        ax.errorbar([e[0] for e in ends], [e[1] for e in ends], fmt="none", ecolor="black", capsize=4, elinewidth=1,
                    yerr=[[e[1] - e[2] for e in ends], [e[3] - e[1] for e in ends]])
    label_groups(ax, list(groups))


def label_groups(ax: Axes, groups: list[str]) -> None:
    """Group names under the bars: on one line where they fit, else broken between words, else slanted."""
    if groups == [""]:
        ax.set_xticks([])
        return
    fig = ax.get_figure()
    fits = int(ax.get_position().width * fig.get_figwidth() / len(groups) / CHAR_INCHES)
    longest_word = max(len(word) for group in groups for word in group.split())
    if longest_word > fits:
        ax.set_xticks(range(len(groups)), groups, rotation=30, ha="right")
    else:
        ax.set_xticks(range(len(groups)), [textwrap.fill(group, max(fits, longest_word)) for group in groups])


def bar_panels(panels: Mapping[str, Mapping[str, Mapping[str, float]]], title: str, y_label: str = "", *,
               intervals: Mapping[str, Mapping[str, Mapping[str, Bounds]]] | None = None,
               levels: Mapping[str, Mapping[str, Level]] | None = None, palette: Mapping[str, str] | None = None,
               size: tuple[float, float] = SIZE) -> Figure:
    """One panel of grouped bars per name (each with its own y scale): panel → group → bar name → value.

    `intervals`: the same nesting with (low, high) per bar; `levels`: panel → reference lines (e.g. chance)."""
    names = list(dict.fromkeys(n for groups in panels.values() for bars in groups.values() for n in bars))
    names = list(dict.fromkeys([*names, *(n for named in (levels or {}).values() for n in named)]))
    palette = {**colours(names), **(palette or {})}
    fig, axes = new_figure(len(panels), size)
    for ax, (panel, groups) in zip(axes, panels.items()):
        draw_bars(ax, groups, palette, (intervals or {}).get(panel))
        for name, level in (levels or {}).get(panel, {}).items():
            draw_level(ax, name, level, palette[name])
        ax.set_title(panel, fontsize="medium")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel(y_label)
    return finish(fig, title, names)


def grouped_bars(groups: Mapping[str, Mapping[str, float]], title: str, y_label: str = "", *,
                 intervals: Mapping[str, Mapping[str, Bounds]] | None = None,
                 palette: Mapping[str, str] | None = None, size: tuple[float, float] = SIZE) -> Figure:
    """Bars side by side for each named group (group → bar name → value), on one axis."""
    return bar_panels({"": groups}, title, y_label, intervals={"": intervals or {}}, palette=palette, size=size)


def heat_maps(arrays: Mapping[str, np.ndarray], title: str, *, rows: Sequence[str], x_label: str, y_label: str,
              value_label: str, columns: Sequence[str] | None = None, steps: Sequence[float] | None = None,
              size: tuple[float, float] = SIZE) -> Figure:
    """One panel per named 2-D array (rows × columns), all on one colour scale from 0 to the largest value.

    Columns are named by `columns` (small maps print each cell's value) or spread evenly over `steps`."""
    fig, axes = new_figure(len(arrays), size)
    top = max([float(np.nanmax(a)) for a in arrays.values() if np.size(a)] + [1e-9])
    image = None
    for ax, (name, array) in zip(axes, arrays.items()):
        array = np.asarray(array, dtype=float)
        extent = None if steps is None else (*centred_span(steps), len(array) - 0.5, -0.5)
        image = ax.imshow(array, vmin=0, vmax=top, cmap="viridis", aspect="auto", interpolation="nearest",
                          extent=extent)
        ax.set_yticks(range(len(rows)), rows if ax is axes[0] else [])
        if columns is not None:
            ax.set_xticks(range(len(columns)), columns)
            annotate(ax, array, top)
        ax.set(title=name, xlabel=x_label)
    axes[0].set_ylabel(y_label)
    fig.colorbar(image, ax=axes, label=value_label)
    fig.suptitle(title)
    return fig


def centred_span(steps: Sequence[float]) -> tuple[float, float]:
    """x limits that centre each of evenly spread cells on its step (one step: a cell of width 1)."""
    half = (steps[-1] - steps[0]) / (len(steps) - 1) / 2 if len(steps) > 1 else 0.5
    return steps[0] - half, steps[-1] + half


def annotate(ax: Axes, array: np.ndarray, top: float) -> None:
    """Each cell's value, dark on light cells and light on dark ones."""
    if array.size > ANNOTATE_CELLS:
        return
    for (r, c), value in np.ndenumerate(array):
        ax.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize="x-small",
                color="black" if value > 0.6 * top else "white")
