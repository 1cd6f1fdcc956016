"""The pictures of the `make reproduce` report, from what its stages left behind (plots.py draws them).

- `scores`: each method's attribute mA, parsing mIoU, re-ID mAP and rank-1 as
  bars with their 95 % intervals (bootstrap over test identities) as error bars;
- `loss_<objective>`: each method's loss per logged step, the raw rows pale
  under their running mean, the store's no-information value dashed, and the
  steps where a run was resumed dotted (`resume_steps`);
- `ladder_attributes` / `ladder_parsing`: downstream score against the label
  quality of the store each CLASP run read (`ladder_figure`);
- `label_quality_parts` / `label_quality_attributes`: IoU per part of every
  dense mode's store, and accuracy per attribute group beside chance;
- `expert_load`: the exported CLASP backbone's load per task prompt, MoE block
  and expert; `expert_load_training`: the load per step during pre-training
  (the metrics rows' `expert_load`, all task prompts together).

A method keeps one colour in every picture (`method_colours`).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from clasp.evaluation.plots import Level, bar_panels, colours, grouped_bars, heat_maps, is_number, line_chart
from clasp.reproduce.report import TRUTH_STORE, Reproduction, results_summary
from clasp.runs.metrics_log import RESUMED_AFTER

OBJECTIVES = {"loss": "total loss", "dino": "DINO loss", "part": "part loss", "attribute": "attribute loss"}
SCORES = {"attr_ma": "attribute mA", "parsing_miou": "parsing mIoU (16x8)", "reid_map": "re-ID mAP",
          "reid_rank1": "re-ID rank-1"}
SMOOTHING = 30  # the running mean of a loss curve spans 1/SMOOTHING of its logged rows
GREY = "#555555"  # chance and other references that belong to no method


def method_colours(reproduction: Reproduction) -> dict[str, str]:
    return colours(list(dict.fromkeys([*reproduction.results, *reproduction.method_store])))


def latest_rows(rows: Sequence[dict]) -> list[dict]:
    """For each step the row written last, in step order: what a truncation on resume would have kept."""
    by_step = {int(row["step"]): row for row in rows if "step" in row}
    return [by_step[step] for step in sorted(by_step)]


def resume_steps(rows: Sequence[dict]) -> list[int]:
    """The last step logged before each resume of the run that wrote `rows`.

    A resumed pre-training says so in its first row (`resumed_after`); a log appended to without truncation
    shows a step sequence that starts again, and the resume came after the last earlier step below its start."""
    found, steps = [], []
    for row in rows:
        if "step" not in row:
            continue
        step = int(row["step"])
        if RESUMED_AFTER in row:
            found.append(int(row[RESUMED_AFTER]))
        elif steps and step <= steps[-1]:
            found.append(max([s for s in steps if s < step], default=0))
        steps.append(step)
    return sorted(set(found))


def running_mean(values: Sequence[float], window: int) -> np.ndarray:
    """Centred mean over `window` values (fewer at the ends)."""
    values = np.asarray(values, dtype=float)
    kernel = np.ones(max(1, min(window, len(values))))
    return np.convolve(values, kernel, "same") / np.convolve(np.ones_like(values), kernel, "same")


def loss_curves(metrics: Mapping[str, Sequence[dict]], key: str) -> dict[str, tuple[list[int], list[float]]]:
    """method → (steps, values) of one objective, for the methods that optimised it (a loss kept at 0 was off)."""
    curves = {}
    for method, rows in metrics.items():
        kept = [r for r in latest_rows(rows) if is_number(r.get(key))]
        if kept and any(float(r[key]) != 0 for r in kept):
            curves[method] = ([int(r["step"]) for r in kept], [float(r[key]) for r in kept])
    return curves


def loss_figure(metrics: Mapping[str, Sequence[dict]], key: str, no_information: Mapping[str, float],
                palette: Mapping[str, str]) -> Figure | None:
    """One objective per step: each method's running mean over its pale rows, no-information value, resumes."""
    curves = loss_curves(metrics, key)
    if not curves:
        return None
    window = max(1, max(len(steps) for steps, _ in curves.values()) // SMOOTHING)
    series = {m: (steps, running_mean(values, window).tolist()) for m, (steps, values) in curves.items()}
    levels = {f"_{m} no information": Level(float(no_information[m])) for m in curves
              if is_number(no_information.get(m))}
    marks = {f"_{m} resumed": resume_steps(metrics[m]) for m in curves if resume_steps(metrics[m])}
    shades = {**palette, **{f"_{m} {what}": palette[m] for m in curves for what in ("no information", "resumed")}}
    keys = {f"mean of {window} logged rows": {"color": GREY, "lw": 1.6},
            "each logged row": {"color": GREY, "lw": 0.7, "alpha": 0.3}} if window > 1 else {}
    if levels:
        keys["no-information value"] = {"color": GREY, "ls": "--"}
    if marks:
        keys["resumed after this step"] = {"color": GREY, "ls": ":"}
    return line_chart(series, f"{OBJECTIVES[key]} per step", "step", OBJECTIVES[key], levels=levels, marks=marks,
                      faint=curves if window > 1 else None, palette=shades, keys=keys)


def loss_figures(reproduction: Reproduction, metrics: Mapping[str, Sequence[dict]]) -> dict[str, Figure]:
    """`loss_<objective>` for every objective some method optimised; part and attribute with their bounds."""
    figures = {}
    for key in OBJECTIVES:
        bound = {m: reproduction.no_information.get(s, {}).get(key) for m, s in reproduction.method_store.items()}
        figure = loss_figure(metrics, key, bound, method_colours(reproduction))
        if figure is not None:
            figures[f"loss_{key}"] = figure
    return figures


def scores_figure(reproduction: Reproduction) -> Figure:
    """One panel per score, one bar per method, the 95 % interval as its error bar, chance as a line."""
    methods = results_summary(reproduction)["methods"]
    panels, intervals = {}, {}
    for key, label in SCORES.items():
        panels[label] = {"": {m: in_percent(s[key]["value"]) for m, s in methods.items()}}
        intervals[label] = {"": {m: (in_percent(s[key]["low"]), in_percent(s[key]["high"]))
                                 for m, s in methods.items()}}
    chance_rank1 = next(iter(reproduction.results.values()))["reid"].get("chance_rank1")
    levels = {SCORES["attr_ma"]: {"chance": Level(50.0)}}
    if is_number(chance_rank1):
        levels[SCORES["reid_rank1"]] = {"chance": Level(in_percent(chance_rank1))}
    return bar_panels(panels, "Scores on the evaluation world (95 % intervals over test identities)", "score (%)",
                      intervals=intervals, levels=levels, palette={**method_colours(reproduction), "chance": GREY},
                      size=(10.0, 4.5))


def in_percent(value) -> float:
    return 100 * float(value) if is_number(value) else float("nan")


LADDER = {"attributes": ("attr_ma", "attr_ma", "attribute mA"), "parsing": ("part_miou", "parsing_miou", "mIoU")}


def ladder_figure(reproduction: Reproduction, key: str) -> Figure | None:
    """Downstream score against the label quality of the store each CLASP run read, baselines as flat lines.

    The truth ladder (noise 0, 0.25, ...) is one line; CLASP on the CLIP's labels is a point on the same axes;
    every score carries its 95 % interval (a band for the baselines). Uniform per-cell noise hurts more than a
    CLIP's coherent errors of the same measured quality, so the line is a lower bound on what labels of a given
    quality buy, not a conversion table. None without ground-truth stores.
    """
    summary = results_summary(reproduction)
    quality, methods, (label_key, score_key, words) = summary["label_quality"], summary["methods"], LADDER[key]
    clip, palette = reproduction.method_store.get("clasp"), method_colours(reproduction)
    truth = sorted(((quality[s][label_key], methods[m][score_key]) for m, s in reproduction.method_store.items()
                    if s.startswith(TRUTH_STORE)), key=lambda point: point[0])
    if not truth:
        return None
    points = {"CLASP, ground truth + noise": truth}
    if clip in quality:  # pre-trained on IMAGES: no truth to score its labels against
        points["CLASP, CLIP labels"] = [(quality[clip][label_key], methods["clasp"][score_key])]
    series = {n: ([in_percent(x) for x, _ in p], [in_percent(s["value"]) for _, s in p]) for n, p in points.items()}
    bounds = {n: ([in_percent(s["low"]) for _, s in p], [in_percent(s["high"]) for _, s in p])
              for n, p in points.items()}
    levels = {m: Level(*(in_percent(methods[m][score_key][k]) for k in ("value", "low", "high")))
              for m in ("dino-only", "random") if m in methods}
    shades = {**palette, "CLASP, ground truth + noise": palette["clasp-truth"], "CLASP, CLIP labels": palette["clasp"]}
    return line_chart(series, f"{key}: downstream score against label quality",
                      f"{words} of the pre-training labels, %", f"downstream {SCORES[score_key]}, %",
                      intervals=bounds, levels=levels, palette=shades, log=False)


def label_quality_figures(stores: Mapping[str, dict], default_mode: str) -> dict[str, Figure]:
    """IoU per part of each CLIP store (ground-truth controls left out), accuracy per attribute group."""
    clip = {name: q for name, q in stores.items() if not name.startswith(TRUTH_STORE)}
    if default_mode not in clip:
        return {}
    named = {name: f"{name} (default)" if name == default_mode else name for name in clip}
    parts = list(clip[default_mode]["parts"]["iou"])
    groups = {part: {named[n]: in_percent(q["parts"]["iou"].get(part)) for n, q in clip.items()} for part in parts}
    attributes = clip[default_mode]["attributes"]
    chosen = {group: {named[default_mode]: in_percent(value), "chance": in_percent(attributes["chance"][group])}
              for group, value in attributes["accuracy"].items()}
    return {"label_quality_parts": grouped_bars(groups, "Pseudo-label IoU per part, by dense mode", "IoU (%)"),
            "label_quality_attributes": grouped_bars(chosen, f"Pseudo-label accuracy per attribute group "
                                                     f"({default_mode})", "accuracy (%)",
                                                     palette={"chance": GREY}, size=(9.0, 4.5))}


def moe_blocks(depth: int, layers: int) -> list[str]:
    """Names of the MoE blocks: they are the last `layers` of `depth` (counted from 1)."""
    return [f"block {depth - layers + k + 1}" for k in range(layers)]


def expert_load_figure(loads: Mapping[str, np.ndarray], depth: int) -> Figure:
    """{task: (MoE layers, experts) share of routed token slots} as one heat map per task prompt."""
    layers, experts = np.shape(next(iter(loads.values())))
    return heat_maps(loads, "Expert load of the CLASP backbone per task prompt", rows=moe_blocks(depth, layers),
                     columns=[str(e) for e in range(experts)], x_label="expert", y_label="MoE block",
                     value_label="share of routed token slots", size=(10.0, 3.6))


def training_load_figure(rows: Sequence[dict], depth: int) -> Figure | None:
    """The metrics rows' expert load (all task prompts together) per step, one heat map per MoE block."""
    kept = [r for r in latest_rows(rows) if r.get("expert_load")]
    if not kept:
        return None
    loads = np.asarray([r["expert_load"] for r in kept], dtype=float)  # steps × layers × experts
    blocks = moe_blocks(depth, loads.shape[1])
    return heat_maps({block: loads[:, k, :].T for k, block in enumerate(blocks)},
                     "Expert load per step during CLASP pre-training (all task prompts)",
                     rows=[str(e) for e in range(loads.shape[2])], steps=[r["step"] for r in kept], x_label="step",
                     y_label="expert", value_label="share of routed token slots", size=(10.0, 3.6))


def report_figures(reproduction: Reproduction, metrics: Mapping[str, Sequence[dict]],
                   loads: Mapping[str, np.ndarray], depth: int) -> dict[str, Figure]:
    """Every picture of the report except the part-mask sheet (`clasp show`'s), by name."""
    figures = {"scores": scores_figure(reproduction), **loss_figures(reproduction, metrics),
               **{f"ladder_{key}": figure for key in LADDER if (figure := ladder_figure(reproduction, key))},
               **label_quality_figures(reproduction.stores, reproduction.default_mode)}
    if loads:
        figures["expert_load"] = expert_load_figure(loads, depth)
    training = training_load_figure(metrics.get("clasp", []), depth)
    if training is not None:
        figures["expert_load_training"] = training
    return figures
