"""Charts (evaluation/plots.py), loss curves with their resumes, and the fine-tuning chart, read back from the
matplotlib objects they return and from the files they write."""

from __future__ import annotations

import importlib.util
import json
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
from matplotlib.container import BarContainer, ErrorbarContainer
from PIL import Image

from clasp.evaluation.plots import DPI, MARK_GID, PALETTE, SIZE, Level, grouped_bars, line_chart, save
from clasp.reproduce.figures import SMOOTHING, latest_rows, loss_figure, resume_steps
from clasp.runs.metrics_log import RESUMED_AFTER, MetricsLog, truncate_jsonl

REPRODUCE = Path(__file__).resolve().parents[1] / "reproduce"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"reproduce_{name}", REPRODUCE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def error_ends(ax) -> list[tuple[float, float]]:
    segments = [s for c in ax.containers if isinstance(c, ErrorbarContainer) for s in c.lines[2][0].get_segments()]
    return [(float(s[0][1]), float(s[1][1])) for s in segments]


def test_line_chart_leaves_out_missing_values_and_draws_the_intervals_it_has(tmp_path: Path) -> None:
    fig = line_chart({"a": ([1, 2, 3], [3.0, 2.0, 1.0]), "b": ([1, 2, 3], [1.0, float("nan"), 2.0])}, "loss",
                     intervals={"a": ([2.5, 1.5, None], [3.5, 2.5, None])}, levels={"floor": Level(0.5, 0.4, 0.6)})
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines["b"].get_xdata()) == [1, 3]  # the NaN point is left out, not drawn at 0
    assert [lines[n].get_color() for n in ("a", "b", "floor")] == list(PALETTE[:3])
    assert error_ends(ax) == [(2.5, 3.5), (1.5, 2.5)]  # the third point has no interval
    assert list(lines["floor"].get_ydata()) == [0.5, 0.5] and ax.get_yscale() == "linear"  # 3 / 0.5 < LOG_SPAN
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["a", "b", "floor"]
    png = save(fig, tmp_path / "lines.svg", "png")  # the suffix follows the format
    assert png.name == "lines.png" and Image.open(png).size == (round(SIZE[0] * DPI), round(SIZE[1] * DPI))


def test_grouped_bars_one_colour_per_name_error_bars_where_given_and_valid_svg(tmp_path: Path) -> None:
    fig = grouped_bars({"instance": {"e0": 0.5, "e1": 0.4}, "part": {"e0": 0.9, "e1": None}}, "load", "share",
                       intervals={"part": {"e0": (0.8, 1.0)}})
    ax = fig.axes[0]
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert [[b.get_height() for b in c] for c in bars] == [[0.5, 0.9], [0.4]]  # no bar for a missing value
    assert [t.get_text() for t in ax.get_xticklabels()] == ["instance", "part"]
    assert error_ends(ax) == [(0.8, 1.0)]
    svg = save(fig, tmp_path / "bars", "svg")
    root = ElementTree.parse(svg).getroot()
    assert svg.suffix == ".svg" and root.tag == "{http://www.w3.org/2000/svg}svg"
    with pytest.raises(ValueError, match="--plot-format 'jpg'"):
        save(fig, tmp_path / "bars", "jpg")


def test_a_resumed_run_says_so_in_its_first_row_and_the_loss_chart_marks_it(tmp_path: Path) -> None:
    values = [2.0, 1.0, 0.5, 0.3, 0.2, 0.1]
    log = MetricsLog(tmp_path, is_main=True)
    for step in range(1, 5):
        log.write({"step": step, "part": values[step - 1]})
    log.close()
    truncate_jsonl(tmp_path / "metrics.jsonl", 3)  # what a resume from the checkpoint of step 3 does
    log = MetricsLog(tmp_path, is_main=True)
    for step in range(4, 7):
        log.write({"step": step, "part": values[step - 1]})
    log.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r.get(RESUMED_AFTER) for r in rows] == [None, None, None, 3, None, None]
    # a log appended to without truncation: steps 5 and 6 again, after a restart from step 4
    rows += [{"step": 5, "part": 0.25}, {"step": 6, "part": 0.15}]
    assert resume_steps(rows) == [3, 4]
    assert [r["part"] for r in latest_rows(rows)] == [2.0, 1.0, 0.5, 0.3, 0.25, 0.15]  # the later row of a step

    ax = loss_figure({"clasp": rows}, "part", {"clasp": 0.7}, {"clasp": PALETTE[0]}).axes[0]
    assert sorted(line.get_xdata()[0] for line in ax.get_lines() if line.get_gid() == MARK_GID) == [3, 4]
    (curve,) = [line for line in ax.get_lines() if line.get_label() == "clasp"]  # too few rows to average
    assert list(curve.get_ydata()) == [2.0, 1.0, 0.5, 0.3, 0.25, 0.15]
    assert ax.get_yscale() == "log"  # 2.0 / 0.15 spans more than LOG_SPAN
    assert [line.get_ydata()[0] for line in ax.get_lines() if line.get_linestyle() == "--" and
            len(line.get_xdata())] == [0.7]  # the no-information value


def test_a_loss_chart_draws_the_running_mean_over_the_rows_and_leaves_out_switched_off_losses() -> None:
    steps = range(1, 10 * SMOOTHING + 1)  # 10 * SMOOTHING rows: a mean of 10
    rows = {"clasp": [{"step": s, "part": 1.0 + (s % 2)} for s in steps],
            "dino-only": [{"step": s, "part": 0.0} for s in steps]}
    fig = loss_figure(rows, "part", {}, {"clasp": PALETTE[0], "dino-only": PALETTE[1]})
    ax = fig.axes[0]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["clasp", "mean of 10 logged rows", "each logged row"]
    (curve,) = [line for line in ax.get_lines() if line.get_label() == "clasp"]
    assert curve.get_ydata()[5:-5] == pytest.approx([1.5] * (len(steps) - 10))  # 1 and 2 alternate
    raw = [line for line in ax.get_lines() if line.get_alpha() == 0.3 and len(line.get_xdata())]
    assert [list(line.get_ydata()) for line in raw] == [[r["part"] for r in rows["clasp"]]]
    assert not [line for line in ax.get_lines() if line.get_gid() == MARK_GID] and ax.get_yscale() == "linear"
    assert loss_figure({"dino-only": rows["dino-only"]}, "part", {}, {"dino-only": PALETTE[1]}) is None


def test_finetune_chart_has_a_panel_per_score_and_a_bar_per_mode() -> None:
    finetune = load_script("finetune")
    results = {method: {"reid": {mode: {"map": 0.1 * k, "rank1": None} for k, mode in enumerate(finetune.MODES)},
                        "attributes": {mode: {"ma": 0.5, "f1": 0.2} for mode in finetune.MODES}}
               for method in finetune.METHODS}
    fig = finetune.results_figure(results, steps=60)
    panels = {ax.get_title(): ax for ax in fig.axes}
    assert list(panels) == list(finetune.SCORES)
    heights = [[b.get_height() for b in c] for c in panels["re-ID mAP"].containers if isinstance(c, BarContainer)]
    assert heights == [[0.0] * 3, [pytest.approx(10.0)] * 3]  # fine-tuned, frozen; one bar per backbone
    assert not [c for c in panels["re-ID rank-1"].containers if isinstance(c, BarContainer) and len(c)]


def test_plot_format_that_is_no_picture_format_is_one_error_line(monkeypatch, capsys) -> None:
    for script in ("run", "finetune"):
        monkeypatch.setattr(sys, "argv", [script, "--plot-format", "jpg"])
        assert load_script(script).main() == 2
        err = capsys.readouterr().err
        assert err.startswith("error: --plot-format 'jpg'") and err.count("\n") == 1, err
