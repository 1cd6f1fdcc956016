"""`make reproduce`: the whole pipeline, its controls and two baselines in one run, with a report.

Two synthetic worlds: a **pre-training world** (its own seed, so its identities,
cameras and every random stream are apart from the evaluation world's) that
every method pre-trains on, as LUPerson is to Market-1501, and an **evaluation
world** the probes alone see. Then
(`clasp synth-corpus` -> `clasp train-clip`) -> `clasp label` of the pre-training
world (every dense mode, each scored by `clasp eval-labels`) -> `clasp pretrain`
-> `clasp export` -> `clasp eval` on the evaluation world, for:
- **clasp**: CLASP on the CLIP's labels;
- **clasp-truth**: CLASP on the pre-training world's ground truth (`clasp
  truth-labels`), a control no real data set has: the upper bound of what labels
  buy. `ladder` adds stores of that truth with a share of values corrupted
  (`make reproduce-ladder`: 0.25, 0.5, 0.75), to place the CLIP on a ladder;
- **dino-only**: `clasp pretrain --w-part 0 --w-attr 0 --moe-layers 0`, same recipe;
- **random**: the same architecture with its initial random weights.

Every stage runs as its own `clasp` command (so the wall times are those a user
sees), logging to OUT/logs/; on a CPU the pre-trainings run side by side, one per
core (`parallel_runs`). The report is OUT/results.md with PNGs beside it,
and OUT/results.json for programs (`results_summary` names its keys).

Environment switches (read by `ReproduceConfig.from_env`):
CLIP_MODEL (hub id or folder; default: a tiny CLIP trained here on a synthetic caption corpus),
IMAGES (a folder of person images to pre-train on instead of the pre-training world;
a Market-1501 folder is also used for a re-ID evaluation), STEPS, PRESET,
SEED (the evaluation world's; the corpus, CLIP and training use it too) and
PRETRAIN_WORLD_SEED (must differ from SEED).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path

from clasp.datasets.market1501 import REQUIRED_PARTS
from clasp.errors import RunError
from clasp.reproduce.report import (Reproduction, loss_summary, render_report, results_summary,
                                               run_metrics, truth_method_name, truth_store_name)
from clasp.hardware import DEFAULT_PRECISION, available_cores
from clasp.store import ShardStore
from clasp.store.label_choices import DENSE_MODES

IN_TREE_CLIP_SIZE = "224x112"  # `clasp train-clip`'s input size: the labeler looks where the CLIP learned to
LADDER = (0.25, 0.5, 0.75)  # `make reproduce-ladder`'s noise levels
DINO_ONLY_FLAGS = ("--w-part", "0", "--w-attr", "0", "--moe-layers", "0")


@dataclass
class ReproduceConfig:
    out: Path = Path("reproduce/out")
    identities: int = 200  # of each world
    images_per_id: int = 6
    cameras: int = 4
    seed: int = 0  # the evaluation world's; also the corpus's, the CLIP's and every run's
    # The pre-training world: any other seed gives other identities, cameras and
    # random streams (`clasp synth` keys every stream by the seed).
    pretrain_world_seed: int = 11
    clip_model: str | None = None  # None: a tiny CLIP trained here on a synthetic caption corpus
    corpus_pairs: int = 12000  # image-caption pairs of that corpus (`clasp synth-corpus --pairs`)
    clip_steps: int | None = None  # `clasp train-clip --steps`; None: its default
    # `clasp label --clip-size`; None: 224x112 (where the in-tree CLIP learned to look) or,
    # with CLIP_MODEL, the command's own default
    label_clip_size: str | None = None
    dense_modes: tuple[str, ...] = DENSE_MODES  # every mode is scored against the truth; the default is trained on
    images: Path | None = None  # None: pre-train on the pre-training world
    ladder: tuple[float, ...] = ()  # noise of the extra ground-truth stores (`make reproduce-ladder`: LADDER)
    # The demonstration's recipe, chosen on a validation world (seed 23) and the same for
    # every method: docs/demonstration-recipe.md holds what was tried and why this one.
    # `clasp pretrain`'s own defaults stay DINO's, for real data. In short: 150 steps at
    # the linear rule's 3e-5 peak left every backbone at its initialisation; half the
    # depth buys twice the steps, and a peak of 2e-3 (lr 0.032 per 256 images at batch
    # 16) separates the ground-truth labels from both baselines by the widest margin.
    steps: int = 300
    preset: str = "tiny"
    batch_size: int = 16
    local_crops: int = 2
    lr: float = 0.032  # per 256 images (`clasp pretrain --lr`): peak 0.032 * 16 / 256 = 2e-3
    precision: str = DEFAULT_PRECISION  # resolved by each stage on its device (clasp.hardware)
    # A short schedule needs a faster teacher than DINO's 0.996, or the exported
    # EMA teacher stays near its initialisation.
    momentum_teacher: float = 0.99
    # extra `clasp pretrain --config` keys: 6 blocks of the tiny preset, MoE in the last 2
    pretrain_settings: dict = field(default_factory=lambda: {"depth": 6, "moe_layers": 2})
    parallel_runs: int | None = None  # pre-trainings side by side; None: `parallel_runs` decides
    label_batch_size: int = 32
    probe_steps: int = 300
    sheet_images: int = 12
    plot_format: str = "png"  # of the charts (plots.PLOT_FORMATS); the part-mask sheet stays a PNG

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides) -> "ReproduceConfig":
        env = dict(os.environ if env is None else env)
        values: dict = {}
        for key, name, kind in (("CLIP_MODEL", "clip_model", str), ("IMAGES", "images", Path),
                                ("STEPS", "steps", int), ("PRESET", "preset", str), ("SEED", "seed", int),
                                ("PRETRAIN_WORLD_SEED", "pretrain_world_seed", int)):
            if env.get(key):
                values[name] = kind(env[key])
        values.update(overrides)
        known = {f.name for f in fields(cls)}
        config = cls(**{k: v for k, v in values.items() if k in known})
        config.check()
        return config

    def check(self) -> None:
        from clasp.evaluation.plots import check_plot_format

        check_plot_format(self.plot_format)
        if self.pretrain_world_seed == self.seed:
            raise ValueError(f"the pre-training world's seed ({self.pretrain_world_seed}) must differ from the "
                             f"evaluation world's ({self.seed}): the same seed draws the same identities and cameras")

    def methods(self) -> tuple[str, ...]:
        """Every method in report order; the ground-truth controls exist only for the synthetic pre-training world."""
        truth = () if self.images is not None else tuple(truth_method_name(n) for n in (0.0, *self.ladder))
        return ("clasp", *truth, "dino-only", "random")


@dataclass
class StageTimes:
    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, value: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + value


class StageFailed(RunError, RuntimeError):
    """A `clasp` stage of the pipeline exited non-zero; the message names the stage and ends with its log's tail."""


def run_clasp(args: list[str], log: Path, stage: str, echo=print, threads: int | None = None) -> float:
    """Run one `clasp` command in a subprocess (with `threads` torch threads), its output to `log`; the seconds
    it took. Raise with the log's tail on failure."""
    log.parent.mkdir(parents=True, exist_ok=True)
    echo(f"[{stage}] clasp {' '.join(args)}")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    start = time.perf_counter()
    with open(log, "w", encoding="utf-8") as fh:
        proc = subprocess.run([sys.executable, "-m", "clasp.cli", *args], stdout=fh, stderr=subprocess.STDOUT,
                              env=env)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").replace("\r", "\n").strip().splitlines()[-5:]
        raise StageFailed(f"stage {stage} failed (exit {proc.returncode}); see {log}:\n" + "\n".join(tail))
    return seconds


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


class Stages:
    """Runs `clasp` commands as the stages of one reproduction, timing each stage and method."""

    def __init__(self, out: Path, echo=print) -> None:
        self.out, self.logs, self.echo = out, out / "logs", echo
        self.times = StageTimes()
        self.method_times: dict[str, dict[str, float]] = {}

    def clasp(self, stage: str, log_name: str, *args: str, method: str | None = None,
              threads: int | None = None) -> None:
        """One command; its time counts to `stage` unless it runs beside others (`threads` set: the caller
        times the wave) and to `method`'s own times."""
        seconds = run_clasp(list(args), self.logs / f"{log_name}.log", stage, self.echo, threads)
        if threads is None:
            self.times.add(stage, seconds)
        if method is not None:
            spent = self.method_times.setdefault(method, {})
            spent[stage] = spent.get(stage, 0.0) + seconds


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


def write_truth_stores(config: ReproduceConfig, stages: Stages, world: Path, grid: tuple[int, int]) -> dict[str, dict]:
    """`clasp truth-labels` of the pre-training world at noise 0 and each ladder level, on the CLIP store's grid.

    Returns {store name: `clasp eval-labels` results}, which for noise P measure about 1 - P of the truth.
    """
    quality = {}
    for noise in (0.0, *config.ladder):
        name = truth_store_name(noise)
        shards = stages.out / "shards" / name
        shutil.rmtree(shards, ignore_errors=True)  # the command refuses a folder that holds a store
        stages.clasp("truth-labels", f"truth-labels-{name}", "truth-labels", str(world), "--out", str(shards),
                     "--noise", f"{noise:g}", "--grid", f"{grid[0]}x{grid[1]}", "--seed", str(config.seed))
        target = stages.out / "eval" / f"label_quality-{name}.json"
        stages.clasp("eval-labels", f"eval-labels-{name}", "eval-labels", "--shards", str(shards), "--truth",
                     str(world), "--out", str(target))
        quality[name] = json.loads(target.read_text(encoding="utf-8"))
    return quality


def parallel_runs(config: ReproduceConfig) -> int:
    """Pre-trainings side by side: on a CPU one per core, each with one thread, because a tiny model gains
    little from a second thread (two one-thread runs side by side finished 1.24x sooner than one two-thread run
    after the other, 2-core AVX-512 Xeon); on a GPU one, since runs would share the device."""
    if config.parallel_runs is not None:
        return config.parallel_runs
    import torch

    return 1 if torch.cuda.is_available() else available_cores()


def waves(methods: list[str], size: int) -> list[list[str]]:
    """`methods` in groups of `size` run together; a last, smaller group gets the cores the others leave."""
    size = max(1, size)
    return [methods[i:i + size] for i in range(0, len(methods), size)]


def pretrain_and_export(config: ReproduceConfig, stages: Stages, method_shards: dict[str, Path]) -> None:
    """Pre-train and export each method on its store with the one recipe; random weights beside them."""
    settings = []
    if config.pretrain_settings:  # keys only a config file takes (model sizes, DINO head)
        path = stages.out / "pretrain-settings.json"
        path.write_text(json.dumps(config.pretrain_settings), encoding="utf-8")
        settings = ["--config", str(path)]
    common = [*settings, "--preset", config.preset, "--steps", str(config.steps), "--lr", f"{config.lr:g}",
              "--batch-size", str(config.batch_size), "--local-crops", str(config.local_crops),
              "--precision", config.precision, "--momentum-teacher", str(config.momentum_teacher),
              "--save-every", str(config.steps), "--log-every", "1", "--seed", str(config.seed), "--force"]

    def pretrain_one(method: str, threads: int | None) -> None:
        run, extra = stages.out / "runs" / method, DINO_ONLY_FLAGS if method == "dino-only" else ()
        stages.clasp("pretrain", f"pretrain-{method}", "pretrain", "--shards", str(method_shards[method]),
                     "--out", str(run), *common, *extra, method=method, threads=threads)
        stages.clasp("export", f"export-{method}", "export", str(run), "--out", str(stages.out / "exports" / method),
                     method=method, threads=threads)

    for wave in waves(list(method_shards), parallel_runs(config)):
        t0 = time.perf_counter()
        threads = max(1, available_cores() // len(wave)) if len(wave) > 1 else None
        with ThreadPoolExecutor(max_workers=len(wave)) as pool:
            for done in [pool.submit(pretrain_one, method, threads) for method in wave]:
                done.result()  # a failed run raises here, after its wave-mates finish
        if threads is not None:
            stages.times.add("pretrain", time.perf_counter() - t0)  # the wave's wall time, exports included
    t0 = time.perf_counter()
    write_random_export(stages.out / "exports" / "clasp", stages.out / "exports" / "random", config.seed)
    stages.times.add("export", time.perf_counter() - t0)


def evaluate_methods(config: ReproduceConfig, stages: Stages, world: Path) -> dict[str, dict]:
    """`clasp eval` of every method's export on the evaluation world, each probe through its own task prompt."""
    market = Path(config.images) if config.images is not None and all(
        (Path(config.images) / p).is_dir() for p in REQUIRED_PARTS) else None
    results: dict[str, dict] = {}
    for method in config.methods():
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


def make_worlds(config: ReproduceConfig, stages: Stages) -> tuple[Path, Path]:
    """The evaluation world and the pre-training world: same size, different seeds."""
    worlds = {"world": config.seed, "pretrain-world": config.pretrain_world_seed}
    for name, seed in worlds.items():
        stages.clasp("synth", f"synth-{name}", "synth", "--out", str(stages.out / name), "--identities",
                     str(config.identities), "--images-per-id", str(config.images_per_id), "--cameras",
                     str(config.cameras), "--seed", str(seed))
    return stages.out / "world", stages.out / "pretrain-world"


def label_stores(config: ReproduceConfig, stages: Stages, pretrain_world: Path) -> tuple[Reproduction, dict]:
    """Every store the methods read, scored; returns the reproduction so far and {method: shards}."""
    clip = make_clip(config, stages)
    clip_shards, default_mode, stores = label_every_mode(config, stages, clip, pretrain_world)
    stages.clasp("show", "show", "show", str(clip_shards), "--out", str(stages.out / "sheet"), "-n",
                 str(config.sheet_images), "--seed", str(config.seed), "--image-height", "192")
    clip_store, truth = default_mode, {}
    if config.images is not None:
        clip_store, clip_shards = "images", stages.out / "shards-images"
        stages.clasp("label", "label-images", "label", "--images", str(config.images), "--out", str(clip_shards),
                     "--clip-model", clip, *clip_size_flag(config), "--precision", config.precision,
                     "--batch-size", str(config.label_batch_size), "--force")
    else:
        grid = ShardStore.open(clip_shards).manifest.label_grid
        truth = write_truth_stores(config, stages, pretrain_world, grid)
        stores.update(truth)
    method_shards = {"clasp": clip_shards, **{f"clasp-{name}": stages.out / "shards" / name for name in truth},
                     "dino-only": clip_shards}  # DINO only reads the images; their labels go unused
    store_of = {"clasp": clip_store, **{f"clasp-{name}": name for name in truth}, "dino-only": clip_store}
    return Reproduction(results={}, stores=stores, default_mode=default_mode, method_store=store_of), method_shards


def no_information_values(method_shards: dict[str, Path], store_of: dict[str, str]) -> dict[str, dict]:
    from clasp.evaluation.no_information import no_information_losses

    shards_of = {store_of[m]: shards for m, shards in method_shards.items()}  # DINO only shares CLASP's store
    return {store: no_information_losses(shards).as_dict() for store, shards in shards_of.items()}


def run_reproduce(config: ReproduceConfig, echo=print) -> Path:
    """Run everything into `config.out`; return the path of results.md."""
    config.check()
    out = Path(config.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    stages = Stages(out, echo)
    total_start = time.perf_counter()
    world, pretrain_world = make_worlds(config, stages)
    reproduction, method_shards = label_stores(config, stages, pretrain_world)
    pretrain_and_export(config, stages, method_shards)
    reproduction.results = evaluate_methods(config, stages, world)
    t0 = time.perf_counter()
    reproduction.no_information = no_information_values(method_shards, reproduction.method_store)
    reproduction.pictures = draw_pictures(out, world, reproduction, config.plot_format)
    stages.times.add("report", time.perf_counter() - t0)
    reproduction.hardware = json.loads((out / "runs" / "clasp" / "config.json").read_text(encoding="utf-8")).get(
        "hardware", {})
    reproduction.seconds = time.perf_counter() - total_start
    reproduction.stage_seconds, reproduction.method_seconds = stages.times.seconds, stages.method_times
    losses = loss_summary(reproduction, out / "runs")
    path = out / "results.md"
    path.write_text(render_report(config, reproduction, losses), encoding="utf-8")
    (out / "results.json").write_text(json.dumps({
        **results_summary(reproduction, losses),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(config).items()},
        "details": reproduction.results, "no_information": reproduction.no_information,
        "stage_seconds": stages.times.seconds, "method_seconds": stages.method_times,
        "hardware": reproduction.hardware}, indent=2) + "\n", encoding="utf-8")
    echo(f"wrote {path} ({reproduction.seconds / 60:.1f} min)")
    return path


def draw_pictures(out: Path, world: Path, reproduction: Reproduction, plot_format: str = "png") -> dict[str, str]:
    """The report's charts (report_figures.py) as `plot_format` files, and the part-mask sheet; name → file."""
    from clasp.evaluation.plots import save
    from clasp.reproduce.figures import report_figures

    metrics = {method: run_metrics(out / "runs" / method) for method in reproduction.method_store}
    depth = json.loads((out / "exports" / "clasp" / "config.json").read_text(encoding="utf-8"))["architecture"]["depth"]
    figures = report_figures(reproduction, metrics, export_expert_load(out, world), depth)
    pictures = {name: save(figure, out / name, plot_format).name for name, figure in figures.items()}
    sheet = out / "sheet" / "contact_sheet.png"
    if sheet.exists():
        target = out / "part_masks.png"
        sheet.replace(target)
        pictures["part_masks"] = target.name
    return pictures


def export_expert_load(out: Path, world: Path) -> dict:
    """The CLASP export's expert load per task prompt on 64 images of the evaluation world, also written to
    OUT/eval/expert_load.json; {} without MoE."""
    from clasp.reproduce.expert_load import expert_load_per_task
    from clasp.datasets.truth import SynthTruth

    truth = SynthTruth.load(world)
    sample = [truth.images_dir / p for p in truth.paths[:: max(1, len(truth) // 64)][:64]]
    loads = expert_load_per_task(out / "exports" / "clasp", sample)
    if loads:
        (out / "eval" / "expert_load.json").write_text(json.dumps({t: v.tolist() for t, v in loads.items()}, indent=2))
    return loads
