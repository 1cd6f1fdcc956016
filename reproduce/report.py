"""The report of `make reproduce`: results.md (its pictures: report_figures.py) and the summary keys of results.json.

Everything here reads what the stages left behind (`Reproduction`); nothing runs a model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from clasp.runs.metrics_log import METRICS_FILE
from clasp.common.percent import percent

if TYPE_CHECKING:
    from clasp.reproduce.pipeline import ReproduceConfig

TRUTH_STORE = "truth"  # label_quality key of the ground-truth store; ladder stores are "truth-noise0.25", ...
FINAL_LOSS_ROWS = 10  # logged steps averaged into a run's final loss (the batch-to-batch noise is large)
TITLES = {"clasp": "CLASP on the CLIP's labels", "clasp-truth": "CLASP on ground-truth labels (control: upper bound)",
          "dino-only": "DINO only (no part/attribute loss, no MoE)", "random": "random weights (untrained)"}


def truth_store_name(noise: float) -> str:
    return TRUTH_STORE if noise == 0 else f"{TRUTH_STORE}-noise{noise:g}"


def truth_method_name(noise: float) -> str:
    return f"clasp-{truth_store_name(noise)}"


def method_title(method: str) -> str:
    if method in TITLES:
        return TITLES[method]
    noise = method.rsplit("noise", 1)[-1]
    return f"CLASP on ground-truth labels with noise {noise} (control)"


@dataclass
class Reproduction:
    """What the stages measured, for the report.

    `stores`: label_quality key (dense mode or truth store) → `clasp eval-labels` results;
    `method_store`: which of them each pre-trained method read (random weights read none);
    `no_information`: store → `NoInformationLosses.as_dict()`.
    """

    results: dict[str, dict]
    stores: dict[str, dict]
    default_mode: str
    method_store: dict[str, str]
    no_information: dict[str, dict] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    method_seconds: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: float = 0.0
    pictures: dict[str, str] = field(default_factory=dict)
    hardware: dict = field(default_factory=dict)


def run_metrics(run: Path) -> list[dict]:
    path = run / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def final_losses(rows: list[dict]) -> dict[str, float]:
    """Mean of each loss over the last FINAL_LOSS_ROWS logged steps."""
    last = rows[-FINAL_LOSS_ROWS:]
    return {key: sum(float(r[key]) for r in last) / len(last)
            for key in ("loss", "dino", "part", "attribute") if last and all(key in r for r in last)}


def loss_summary(reproduction: Reproduction, runs: Path) -> dict[str, dict]:
    """method → {part / attribute: {final, no_information[, uniform]}, dino: {final}} for pre-trained methods."""
    summary = {}
    for method, store in reproduction.method_store.items():
        final, bar = final_losses(run_metrics(runs / method)), reproduction.no_information.get(store, {})
        entry = {"dino": {"final": final.get("dino")}}
        if method != "dino-only":
            entry["part"] = {"final": final.get("part"), "no_information": bar.get("part")}
            entry["attribute"] = {"final": final.get("attribute"), "no_information": bar.get("attribute"),
                                  "uniform": bar.get("attribute_uniform")}
        summary[method] = entry
    return summary


def results_summary(reproduction: Reproduction, losses: dict | None = None) -> dict:
    """The keys a program checks: scores as fractions, each method's with its 95 % interval."""
    def scored(block: dict, key: str) -> dict:
        interval = block.get(f"{key}_interval") or {"value": block.get(key), "low": None, "high": None}
        return {k: interval[k] for k in ("value", "low", "high")}

    return {
        "seconds": reproduction.seconds,
        "precision": reproduction.hardware.get("precision"),
        "default_dense_mode": reproduction.default_mode,
        "label_quality": {name: {"part_miou": q["parts"]["mIoU"], "attr_ma": q["attributes"].get("mA")}
                          for name, q in reproduction.stores.items()},
        "methods": {method: {"attr_ma": scored(r["attributes"], "mA"),
                             "parsing_miou": scored(r["parsing"], "mIoU_grid"),
                             "reid_map": scored(r["reid"], "mAP"), "reid_rank1": scored(r["reid"], "rank1"),
                             **({"pose_ap": scored(r["pose"], "ap")} if "pose" in r else {})}
                    for method, r in reproduction.results.items()},
        "method_labels": dict(reproduction.method_store),
        "losses": losses or {},
    }


def precision_words(config: ReproduceConfig, hardware: dict) -> str:
    """e.g. `precision auto → fp32 (CPU capability AVX2, no native bf16; 2 cores)`."""
    if not hardware:
        return f"precision {config.precision}"
    return (f"precision {hardware.get('requested', config.precision)} → {hardware.get('precision', '?')} "
            f"({hardware.get('capability', 'capability not recorded')}; {hardware.get('available_cores', '?')} cores)")


def scored_words(block: dict, key: str) -> str:
    """`61.2 [58.0, 64.1]`: the score and its 95 % interval, in percent."""
    interval = block.get(f"{key}_interval")
    if not interval:
        return percent(block.get(key))
    return f"{percent(interval['value'])} [{percent(interval['low'])}, {percent(interval['high'])}]"


def clip_words(config: ReproduceConfig) -> list[str]:
    if config.clip_model is not None:
        return [f"CLIP: `{config.clip_model}`.", ""]
    return ["**What the CLIP saw.** The labeling CLIP was trained here by `clasp train-clip` on "
            f"{config.corpus_pairs} synthetic image–caption pairs (`clasp synth-corpus`: whole persons with "
            "free-text captions, single items and body regions, bare scenes) drawn from identities, cameras "
            "and random streams disjoint from both worlds. It never saw the evaluation world's images, "
            "and no mask, box or label of any world: only images and their captions. These numbers measure "
            "the method on a synthetic world with a tiny CLIP; results on real data need a real CLIP "
            "(`make reproduce CLIP_MODEL=openai/clip-vit-base-patch16 IMAGES=...`).", ""]


def setting_words(config: ReproduceConfig, hardware: dict) -> list[str]:
    data = (f"`{config.images}`" if config.images else
            f"the pre-training world (seed {config.pretrain_world_seed}, {config.identities} identities x "
            f"{config.images_per_id} images, {config.cameras} cameras: its own identities, cameras and random "
            "streams, none in the evaluation world)")
    settings = ", ".join(f"{k} {v}" for k, v in config.pretrain_settings.items())
    return [f"Pre-training data: {data}. Evaluation: the evaluation world ({config.identities} identities x "
            f"{config.images_per_id} images, {config.cameras} cameras, seed {config.seed}); probes trained on "
            "the lower half of its identities, tested on the rest; each probe reads the backbone through its own "
            "task prompt (attributes: `attribute`, parsing and pose: `part`, re-ID: `instance`; a backbone without MoE has "
            f"one set of features). The demonstration's recipe, the same for every method: preset `{config.preset}`"
            f"{' (' + settings + ')' if settings else ''}, {config.steps} steps of batch {config.batch_size} "
            f"(2 global + {config.local_crops} local crops), lr {config.lr:g} per 256 images, teacher momentum "
            f"{config.momentum_teacher}, {precision_words(config, hardware)}.", ""]


def score_lines(reproduction: Reproduction) -> list[str]:
    lines = ["Scores in percent with a 95 % interval (bootstrap over test identities, 1000 rounds):", "",
             "| method | attribute mA | parsing mIoU (16x8) | parsing mIoU (pixels) | re-ID mAP | re-ID rank-1 "
             "| pretrain s | eval s |", "|" + "---|" * 8]
    for method, r in reproduction.results.items():
        t = reproduction.method_seconds.get(method, {})
        lines.append(f"| {method_title(method)} | {scored_words(r['attributes'], 'mA')} "
                     f"| {scored_words(r['parsing'], 'mIoU_grid')} | {percent(r['parsing']['mIoU_pixel'])} "
                     f"| {scored_words(r['reid'], 'mAP')} | {scored_words(r['reid'], 'rank1')} "
                     f"| {t.get('pretrain', 0):.0f} | {t.get('eval', 0):.0f} |")
    chance = next(iter(reproduction.results.values()))["reid"].get("chance_rank1")
    lines += ["", f"Chance level: attribute mA 50.0 (constant or random predictions); re-ID rank-1 of a random "
              f"ranking {percent(chance)}. The protocol excludes same-camera images of the query's identity."]
    if any("pose" in r for r in reproduction.results.values()):
        lines += ["", "Pose: OKS AP of the frozen pose probe (`part` prompt, linear from the patch tokens to heat "
                  "maps; one person per image, COCO's sigmas), with its 95 % interval, and AR:", "",
                  "| method | pose AP | AP50 | AR |", "|---|---|---|---|"]
        pose = {m: r.get("pose", {}) for m, r in reproduction.results.items()}
        lines += [f"| {method_title(m)} | {scored_words(p, 'ap')} | {percent(p.get('ap50'))} | {percent(p.get('ar'))} |"
                  for m, p in pose.items()]
    if any("market1501" in r for r in reproduction.results.values()):
        lines += ["", "Market-1501 re-ID (query vs bounding_box_test):", "", "| method | mAP | rank-1 |", "|---|---|---|"]
        lines += [f"| {method_title(m)} | {scored_words(r.get('market1501', {}), 'mAP')} "
                  f"| {scored_words(r.get('market1501', {}), 'rank1')} |" for m, r in reproduction.results.items()]
    return lines


def _loss(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def loss_lines(losses: dict[str, dict]) -> list[str]:
    """Each objective's final training loss beside the value of a model that ignores the image."""
    lines = ["Did the objectives teach the backbone? Final training loss (mean of the last "
             f"{FINAL_LOSS_ROWS} logged steps) against its no-information value, the loss of the best prediction "
             "that ignores the image (part: entropy of the store's part labels; attribute: mean KL from each "
             "row's target to the mean target, which is the entropy of the value frequencies for ground truth; "
             "ln k is a uniform guess, shown for reference):", "",
             "| method | part loss | no information | attribute loss | no information | uniform (mean ln k) "
             "| DINO loss |", "|" + "---|" * 7]
    for method, entry in losses.items():
        part, attribute = entry.get("part", {}), entry.get("attribute", {})
        lines.append(f"| {method_title(method)} | {_loss(part.get('final'))} | {_loss(part.get('no_information'))} "
                     f"| {_loss(attribute.get('final'))} | {_loss(attribute.get('no_information'))} "
                     f"| {_loss(attribute.get('uniform'))} | {_loss(entry['dino'].get('final'))} |")
    return lines


def label_quality_lines(stores: dict, default_mode: str) -> list[str]:
    lines = ["Label quality of each store of the pre-training world (`clasp eval-labels` against its ground "
             f"truth, on the label grid; CLASP read `{default_mode}`, `clasp label`'s default; `truth` stores are "
             "`clasp truth-labels` controls):", "",
             "| store | part mIoU | attribute mA | attribute accuracy (mean over groups) |", "|---|---|---|---|"]
    lines += [f"| {name}{' (default)' if name == default_mode else ''} | {percent(q['parts']['mIoU'])} "
              f"| {percent(q['attributes'].get('mA'))} | {percent(q['attributes']['mean_accuracy'])} |"
              for name, q in stores.items()]
    chosen = stores[default_mode]
    lines += ["", f"Per part ({default_mode}):", "", "| part | IoU |", "|---|---|"]
    lines += [f"| {p} | {percent(v)} |" for p, v in chosen["parts"]["iou"].items()]
    lines += ["", f"Per attribute group ({default_mode}; chance is 1 / number of values):", "",
              "| attribute group | accuracy | chance |", "|---|---|---|"]
    lines += [f"| {g} | {percent(v)} | {percent(chosen['attributes']['chance'][g])} |"
              for g, v in chosen["attributes"]["accuracy"].items()]
    return lines


CAPTIONS = {"scores": "Scores per method with their 95 % intervals",
            "loss_loss": "Total loss per step", "loss_dino": "DINO loss per step",
            "loss_part": "Part loss per step", "loss_attribute": "Attribute loss per step",
            "ladder_attributes": "Attribute mA downstream against the attribute mA of the pre-training labels",
            "ladder_parsing": "Parsing mIoU downstream against the part mIoU of the pre-training labels",
            "label_quality_parts": "Pseudo-label IoU per part and dense mode",
            "label_quality_attributes": "Pseudo-label accuracy per attribute group",
            "part_masks": "Pseudo-label part masks (`clasp show`)",
            "expert_load": "Expert load per task prompt of the CLASP backbone",
            "expert_load_training": "Expert load per step during pre-training"}


def render_report(config: ReproduceConfig, reproduction: Reproduction, losses: dict[str, dict]) -> str:
    lines = ["# CLASP reproduction", "", *clip_words(config), *setting_words(config, reproduction.hardware),
             *score_lines(reproduction), "", *loss_lines(losses), "",
             *label_quality_lines(reproduction.stores, reproduction.default_mode)]
    lines += ["", "Wall time per stage (seconds):", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {stage} | {sec:.0f} |" for stage, sec in reproduction.stage_seconds.items()]
    total = reproduction.seconds
    lines += [f"| **total** | **{total:.0f}** ({total / 60:.1f} min) |", ""]
    for key, name in reproduction.pictures.items():
        lines += [f"![{CAPTIONS.get(key, key)}]({name})", ""]
    lines += ["One seed, small worlds and a short schedule: the intervals cover the spread over test identities, "
              "not over training seeds. `clasp export` writes the EMA teacher (momentum "
              f"{config.momentum_teacher} rising to 1 over {config.steps} steps). Raise `STEPS` for a longer schedule.",
              ""]
    return "\n".join(lines)
