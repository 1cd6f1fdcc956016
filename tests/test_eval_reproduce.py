"""Pieces of `make reproduce`: settings, the two worlds, the random baseline, charts, the report."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.colors import to_hex
from matplotlib.container import BarContainer, ErrorbarContainer

from clasp.evaluation.plots import PALETTE
from clasp.reproduce.pipeline import LADDER, ReproduceConfig, run_reproduce, waves, write_random_export
from clasp.reproduce.report import Reproduction, loss_summary, render_report, results_summary
from clasp.datasets.synth.cameras import make_camera
from clasp.datasets.synth.identities import sample_identity
from clasp.hardware import available_cores

METHODS = ("clasp", "clasp-truth", "dino-only", "random")


def test_environment_switches() -> None:
    c = ReproduceConfig.from_env({"CLIP_MODEL": "openai/clip-vit-base-patch16", "IMAGES": "/data/market",
                                  "STEPS": "500", "PRESET": "small"}, out=Path("x"))
    assert (c.clip_model, c.images, c.steps, c.preset, c.out) == (
        "openai/clip-vit-base-patch16", Path("/data/market"), 500, "small", Path("x"))
    d = ReproduceConfig.from_env({})
    assert d.clip_model is None and d.images is None and d.preset == "tiny"
    assert d.methods() == METHODS and c.methods() == ("clasp", "dino-only", "random")  # no truth for real images
    e = ReproduceConfig.from_env({"SEED": "7", "PRETRAIN_WORLD_SEED": "3"}, ladder=LADDER)
    assert (e.seed, e.pretrain_world_seed) == (7, 3)
    assert e.methods() == ("clasp", "clasp-truth", "clasp-truth-noise0.25", "clasp-truth-noise0.5",
                           "clasp-truth-noise0.75", "dino-only", "random")
    with pytest.raises(ValueError, match="must differ"):
        ReproduceConfig.from_env({"SEED": "11"})


def test_the_pretraining_world_shares_no_identity_camera_or_stream_with_the_evaluation_world(vocab) -> None:
    """`clasp synth` keys every stream [seed, stream, ...]: another seed draws other people and other cameras."""
    config = ReproduceConfig()
    assert config.pretrain_world_seed != config.seed

    def people(seed: int) -> list:
        return [dataclasses.replace(sample_identity(seed, pid, vocab), pid=0) for pid in range(config.identities)]

    evaluation, pretraining = people(config.seed), people(config.pretrain_world_seed)
    assert len({repr(i) for i in evaluation}) == config.identities  # the comparison can tell people apart
    assert not any(a == b for a in pretraining for b in evaluation)
    for c in range(config.cameras):
        for d in range(config.cameras):
            theirs, ours = make_camera(config.seed, d), make_camera(config.pretrain_world_seed, c)
            assert not np.array_equal(theirs.background, ours.background)


def test_random_export_loads_with_the_reference_architecture(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from clasp.pretraining import load_backbone
    from clasp.pretraining.backbone import BACKBONE_FORMAT, BACKBONE_VERSION
    from clasp.pretraining.vit import PromptedViT, ViTConfig

    config = ViTConfig(dim=32, depth=2, heads=2, moe_layers=1, experts=2, top_k=1)
    reference = tmp_path / "trained"
    reference.mkdir()
    trained = PromptedViT(config)
    with torch.no_grad():
        trained.cls_token.fill_(3.0)
    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(reference / "model.safetensors"))
    (reference / "config.json").write_text(json.dumps({"format": BACKBONE_FORMAT, "version": BACKBONE_VERSION,
                                                       "architecture": config.to_dict(), "task": "instance"}))
    random_dir = write_random_export(reference, tmp_path / "random", seed=1)
    model = load_backbone(random_dir)
    assert model.backbone.config == config
    assert not torch.allclose(model.backbone.cls_token, torch.full_like(model.backbone.cls_token, 3.0))
    again = load_backbone(write_random_export(reference, tmp_path / "random2", seed=1))
    assert torch.equal(again.backbone.pos_embed, model.backbone.pos_embed)  # seeded
    cls, patches = model(torch.zeros(2, 3, 256, 128, dtype=torch.uint8))
    assert cls.shape == (2, 32) and patches.shape == (2, 128, 32)


def _result(value: float) -> dict:
    interval = {"value": value, "low": value - 0.05, "high": value + 0.05}
    return {"attributes": {"mA": value, "mA_interval": interval},
            "parsing": {"mIoU_grid": value, "mIoU_pixel": value, "mIoU_grid_interval": interval},
            "reid": {"mAP": value, "rank1": float("nan"), "chance_rank1": 0.02, "mAP_interval": interval}}


QUALITY = {mode: {"parts": {"iou": {"background": 0.9, "head": 0.5}, "mIoU": 0.7},
                  "attributes": {"accuracy": {"gender": 0.75}, "chance": {"gender": 0.5}, "mean_accuracy": 0.75,
                                 "mA": 0.8}} for mode in ("maskclip", "naclip")}


def _reproduction(tmp_path: Path) -> Reproduction:
    hardware = {"requested": "auto", "precision": "fp32", "capability": "CPU capability AVX2, no native bf16",
                "available_cores": 2}
    stores = {**QUALITY, "truth": {**QUALITY["naclip"], "parts": {"iou": {}, "mIoU": 1.0}}}
    store_of = {"clasp": "maskclip", "clasp-truth": "truth", "dino-only": "maskclip"}
    for method, part in (("clasp", 0.9), ("clasp-truth", 0.5)):  # 12 logged steps; the last 10 are averaged
        rows = [{"step": s, "loss": 9.0, "dino": 7.0, "part": 2.0 if s < 2 else part, "attribute": 0.3}
                for s in range(12)]
        (tmp_path / method).mkdir()
        (tmp_path / method / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return Reproduction(results={m: _result(0.5 + k / 10) for k, m in enumerate(METHODS)}, stores=stores,
                        default_mode="maskclip", method_store=store_of,
                        no_information={"maskclip": {"part": 0.7, "attribute": 0.2, "attribute_uniform": 1.08},
                                        "truth": {"part": 0.8, "attribute": 1.05, "attribute_uniform": 1.08}},
                        stage_seconds={"label": 10.0, "pretrain": 100.0},
                        method_seconds={"clasp": {"pretrain": 60, "eval": 5}}, seconds=130.0,
                        pictures={"expert_load": "expert_load.png"}, hardware=hardware)


def test_report_and_summary_state_scores_intervals_losses_label_quality_and_precision(tmp_path: Path) -> None:
    reproduction = _reproduction(tmp_path)
    losses = loss_summary(reproduction, tmp_path)
    assert losses["clasp"]["part"] == {"final": pytest.approx(0.9), "no_information": 0.7}
    assert losses["clasp-truth"]["attribute"] == {"final": pytest.approx(0.3), "no_information": 1.05,
                                                  "uniform": 1.08}
    assert set(losses["dino-only"]) == {"dino"}
    text = render_report(ReproduceConfig(), reproduction, losses)
    assert "precision auto → fp32 (CPU capability AVX2, no native bf16; 2 cores)" in text
    assert "never saw the evaluation world's images, and no mask, box or label of any world" in text
    assert "seed 11" in text and "none in the evaluation world" in text
    assert "| CLASP on the CLIP's labels | 50.0 [45.0, 55.0] | 50.0 [45.0, 55.0] | 50.0 " \
           "| 50.0 [45.0, 55.0] | n/a | 60 | 5 |" in text
    assert "| CLASP on ground-truth labels (control: upper bound) | 60.0 [55.0, 65.0]" in text
    assert "| CLASP on the CLIP's labels | 0.900 | 0.700 | 0.300 | 0.200 | 1.080 | 7.000 |" in text
    assert "| maskclip (default) | 70.0 | 80.0 | 75.0 |" in text and "| truth | 100.0 | 80.0 | 75.0 |" in text
    assert "re-ID rank-1 of a random ranking 2.0" in text
    assert "![Expert load per task prompt of the CLASP backbone](expert_load.png)" in text
    assert "| **total** | **130** (2.2 min) |" in text
    real = render_report(ReproduceConfig(clip_model="openai/clip-vit-base-patch16"), reproduction, losses)
    assert "What the CLIP saw" not in real and "CLIP: `openai/clip-vit-base-patch16`" in real

    summary = results_summary(reproduction, losses)
    assert summary["precision"] == "fp32" and summary["default_dense_mode"] == "maskclip"
    assert summary["label_quality"]["naclip"] == {"part_miou": 0.7, "attr_ma": 0.8}
    assert summary["label_quality"]["truth"] == {"part_miou": 1.0, "attr_ma": 0.8}
    assert summary["methods"]["dino-only"]["attr_ma"] == pytest.approx({"value": 0.7, "low": 0.65, "high": 0.75})
    assert summary["methods"]["clasp"]["reid_rank1"]["low"] is None  # no interval recorded: value only
    assert set(summary["methods"]) == set(METHODS) and summary["losses"] is losses


def bar_heights(ax) -> list[list[float]]:
    """Heights of each bar series drawn on `ax` (one list per bar name, in legend order)."""
    return [[bar.get_height() for bar in c] for c in ax.containers if isinstance(c, BarContainer)]


def error_ends(ax) -> list[tuple[float, float]]:
    """(low, high) of every error bar drawn on `ax`."""
    segments = [s for c in ax.containers if isinstance(c, ErrorbarContainer) for s in c.lines[2][0].get_segments()]
    return [(float(s[0][1]), float(s[1][1])) for s in segments]


def test_scores_chart_has_a_bar_per_method_and_its_interval_as_error_bar(tmp_path: Path) -> None:
    from clasp.reproduce.figures import SCORES, scores_figure

    reproduction = _reproduction(tmp_path)
    fig = scores_figure(reproduction)
    panels = {ax.get_title(): ax for ax in fig.axes}
    assert set(panels) == set(SCORES.values())
    for label, key, score in (("attribute mA", "attributes", "mA"), ("parsing mIoU (16x8)", "parsing", "mIoU_grid"),
                              ("re-ID mAP", "reid", "mAP")):
        blocks = [r[key] for r in reproduction.results.values()]
        assert bar_heights(panels[label]) == [[pytest.approx(100 * b[score])] for b in blocks]
        assert error_ends(panels[label]) == [(pytest.approx(100 * b[f"{score}_interval"]["low"]),
                                              pytest.approx(100 * b[f"{score}_interval"]["high"])) for b in blocks]
    assert bar_heights(panels["re-ID rank-1"]) == [[]] * len(METHODS)  # rank-1 is NaN: no bar, never a zero
    chance = [line.get_ydata()[0] for line in panels["re-ID rank-1"].get_lines()]
    assert chance == [pytest.approx(100 * reproduction.results["clasp"]["reid"]["chance_rank1"])]
    colours = [to_hex(c[0].get_facecolor()) for c in panels["re-ID mAP"].containers if isinstance(c, BarContainer)]
    assert colours == list(PALETTE[:len(METHODS)])


def test_ladder_places_each_store_at_its_label_quality_with_intervals(tmp_path: Path) -> None:
    from clasp.reproduce.figures import ladder_figure

    reproduction = _reproduction(tmp_path)
    ax = ladder_figure(reproduction, "parsing").axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    truth, clip = reproduction.results["clasp-truth"]["parsing"], reproduction.results["clasp"]["parsing"]
    assert list(lines["CLASP, ground truth + noise"].get_xydata()[0]) == pytest.approx(
        [100 * reproduction.stores["truth"]["parts"]["mIoU"], 100 * truth["mIoU_grid"]])
    assert list(lines["CLASP, CLIP labels"].get_xydata()[0]) == pytest.approx(
        [100 * reproduction.stores["maskclip"]["parts"]["mIoU"], 100 * clip["mIoU_grid"]])
    assert error_ends(ax) == [(pytest.approx(100 * b["mIoU_grid_interval"]["low"]),
                               pytest.approx(100 * b["mIoU_grid_interval"]["high"])) for b in (truth, clip)]
    for baseline in ("dino-only", "random"):  # flat lines at their score, their interval as a band
        score = reproduction.results[baseline]["parsing"]["mIoU_grid"]
        assert list(lines[baseline].get_ydata()) == pytest.approx([100 * score] * 2)
    assert ax.get_yscale() == "linear"


def test_label_quality_charts_show_each_part_per_store_and_each_group_beside_chance(tmp_path: Path) -> None:
    from clasp.reproduce.figures import label_quality_figures

    reproduction = _reproduction(tmp_path)
    figures = label_quality_figures(reproduction.stores, "maskclip")
    parts = figures["label_quality_parts"].axes[0]
    stores = ("maskclip", "naclip")  # the ground-truth control is left out
    assert [t.get_text() for t in parts.get_xticklabels()] == list(QUALITY["maskclip"]["parts"]["iou"])
    assert bar_heights(parts) == [[pytest.approx(100 * v) for v in QUALITY[s]["parts"]["iou"].values()]
                                  for s in stores]
    assert [t.get_text() for t in figures["label_quality_parts"].legends[0].get_texts()] == [
        "maskclip (default)", "naclip"]
    attributes = figures["label_quality_attributes"].axes[0]
    quality = QUALITY["maskclip"]["attributes"]
    assert bar_heights(attributes) == [[pytest.approx(100 * v) for v in quality["accuracy"].values()],
                                       [pytest.approx(100 * v) for v in quality["chance"].values()]]


def test_report_figures_draw_expert_load_as_heat_maps_equal_to_the_loads(tmp_path: Path) -> None:
    from clasp.reproduce.figures import report_figures

    reproduction = _reproduction(tmp_path)
    rng = np.random.default_rng(0)
    loads = {task: rng.dirichlet(np.ones(3), size=2) for task in ("instance", "part", "attribute")}
    steps = [{"step": s, "loss": 1.0, "expert_load": rng.dirichlet(np.ones(3), size=2).tolist()} for s in (10, 20, 30)]
    figures = report_figures(reproduction, {"clasp": steps, "clasp-truth": []}, loads, depth=6)
    assert {"scores", "loss_loss", "ladder_attributes", "ladder_parsing", "label_quality_parts",
            "label_quality_attributes", "expert_load", "expert_load_training"} <= set(figures)
    maps = figures["expert_load"].axes[:len(loads)]
    assert [ax.get_title() for ax in maps] == list(loads)
    for ax, load in zip(maps, loads.values()):
        np.testing.assert_allclose(ax.images[0].get_array(), load)
    assert [t.get_text() for t in maps[0].get_yticklabels()] == ["block 5", "block 6"]  # the last 2 of 6 blocks
    training = np.asarray([r["expert_load"] for r in steps])  # steps × layers × experts
    for k, ax in enumerate(figures["expert_load_training"].axes[:2]):
        np.testing.assert_allclose(ax.images[0].get_array(), training[:, k, :].T)
        assert ax.get_xlim() == (5, 35)  # a cell per logged step (10, 20, 30), centred on it


def check_reproduction(report: Path, config: ReproduceConfig, modes: tuple[str, ...]) -> dict:
    text = report.read_text()
    assert "| DINO only" in text and "| random weights" in text and "What the CLIP saw" in text
    assert "| CLASP on ground-truth labels (control: upper bound)" in text and "no information" in text
    assert "| method | pose AP | AP50 | AR |" in text
    charts = ("scores", "loss_loss", "expert_load", "expert_load_training", "ladder_attributes", "label_quality_parts")
    for name in (*(f"{chart}.{config.plot_format}" for chart in charts), "part_masks.png"):
        assert (report.parent / name).exists() and f"]({name})" in text, name
    saved = json.loads((report.parent / "results.json").read_text())
    truth = {"truth", *(f"truth-noise{n:g}" for n in config.ladder)}
    assert set(saved["methods"]) == set(config.methods()) and set(saved["label_quality"]) == {*modes, *truth}
    assert saved["label_quality"]["truth"] == {"part_miou": 1.0, "attr_ma": 1.0}
    for method, entry in saved["losses"].items():
        if method == "dino-only":
            continue
        # a tiny CLIP may keep no cell above the confidence threshold: then both part values are 0
        assert entry["part"]["final"] >= 0 and entry["part"]["no_information"] >= 0
        assert 0 < entry["attribute"]["no_information"] <= entry["attribute"]["uniform"] + 1e-6
        if method.startswith("clasp-truth"):  # every cell of the truth is kept, with several parts
            assert entry["part"]["no_information"] > 0.5 and entry["part"]["final"] > 0
    # the methods pre-trained on the pre-training world only; the probes saw the evaluation world only
    def sha1s(world: Path) -> set[str]:
        return {hashlib.sha1(p.read_bytes()).hexdigest() for p in (world / "images").rglob("*.jpg")}

    evaluation, pretraining = sha1s(report.parent / "world"), sha1s(report.parent / "pretrain-world")
    assert evaluation and pretraining and not evaluation & pretraining
    assert saved["details"]["clasp"]["images"] == len(evaluation)
    assert saved["default_dense_mode"] in modes and saved["precision"] in ("fp32", "bf16")
    for scores in saved["methods"].values():
        assert set(scores) == {"attr_ma", "parsing_miou", "reid_map", "reid_rank1", "pose_ap"}
        for key in ("attr_ma", "parsing_miou", "reid_map", "pose_ap"):
            assert scores[key]["low"] <= scores[key]["value"] <= scores[key]["high"], key
    assert 0 < saved["seconds"] and (report.parent / "clip" / "config.json").exists()
    return saved


def test_reproduce_end_to_end_in_miniature(tmp_path: Path) -> None:
    """Every stage on a tiny world, corpus and schedule: corpus, CLIP, two dense modes, both methods."""
    small_model = dict(dim=32, depth=2, heads=2, moe_layers=1, experts=2, top_k=1, dino_out_dim=64,
                       dino_hidden_dim=32, dino_bottleneck_dim=16)
    config = ReproduceConfig(out=tmp_path / "out", identities=8, images_per_id=4, cameras=2, corpus_pairs=60,
                             clip_steps=1, dense_modes=("naive",), steps=1, batch_size=4, local_crops=0,
                             probe_steps=10, sheet_images=2, pretrain_settings=small_model, ladder=(0.5,),
                             parallel_runs=2, plot_format="svg")
    from clasp.labeling.labeler import ClipLabelerConfig

    default = ClipLabelerConfig().dense_mode
    saved = check_reproduction(run_reproduce(config, echo=lambda _: None), config,
                               tuple(dict.fromkeys((default, "naive"))))
    assert saved["default_dense_mode"] == default
    assert 0.3 < saved["label_quality"]["truth-noise0.5"]["attr_ma"] < 0.7
    # two waves of two runs side by side, each run on its share of the cores
    for method in ("clasp", "clasp-truth", "clasp-truth-noise0.5", "dino-only"):
        hardware = json.loads((config.out / "runs" / method / "config.json").read_text())["hardware"]
        assert hardware["torch_threads"] == max(1, available_cores() // 2), method


def test_runs_go_in_waves_of_the_parallel_count() -> None:
    methods = ["clasp", "clasp-truth", "dino-only"]
    assert waves(methods, 2) == [["clasp", "clasp-truth"], ["dino-only"]]
    assert waves(methods, 1) == [[m] for m in methods]
    assert waves(methods, 8) == [methods] and waves(methods, 0) == [[m] for m in methods]


@pytest.mark.slow
def test_reproduce_end_to_end(tmp_path: Path) -> None:
    """The whole pipeline on a small world with every dense mode (several minutes on 2 cores)."""
    from clasp.store.label_choices import DENSE_MODES

    config = ReproduceConfig(out=tmp_path / "out", identities=24, images_per_id=6, corpus_pairs=600, clip_steps=20,
                             steps=4, probe_steps=30, sheet_images=4)
    check_reproduction(run_reproduce(config, echo=lambda _: None), config, DENSE_MODES)
