"""`make reproduce`: the whole pipeline and two baselines in one run, with a report.

synthetic world -> (`clasp synth-corpus` -> `clasp train-clip`) -> `clasp label` (every dense mode, each
scored by `clasp eval-labels`) -> `clasp pretrain` -> `clasp export` -> `clasp eval`, plus, trained and
evaluated in the same run:
- **random**: the same backbone architecture with its initial random weights, never trained;
- **DINO only**: `clasp pretrain --w-part 0 --w-attr 0 --moe-layers 0` for the same steps.

Every stage runs as its own `clasp` command (so the wall times are those a user
sees), logging to OUT/logs/. The report is OUT/results.md with PNGs beside it,
and OUT/results.json for programs (`results_summary` names its keys).

Environment switches (read by `ReproduceConfig.from_env`):
CLIP_MODEL (hub id or folder; default: a tiny CLIP trained here on a synthetic caption corpus),
IMAGES (a folder of person images to pre-train on; default: the synthetic world;
a Market-1501 folder is also used for a re-ID evaluation), STEPS, PRESET.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

from clasp.evaluation.market1501 import REQUIRED_PARTS
from clasp.pretraining.layout import METRICS_FILE
from clasp.store.label_choices import DENSE_MODES
from clasp.store.percent import percent

METHODS = ("clasp", "dino-only", "random")
IN_TREE_CLIP_SIZE = "224x112"  # `clasp train-clip`'s input size: the labeler looks where the CLIP learned to
METHOD_TITLES = {"clasp": "CLASP (part + attribute + DINO, PC-MoE)", "dino-only": "DINO only (no part/attribute loss, no MoE)",
                 "random": "random weights (untrained)"}


@dataclass
class ReproduceConfig:
    out: Path = Path("reproduce/out")
    identities: int = 200
    images_per_id: int = 6
    cameras: int = 4
    seed: int = 0
    clip_model: str | None = None  # None: a tiny CLIP trained here on a synthetic caption corpus
    corpus_pairs: int = 12000  # image-caption pairs of that corpus (`clasp synth-corpus --pairs`)
    clip_steps: int | None = None  # `clasp train-clip --steps`; None: its default
    # `clasp label --clip-size`; None: 224x112 (where the in-tree CLIP learned to look) or,
    # with CLIP_MODEL, the command's own default
    label_clip_size: str | None = None
    dense_modes: tuple[str, ...] = DENSE_MODES  # every mode is scored against the truth; the default is trained on
    images: Path | None = None  # None: pre-train on the synthetic world
    # A step of preset tiny at batch 16 (2 + 2 crops) takes ~3-3.6 s (CLASP) and ~2-2.5 s
    # (DINO only) on 2 AVX2 cores in fp32: 150 steps of both are 12-15 minutes, which
    # with the corpus, the CLIP (~3-4 min), labeling and evaluation (~2 min) fits 25
    # minutes (18.2 measured on an idle AVX2 machine).
    steps: int = 150
    preset: str = "tiny"
    batch_size: int = 16
    local_crops: int = 2
    precision: str = "auto"  # resolved by each stage on its device (clasp.hardware)
    # A short schedule needs a faster teacher than DINO's 0.996, or the exported
    # EMA teacher stays near its initialisation.
    momentum_teacher: float = 0.99
    label_batch_size: int = 32
    pretrain_settings: dict = field(default_factory=dict)  # extra `clasp pretrain --config` keys, e.g. {"depth": 2}
    probe_steps: int = 300
    sheet_images: int = 12

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides) -> "ReproduceConfig":
        env = dict(os.environ if env is None else env)
        values: dict = {}
        if env.get("CLIP_MODEL"):
            values["clip_model"] = env["CLIP_MODEL"]
        if env.get("IMAGES"):
            values["images"] = Path(env["IMAGES"])
        if env.get("STEPS"):
            values["steps"] = int(env["STEPS"])
        if env.get("PRESET"):
            values["preset"] = env["PRESET"]
        values.update(overrides)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


@dataclass
class StageTimes:
    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, value: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + value


class StageFailed(RuntimeError):
    pass


def run_clasp(args: list[str], log: Path, times: StageTimes, stage: str, echo=print) -> None:
    """Run one `clasp` command in a subprocess, its output to `log`; raise with the log's tail on failure."""
    log.parent.mkdir(parents=True, exist_ok=True)
    echo(f"[{stage}] clasp {' '.join(args)}")
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as fh:
        proc = subprocess.run([sys.executable, "-m", "clasp.cli", *args], stdout=fh, stderr=subprocess.STDOUT)
    times.add(stage, time.perf_counter() - start)
    if proc.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").replace("\r", "\n").strip().splitlines()[-5:]
        raise StageFailed(f"stage {stage} failed (exit {proc.returncode}); see {log}:\n" + "\n".join(tail))


def write_random_export(reference: Path, out: Path, seed: int = 0) -> Path:
    """An export with the reference's architecture and freshly initialised weights (the untrained baseline)."""
    import torch
    from safetensors.torch import save_file

    from clasp.pretraining.backbone import CONFIG_FILE, WEIGHTS_FILE
    from clasp.pretraining.vit import PromptedViT, ViTConfig

    description = json.loads((reference / CONFIG_FILE).read_text(encoding="utf-8"))
    torch.manual_seed(seed)
    model = PromptedViT(ViTConfig.from_dict(description["architecture"]))
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / WEIGHTS_FILE))
    description.update({"weights": "random initialisation (untrained baseline)", "source": {"seed": seed}})
    (out / CONFIG_FILE).write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")
    return out


def _metrics(run: Path) -> list[dict]:
    path = run / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


class Stages:
    """Runs `clasp` commands as the stages of one reproduction, timing each stage and method."""

    def __init__(self, out: Path, echo=print) -> None:
        self.out, self.logs, self.echo = out, out / "logs", echo
        self.times = StageTimes()
        self.method_times: dict[str, dict[str, float]] = {m: {} for m in METHODS}

    def clasp(self, stage: str, log_name: str, *args: str, method: str | None = None) -> None:
        start = time.perf_counter()
        run_clasp(list(args), self.logs / f"{log_name}.log", self.times, stage, self.echo)
        if method is not None:
            spent = self.method_times[method]
            spent[stage] = spent.get(stage, 0.0) + time.perf_counter() - start


def make_clip(config: ReproduceConfig, stages: Stages) -> str:
    """The CLIP that labels: `CLIP_MODEL`, or one trained here on a synthetic caption corpus."""
    if config.clip_model is not None:
        return config.clip_model
    corpus, clip = stages.out / "corpus", stages.out / "clip"
    stages.clasp("corpus", "synth-corpus", "synth-corpus", "--out", str(corpus), "--pairs", str(config.corpus_pairs),
                 "--seed", str(config.seed))
    steps = ["--steps", str(config.clip_steps)] if config.clip_steps is not None else []
    stages.clasp("train-clip", "train-clip", "train-clip", "--corpus", str(corpus), "--out", str(clip),
                 "--seed", str(config.seed), *steps)
    return str(clip)


def clip_size_flag(config: ReproduceConfig) -> list[str]:
    if config.label_clip_size is not None:
        return ["--clip-size", config.label_clip_size]
    return [] if config.clip_model is not None else ["--clip-size", IN_TREE_CLIP_SIZE]


def label_every_mode(config: ReproduceConfig, stages: Stages, clip: str, world: Path) -> tuple[Path, str, dict]:
    """Label the world with `clasp label`'s default dense mode and then every other, scoring each against the truth.

    Returns the default mode's shards (the ones pre-training reads), that mode, and {mode: eval-labels results}.
    """
    def label(shards: Path, mode: str | None) -> None:
        stages.clasp("label", f"label-{shards.name}", "label", "--images", str(world / "images"), "--out", str(shards),
                     "--clip-model", clip, *clip_size_flag(config), "--batch-size", str(config.label_batch_size),
                     "--precision", config.precision, "--force", *(["--dense-mode", mode] if mode else []))

    default = stages.out / "shards" / "default"
    label(default, None)
    default_mode = json.loads((default / "manifest.json").read_text(encoding="utf-8"))["clip"]["dense_mode"]
    quality: dict[str, dict] = {}
    for mode in dict.fromkeys((default_mode, *config.dense_modes)):
        shards = default if mode == default_mode else stages.out / "shards" / mode
        if mode != default_mode:
            label(shards, mode)
        target = stages.out / "eval" / f"label_quality-{mode}.json"
        stages.clasp("eval-labels", f"eval-labels-{mode}", "eval-labels", "--shards", str(shards), "--truth",
                     str(world), "--out", str(target))
        quality[mode] = json.loads(target.read_text(encoding="utf-8"))
    return default, default_mode, quality


def pretrain_and_export(config: ReproduceConfig, stages: Stages, shards: Path) -> None:
    settings = []
    if config.pretrain_settings:  # keys only a config file takes (model sizes, DINO head), e.g. for a quick check
        path = stages.out / "pretrain-settings.json"
        path.write_text(json.dumps(config.pretrain_settings), encoding="utf-8")
        settings = ["--config", str(path)]
    common = [*settings, "--shards", str(shards), "--preset", config.preset, "--steps", str(config.steps),
              "--batch-size", str(config.batch_size), "--local-crops", str(config.local_crops),
              "--precision", config.precision, "--momentum-teacher", str(config.momentum_teacher),
              "--save-every", str(config.steps), "--log-every", "1", "--seed", str(config.seed), "--force"]
    variants = {"clasp": [], "dino-only": ["--w-part", "0", "--w-attr", "0", "--moe-layers", "0"]}
    for method, extra in variants.items():
        run = stages.out / "runs" / method
        stages.clasp("pretrain", f"pretrain-{method}", "pretrain", "--out", str(run), *common, *extra, method=method)
        stages.clasp("export", f"export-{method}", "export", str(run), "--out", str(stages.out / "exports" / method),
                     method=method)
    t0 = time.perf_counter()
    write_random_export(stages.out / "exports" / "clasp", stages.out / "exports" / "random", config.seed)
    stages.times.add("export", time.perf_counter() - t0)


def evaluate_methods(config: ReproduceConfig, stages: Stages, world: Path) -> dict[str, dict]:
    """`clasp eval` of every method's export, each probe through its own task prompt."""
    market = Path(config.images) if config.images is not None and all(
        (Path(config.images) / p).is_dir() for p in REQUIRED_PARTS) else None
    results: dict[str, dict] = {}
    for method in METHODS:
        export, target = stages.out / "exports" / method, stages.out / "eval" / f"{method}.json"
        stages.clasp("eval", f"eval-{method}", "eval", "--backbone", str(export), "--data", str(world), "--out",
                     str(target), "--probe-steps", str(config.probe_steps), "--precision", config.precision,
                     "--task-prompt", "per-probe", method=method)
        results[method] = json.loads(target.read_text(encoding="utf-8"))
        if market is not None:
            target = stages.out / "eval" / f"{method}-market1501.json"
            stages.clasp("eval", f"eval-{method}-market", "eval", "--backbone", str(export), "--data", str(market),
                         "--out", str(target), "--task-prompt", "per-probe", method=method)
            results[method]["market1501"] = json.loads(target.read_text(encoding="utf-8"))["reid"]
    return results


def run_reproduce(config: ReproduceConfig, echo=print) -> Path:
    """Run everything into `config.out`; return the path of results.md."""
    out = Path(config.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    stages = Stages(out, echo)
    total_start = time.perf_counter()
    world = out / "world"
    stages.clasp("synth", "synth", "synth", "--out", str(world), "--identities", str(config.identities),
                 "--images-per-id", str(config.images_per_id), "--cameras", str(config.cameras),
                 "--seed", str(config.seed))
    clip = make_clip(config, stages)
    world_shards, default_mode, quality = label_every_mode(config, stages, clip, world)
    train_shards = world_shards
    if config.images is not None:
        train_shards = out / "shards-images"
        stages.clasp("label", "label-images", "label", "--images", str(config.images), "--out", str(train_shards),
                     "--clip-model", clip, *clip_size_flag(config), "--precision", config.precision,
                     "--batch-size", str(config.label_batch_size), "--force")
    stages.clasp("show", "show", "show", str(world_shards), "--out", str(out / "sheet"), "-n", str(config.sheet_images),
                 "--seed", str(config.seed), "--image-height", "192")
    pretrain_and_export(config, stages, train_shards)
    results = evaluate_methods(config, stages, world)
    t0 = time.perf_counter()
    pictures = _draw_pictures(out, world, config)
    stages.times.add("report", time.perf_counter() - t0)
    hardware = json.loads((out / "runs" / "clasp" / "config.json").read_text(encoding="utf-8")).get("hardware", {})
    total = time.perf_counter() - total_start
    report = render_report(config, results, quality, default_mode, stages, total, pictures, hardware)
    path = out / "results.md"
    path.write_text(report, encoding="utf-8")
    summary = results_summary(total, hardware, default_mode, quality, results)
    (out / "results.json").write_text(json.dumps({
        **summary, "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(config).items()},
        "details": results, "stage_seconds": stages.times.seconds, "method_seconds": stages.method_times,
        "hardware": hardware}, indent=2) + "\n", encoding="utf-8")
    echo(f"wrote {path} ({total / 60:.1f} min)")
    return path


def results_summary(seconds: float, hardware: dict, default_mode: str, quality: dict, results: dict) -> dict:
    """The keys a program checks: scores as fractions, each method's with its 95 % interval."""
    def scored(block: dict, key: str) -> dict:
        interval = block.get(f"{key}_interval") or {"value": block.get(key), "low": None, "high": None}
        return {k: interval[k] for k in ("value", "low", "high")}

    return {
        "seconds": seconds,
        "precision": hardware.get("precision"),
        "default_dense_mode": default_mode,
        "label_quality": {mode: {"part_miou": q["parts"]["mIoU"], "attr_ma": q["attributes"].get("mA")}
                          for mode, q in quality.items()},
        "methods": {method: {"attr_ma": scored(r["attributes"], "mA"),
                             "parsing_miou": scored(r["parsing"], "mIoU_grid"),
                             "reid_map": scored(r["reid"], "mAP"), "reid_rank1": scored(r["reid"], "rank1")}
                    for method, r in results.items()},
    }


def _draw_pictures(out: Path, world: Path, config: ReproduceConfig) -> dict[str, str]:
    from clasp.evaluation.expert_load import expert_load_per_task
    from clasp.evaluation.plots import grouped_bars, line_chart
    from clasp.evaluation.truth import SynthTruth

    pictures: dict[str, str] = {}
    for key, title in (("loss", "total loss"), ("dino", "DINO loss"), ("part", "part loss"),
                       ("attribute", "attribute loss")):
        series = {}
        for method in ("clasp", "dino-only"):
            rows = [r for r in _metrics(out / "runs" / method) if key in r]
            if rows and any(r[key] != 0 for r in rows):
                series[method] = ([r["step"] for r in rows], [float(r[key]) for r in rows])
        if series:
            pictures[f"loss_{key}"] = line_chart(series, out / f"loss_{key}.png", f"{title} per step").name
    sheet = out / "sheet" / "contact_sheet.png"
    if sheet.exists():
        target = out / "part_masks.png"
        sheet.replace(target)
        pictures["part_masks"] = target.name
    truth = SynthTruth.load(world)
    sample = [truth.images_dir / p for p in truth.paths[:: max(1, len(truth) // 64)][:64]]
    loads = expert_load_per_task(out / "exports" / "clasp", sample)
    if loads:
        experts = next(iter(loads.values())).shape[1]
        groups = {task: load.mean(0).tolist() for task, load in loads.items()}
        pictures["expert_load"] = grouped_bars(groups, out / "expert_load.png",
                                               "expert load per task prompt (mean over MoE layers)",
                                               [f"expert {e}" for e in range(experts)]).name
        (out / "eval" / "expert_load.json").write_text(json.dumps({t: v.tolist() for t, v in loads.items()}, indent=2))
    return pictures


def _precision_words(config: ReproduceConfig, hardware: dict) -> str:
    """e.g. `precision auto → fp32 (CPU capability AVX2, no native bf16; 2 cores)`."""
    if not hardware:
        return f"precision {config.precision}"
    return (f"precision {hardware.get('requested', config.precision)} → {hardware.get('precision', '?')} "
            f"({hardware.get('capability', 'capability not recorded')}; {hardware.get('available_cores', '?')} cores)")


def _scored(block: dict, key: str) -> str:
    """`61.2 [58.0, 64.1]`: the score and its 95 % interval, in percent."""
    interval = block.get(f"{key}_interval")
    if not interval:
        return percent(block.get(key))
    return f"{percent(interval['value'])} [{percent(interval['low'])}, {percent(interval['high'])}]"


def _clip_words(config: ReproduceConfig) -> list[str]:
    if config.clip_model is not None:
        return [f"CLIP: `{config.clip_model}`.", ""]
    return ["**What the CLIP saw.** The labeling CLIP was trained here by `clasp train-clip` on "
            f"{config.corpus_pairs} synthetic image–caption pairs (`clasp synth-corpus`: whole persons with "
            "free-text captions, single items and body regions, bare scenes) drawn from identities, cameras "
            "and random streams disjoint from the evaluation world. It never saw the evaluation world's images, "
            "and no mask, box or label of any world: only images and their captions. These numbers measure "
            "the method on a synthetic world with a tiny CLIP; results on real data need a real CLIP "
            "(`make reproduce CLIP_MODEL=openai/clip-vit-base-patch16 IMAGES=...`).", ""]


def _label_quality_lines(quality: dict, default_mode: str) -> list[str]:
    lines = ["Label quality per dense mode (`clasp eval-labels` against the world's ground truth, on the label "
             f"grid; pre-training used `{default_mode}`, `clasp label`'s default):", "",
             "| dense mode | part mIoU | attribute mA | attribute accuracy (mean over groups) |", "|---|---|---|---|"]
    lines += [f"| {mode}{' (default)' if mode == default_mode else ''} | {percent(q['parts']['mIoU'])} "
              f"| {percent(q['attributes'].get('mA'))} | {percent(q['attributes']['mean_accuracy'])} |"
              for mode, q in quality.items()]
    chosen = quality[default_mode]
    lines += ["", f"Per part ({default_mode}):", "", "| part | IoU |", "|---|---|"]
    lines += [f"| {p} | {percent(v)} |" for p, v in chosen["parts"]["iou"].items()]
    lines += ["", f"Per attribute group ({default_mode}; chance is 1 / number of values):", "",
              "| attribute group | accuracy | chance |", "|---|---|---|"]
    lines += [f"| {g} | {percent(v)} | {percent(chosen['attributes']['chance'][g])} |"
              for g, v in chosen["attributes"]["accuracy"].items()]
    return lines


def render_report(config: ReproduceConfig, results: dict, quality: dict, default_mode: str, stages: Stages,
                  total: float, pictures: dict[str, str], hardware: dict) -> str:
    data = f"`{config.images}`" if config.images else "the synthetic world"
    lines = ["# CLASP reproduction", "", *_clip_words(config),
             f"Pre-training data: {data}. Evaluation: the synthetic world ({config.identities} identities x "
             f"{config.images_per_id} images, {config.cameras} cameras, seed {config.seed}); probes trained on "
             "the lower half of the identities, tested on the rest; each probe reads the backbone through its own "
             "task prompt (attributes: `attribute`, parsing: `part`, re-ID: `instance`; a backbone without MoE has "
             f"one set of features). Backbone preset `{config.preset}`, {config.steps} steps of batch "
             f"{config.batch_size} (2 global + {config.local_crops} local crops), {_precision_words(config, hardware)}.",
             "", "Scores in percent with a 95 % interval (bootstrap over test identities, 1000 rounds):", "",
             "| method | attribute mA | parsing mIoU (16x8) | parsing mIoU (pixels) | re-ID mAP | re-ID rank-1 "
             "| pretrain s | eval s |", "|" + "---|" * 8]
    for method in METHODS:
        r, t = results[method], stages.method_times.get(method, {})
        lines.append(f"| {METHOD_TITLES[method]} | {_scored(r['attributes'], 'mA')} "
                     f"| {_scored(r['parsing'], 'mIoU_grid')} | {percent(r['parsing']['mIoU_pixel'])} "
                     f"| {_scored(r['reid'], 'mAP')} | {_scored(r['reid'], 'rank1')} "
                     f"| {t.get('pretrain', 0):.0f} | {t.get('eval', 0):.0f} |")
    chance = results[METHODS[0]]["reid"].get("chance_rank1")
    lines += ["", f"Chance level: attribute mA 50.0 (constant or random predictions); re-ID rank-1 of a random "
              f"ranking {percent(chance)}. The protocol excludes same-camera images of the query's identity."]
    if any("market1501" in r for r in results.values()):
        lines += ["", "Market-1501 re-ID (query vs bounding_box_test):", "", "| method | mAP | rank-1 |", "|---|---|---|"]
        lines += [f"| {METHOD_TITLES[m]} | {_scored(results[m].get('market1501', {}), 'mAP')} "
                  f"| {_scored(results[m].get('market1501', {}), 'rank1')} |" for m in METHODS]
    lines += ["", *_label_quality_lines(quality, default_mode)]
    lines += ["", "Wall time per stage (seconds):", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {stage} | {sec:.0f} |" for stage, sec in stages.times.seconds.items()]
    lines += [f"| **total** | **{total:.0f}** ({total / 60:.1f} min) |", ""]
    captions = {"loss_loss": "Total loss per step", "loss_dino": "DINO loss per step",
                "loss_part": "Part loss per step (CLASP)", "loss_attribute": "Attribute loss per step (CLASP)",
                "part_masks": "Pseudo-label part masks (`clasp show`)",
                "expert_load": "Expert load per task prompt of the CLASP backbone"}
    for key, name in pictures.items():
        lines += [f"![{captions.get(key, key)}]({name})", ""]
    lines += ["One seed, a small world and a short schedule: the intervals cover the spread over test identities, "
              "not over training seeds. `clasp export` writes the EMA teacher (momentum "
              f"{config.momentum_teacher} rising to 1 over {config.steps} steps). Raise `STEPS` for a longer schedule.",
              ""]
    return "\n".join(lines)
