"""The `clasp` command: thin click wrappers, one library function each.

Heavy imports (torch, transformers, h5py) happen inside the commands so that
`clasp --help` answers at once. User errors exit with code 2 and one line.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import click

from clasp import __version__
from clasp.errors import InputError, RunError, one_line
from clasp.runs.error_log import ERROR_LOG, write_error_log
from clasp.settings.click_options import config_from, declared_options




class UserError(InputError, click.ClickException):
    """A problem with the user's input that the command line itself finds (a bad option, a path that is a file):
    one line on stderr, exit code 2, no traceback."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(f"error: {self.format_message()}", err=True, file=file)


# Commands whose `--out` is a folder of their own: a failed run is also recorded there as error.log.
OUT_FOLDER_COMMANDS = frozenset({"pretrain", "reid", "attributes", "parsing", "pose"})


class ClaspCommand(click.Command):
    """A command that leaves its parsed options where the group's error handler can read them."""

    def invoke(self, ctx: click.Context):
        ctx.find_root().meta["clasp.command"] = (ctx.command_path, self.name, dict(ctx.params))
        return super().invoke(ctx)


# click >= 8.2 raises this usage error to print the help of a group called without arguments
NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


class ClaspGroup(click.Group):
    """The policy of every command, in one place: a failure is one `error:` line, never a traceback.

    - `clasp.errors.InputError` (and UserError, click's usage errors): `error: <message>`, exit 2.
    - `clasp.errors.RunError`: `error: <message>`, exit 1, and the same line in OUT/error.log
      where the command has a run folder (OUT_FOLDER_COMMANDS).
    - Any other exception: `error: <command>: <ExceptionType>: <message>`, exit 1 (and error.log in a
      run folder); `clasp --debug ...` shows its traceback instead.
    """

    command_class = ClaspCommand

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """A bad option of `clasp` itself (`clasp --bogus`) is one line too; `clasp` alone still shows help."""
        try:
            return super().parse_args(ctx, args)
        except NO_ARGS_IS_HELP:
            raise
        except click.UsageError as exc:
            raise UserError(f"{ctx.command_path}: {exc.format_message()} (see `{ctx.command_path} --help`)") from None

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError:
            raise
        except click.UsageError as exc:  # a bad option or command: one line too, naming the command
            path = exc.ctx.command_path if exc.ctx is not None else ctx.command_path
            raise UserError(f"{path}: {exc.format_message()} (see `{path} --help`)") from None
        except (click.exceptions.Exit, click.ClickException, click.Abort, SystemExit, KeyboardInterrupt):
            raise
        except InputError as exc:  # input the user must fix
            raise UserError(str(exc)) from None
        except RunError as exc:  # a run that failed after its inputs were accepted
            path, name, params = ctx.find_root().meta.get("clasp.command", (ctx.command_path, None, {}))
            if name in OUT_FOLDER_COMMANDS and params.get("out") is not None:
                _record_once(params["out"], str(exc))
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except Exception as exc:  # noqa: BLE001 - the one place unexpected errors become one line
            if ctx.find_root().params.get("debug"):
                raise
            path, name, params = ctx.find_root().meta.get("clasp.command", (ctx.command_path, None, {}))
            message = one_line(exc, 500) or "(no message)"  # a DataLoader worker's: the original's line
            line = f"{path}: {type(exc).__name__}: {message}"
            out = params.get("out")
            if name in OUT_FOLDER_COMMANDS and out is not None:
                write_error_log(out, line, create=False)
            click.echo(f"error: {line} (run with `clasp --debug` for the traceback)", err=True)
            sys.exit(1)


ClaspGroup.group_class = ClaspGroup


def _record_once(out, message: str) -> None:
    """`message` in OUT/error.log unless the run already wrote it there (the library logs its own failures on
    rank 0); one process of a launch writes it."""
    if os.environ.get("RANK", "0") != "0":
        return
    try:
        last = (Path(out) / ERROR_LOG).read_text(encoding="utf-8").splitlines()[-1:]
    except (OSError, UnicodeDecodeError):
        last = []
    if last != [f"error: {message}"]:
        write_error_log(out, message, create=False)


@click.group(cls=ClaspGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="clasp")
@click.option("--debug", is_flag=True, default=False, help="Show the Python traceback of an unexpected error.")
def main(debug: bool) -> None:
    """CLASP: pre-train human-centric vision backbones from unlabeled person images.

    \b
    Pipeline:
      clasp label     images/  -> shards/   CLIP pseudo-labels (part masks, attributes)
      clasp pretrain  shards/  -> run/      ViT + prompt-controlled MoE, self-distillation
      clasp export    run/     -> backbone/ safetensors + config for one task prompt
    """
    _log_to_stderr()


def _log_to_stderr() -> None:
    """The library's one-line notes (how `--precision auto` resolved, warnings) go to stderr as they are."""
    logger = logging.getLogger("clasp")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


# --------------------------------------------------------------------------- store


def _store_location(ctx, param, value: str) -> Path | str:
    from clasp.store.fetch import is_url

    return value if is_url(value) else Path(value)


def _cache_size(ctx, param, value: str | None) -> str | None:
    from clasp.store.cache_config import parse_size

    if value is not None:
        try:
            parse_size(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


def _reader_options(name: str):
    """SHARDS (a folder or a URL) and one option per setting of `clasp.store.reader_config`'s class `name`."""

    def decorate(func):
        func = declared_options("clasp.store.reader_config", name, extra={"cache_size": {"callback": _cache_size}})(func)
        return click.argument("shards", metavar="SHARDS", callback=_store_location)(func)

    return decorate


@main.command()
@_reader_options("VerifyConfig")
def verify(shards: Path | str, **settings) -> None:
    """Check every shard of SHARDS (a folder or a URL) against its manifest (schema, sha256, rows).

    \b
    Exit 0: every listed shard is good.
    Exit 1: one line per bad shard (or a manifest that cannot be accepted);
            with --deep, `BAD <shard>: row N: <problem>` naming its first bad rows;
            or one `error:` line for a URL that stopped answering.
    Exit 2: SHARDS is missing, not a folder, or has no manifest.json (a URL: no
            backend installed for it, or no manifest there).
    """
    from clasp.store import verify_store
    from clasp.store.reader_config import VerifyConfig

    config = config_from(VerifyConfig, settings, root=shards)
    report = verify_store(config.root, deep=config.deep, cache=config.cache)
    for t in report.timings:
        click.echo(f"checked {t.path}: {t.rows} rows in {t.seconds:.2f} s")
    for p in report.problems:
        click.echo(f"BAD {p.path}: {p.problem}")
    for path in report.unlisted:
        click.echo(f"note: {path} is not listed in the manifest (ignored by readers)", err=True)
    if report.ok:
        click.echo(f"ok: {report.shards_checked} shards, {report.rows} rows in {shards}")
    else:
        if report.manifest_ok:
            click.echo(f"{len(report.problems)} of {report.shards_checked} shards bad in {shards}", err=True)
        else:
            click.echo(f"manifest refused, no shard checked in {shards}", err=True)
        sys.exit(1)


# --------------------------------------------------------------------------- label


def _at_most_per_core(ctx, param, value: int | None) -> int | None:
    """A count of local processes, within `clasp.hardware`'s per-core rule."""
    from clasp.hardware.cores import beyond_cores

    problem = beyond_cores(value)
    if problem:
        raise click.BadParameter(f"{value} processes {problem}")
    return value


def _label_options(func):
    """One option per setting of `clasp.labeling.config.LabelConfig`."""
    from clasp.labeling.config import LabelConfig
    from clasp.settings.click_options import click_options

    return click_options(LabelConfig, extra={"workers": {"callback": _at_most_per_core}})(func)


@main.command()
@_label_options
def label(**settings) -> None:
    """Label a folder of person images with CLIP part masks and attribute logits.

    Writes SHARDS to --out. Unreadable inputs are skipped and recorded with a
    reason in the manifest. Rerunning the same command keeps finished shards
    whose inputs did not change and does the rest.
    """
    from clasp.labeling.run import LabelConfig, run_labeling

    config = LabelConfig(**{k: v for k, v in settings.items() if v is not None})
    summary = run_labeling(config)
    click.echo(summary.line())
    if config.strict and summary.skipped_inputs:
        first = summary.skipped_inputs[0]
        click.echo(f"error: {len(summary.skipped_inputs)} inputs skipped (--strict), the first {first.path} "
                   f"({first.reason}); `clasp inspect {config.out}` lists them by reason, its manifest.json each one",
                   err=True)
        sys.exit(1)


def _train_clip_options(func):
    """One option per command-line setting of `clasp.labeling.train_clip_config.TrainClipConfig`."""
    from clasp.labeling.train_clip_config import TrainClipConfig
    from clasp.settings.click_options import click_options

    return click_options(TrainClipConfig)(func)


@main.command("train-clip")
@_train_clip_options
def train_clip(**settings) -> None:
    """Contrastively train a CLIP on image-caption pairs and save it for `clasp label --clip-model OUT`.

    Each step mixes full images (image-level InfoNCE) and mosaics of corpus
    crops (each patch token against its tile's caption). Held-out retrieval
    accuracy is printed at the end and written to OUT/train_report.json.
    """
    from clasp.labeling.train_clip import train_clip as run
    from clasp.labeling.train_clip_config import TrainClipConfig
    from clasp.settings.click_options import given

    report = run(TrainClipConfig(**given(settings)))
    click.echo(report.line())


@main.command("tiny-clip")
@click.argument("out_dir", metavar="DIR", type=click.Path(path_type=Path))
@declared_options("clasp.labeling.tiny_clip_config", "TinyClipConfig")
def tiny_clip(out_dir: Path, **settings) -> None:
    """Write a small offline CLIP (random weights, a few MB) to DIR.

    Use it with `clasp label --clip-model DIR` where no hub model can be
    downloaded (tests, demos, HF_HUB_OFFLINE=1). Its labels carry no meaning:
    the weights are random.
    """
    from transformers.utils import logging as transformers_logging

    from clasp.labeling.tiny_clip import write_tiny_clip
    from clasp.labeling.tiny_clip_config import TinyClipConfig

    transformers_logging.disable_progress_bar()

    config = config_from(TinyClipConfig, settings, out_dir=out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: exists and is not a folder")
    written = write_tiny_clip(config.out_dir, seed=config.seed, vocab_file=config.vocab)
    click.echo(f"wrote tiny CLIP (seed {config.seed}) to {written}; use --clip-model {written}")


@main.command("inspect")
@_reader_options("InspectConfig")
def inspect_command(shards: Path | str, **settings) -> None:
    """Summarise the shard folder SHARDS: images, shards, bytes, CLIP settings, vocabulary,
    share of label cells per part, top attribute value per group, skipped inputs by reason.

    Reads the labels chunk by chunk; images are not decoded. Exit 2 with one line
    when SHARDS is not a readable shard folder (run `clasp verify` for a full check).
    """
    import json

    from clasp.store.inspect import InspectConfig, inspect_store, render_summary

    config = config_from(InspectConfig, settings, root=shards)
    summary = inspect_store(config)
    click.echo(json.dumps(summary.to_dict(), indent=2, ensure_ascii=False) if config.as_json
               else render_summary(summary))


@main.command("show")
@_reader_options("ContactSheetConfig")
def show(shards: Path | str, **settings) -> None:
    """Draw a PNG contact sheet of N sampled images of SHARDS with their part masks and top attributes.

    Each image is shown plain and, beside it, greyed with its part mask in colour
    (legend on top); under it the source path and the top value of its most
    confident attribute groups with the probability (softmax within the group).
    Writes OUT/contact_sheet.png and prints its path. Exit 2 with one line when
    SHARDS is not a readable shard folder or OUT is not a folder.
    """
    from clasp.store.contact_sheet import ContactSheetConfig, make_contact_sheet

    config = config_from(ContactSheetConfig, settings, root=shards)
    if config.out.exists() and not config.out.is_dir():
        raise UserError(f"{config.out}: --out exists and is not a folder")
    sheet = make_contact_sheet(config)
    for note in sheet.notes:
        click.echo(f"note: {note}", err=True)
    click.echo(str(sheet.path))


# --------------------------------------------------------------------------- pretrain


def _pretrain_options(func):
    """`--config` and one option per setting of `clasp.pretraining.config.PretrainConfig`."""
    from clasp.pretraining.config import PretrainConfig
    from clasp.settings.click_options import click_options

    func = click_options(PretrainConfig)(func)
    return click.option("--config", "config_file", type=click.Path(path_type=Path), default=None, show_default="none",
                        help="YAML or JSON file of settings (keys as in docs/commands/pretrain.md); flags override it. "
                             "With --resume the run's saved settings come first.")(func)


@main.command()
@_pretrain_options
def pretrain(config_file: Path | None, **settings) -> None:
    """Pre-train the backbone on a shard folder (also under `accelerate launch`).

    Settings come from the defaults, then --config FILE, then the flags. The
    resolved config is saved as OUT/config.json and beside every checkpoint.
    SIGTERM or Ctrl-C stop at the next step with a checkpoint; a second one stops
    at once, keeping the last complete checkpoint.
    """
    from clasp.pretraining.config import ConfigError, build_config
    from clasp.pretraining.train import run_pretraining
    from clasp.settings.click_options import given

    try:
        config = build_config(config_file, **given(settings))
    except ConfigError as exc:  # a refused start: its line in OUT/error.log too (an InputError: exit 2)
        write_error_log(settings.get("out"), str(exc))
        raise
    result = run_pretraining(config)
    if result.stopped_by not in ("end", "stop_at"):
        click.echo(f"stopped by {result.stopped_by} after step {result.step}; continue with --resume", err=True)


def _export_options(func):
    """One option per setting of `clasp.pretraining.export_config.ExportConfig`."""
    from clasp.pretraining.export_config import ExportConfig
    from clasp.settings.click_options import click_options

    return click_options(ExportConfig)(func)


@main.command("export")
@click.argument("run", type=click.Path(path_type=Path))
@_export_options
def export_command(run: Path, **settings) -> None:
    """Export the backbone of a pre-training RUN as safetensors + config.json + model card, or as ONNX.

    Load it with `clasp.pretraining.load_backbone(OUT)` (or a hub id it was uploaded to): images
    (B, 3, 256, 128), uint8 or float in [0, 1] -> (CLS (B, D), patch features (B, N, D)).
    """
    from clasp.pretraining.export import ExportConfig, export_backbone
    from clasp.settings.click_options import given

    config = ExportConfig(run=run, **given(settings))
    folder = export_backbone(config)
    click.echo(f"exported the {'student' if config.student else 'teacher'} backbone ({config.task}) "
               f"as {config.format} to {folder}")


# --------------------------------------------------------------------------- finetune


def _finetune_options(task: str):
    """`--config` and one option per setting of `clasp.finetune.config.FinetuneConfig` that recipe `task` reads."""
    from clasp.finetune.config import FinetuneConfig, recipe_settings
    from clasp.settings.click_options import click_options

    def decorate(func):
        func = click_options(FinetuneConfig, names=recipe_settings(task))(func)
        return click.option("--config", "config_file", type=click.Path(path_type=Path), default=None,
                            show_default="none",
                            help="YAML or JSON file of settings (keys as in docs/commands/finetune.md); flags override it.")(func)

    return decorate


def _run_finetune(task: str, config_file: Path | None, resume: bool, force: bool, settings: dict) -> None:
    from clasp.finetune.config import FinetuneConfigError, build_config
    from clasp.finetune.loop import run_finetune
    from clasp.finetune.recipes import unscored_main_metric

    flags = {**settings, "task": task, "resume": resume or None, "force": force or None}
    try:
        config = build_config(config_file, **{k: (str(v) if isinstance(v, Path) else v) for k, v in flags.items()})
    except FinetuneConfigError as exc:  # a refused start: its line in OUT/error.log too (an InputError: exit 2)
        write_error_log(settings.get("out"), str(exc))
        raise
    result = run_finetune(config)
    if result.results is not None:
        shown = {k: v for k, v in result.results.items() if isinstance(v, float) and k in
                 ("map", "rank1", "rank5", "rank10", "map_rerank", "ma", "accuracy", "precision", "recall", "f1", "miou",
                  "ap", "ap50", "ap75", "ar")}
        click.echo("  ".join(f"{k} {100 * v:.2f}" for k, v in shown.items()))
        click.echo(f"results written to {result.out / 'results.json'}")
        _fail_if_unscored(unscored_main_metric(task, result.results))
    elif result.stopped_by != "end":
        click.echo(f"stopped ({result.stopped_by}) after step {result.step} of {result.total_steps}; "
                   "continue with --resume", err=True)


def _fail_if_unscored(message: str | None) -> None:
    """A run whose main metric has no value fails (exit 1) after its results file was written."""
    if message is not None:
        click.echo(f"error: {message}", err=True)
        sys.exit(1)


@main.group()
def finetune() -> None:
    """Fine-tune an exported backbone on re-ID, attributes, parsing or pose (also under `accelerate launch`)."""


@finetune.command("reid")
@_finetune_options("reid")
def finetune_reid(config_file, resume, force, **settings) -> None:
    """Re-ID (BNNeck; ID cross-entropy + batch-hard triplet; P x K batches) on Market-1501 or MSMT17."""
    _run_finetune("reid", config_file, resume, force, settings)


@finetune.command("attributes")
@_finetune_options("attributes")
def finetune_attributes(config_file, resume, force, **settings) -> None:
    """Pedestrian attributes (linear head, positive-ratio-weighted BCE) on PA-100K or PETA."""
    _run_finetune("attributes", config_file, resume, force, settings)


@finetune.command("parsing")
@_finetune_options("parsing")
def finetune_parsing(config_file, resume, force, **settings) -> None:
    """Human parsing (a light convolutional head on the patch tokens, pixel cross-entropy) on LIP or CIHP."""
    _run_finetune("parsing", config_file, resume, force, settings)


@finetune.command("pose")
@_finetune_options("pose")
def finetune_pose(config_file, resume, force, **settings) -> None:
    """Top-down pose (256x192 crops, heat-map head, flip test; OKS AP by COCOeval) on COCO person keypoints."""
    _run_finetune("pose", config_file, resume, force, settings)


# --------------------------------------------------------------------------- evaluation


@main.command()
@declared_options("clasp.datasets.synth_config", "SynthConfig")
def synth(**settings) -> None:
    """Draw a synthetic person world with ground truth: OUT/images/ (for `clasp label`) and OUT/truth/."""
    from clasp.datasets.synth import synthesize
    from clasp.datasets.synth_config import SynthConfig

    config = config_from(SynthConfig, settings)
    if config.layout is not None:
        from clasp.datasets.synth.layouts import check_layout_limits, write_layout

        try:
            check_layout_limits(config.layout, config)
        except ValueError as exc:
            raise UserError(f"--layout {config.layout}: {exc}") from None
        write_layout(config.layout, config)
        click.echo(f"wrote the synthetic world ({config.identities} identities) to {config.out} in the "
                   f"{config.layout} layout")
        return
    summary = synthesize(config)
    click.echo(f"wrote {summary.images} images of {summary.identities} identities from {summary.cameras} cameras "
               f"to {config.out} in {summary.seconds:.1f} s ({summary.images_per_second:.0f} images/s)")


@main.command("synth-corpus")
@declared_options("clasp.datasets.synth_config", "CorpusConfig")
def synth_corpus(**settings) -> None:
    """Draw an image-caption corpus (persons, body regions, items, scenes) to train `clasp train-clip` on.

    Identities, cameras and random streams are disjoint from every `clasp synth`
    world, even for the same seed. Only images and captions are written.
    """
    from clasp.datasets.synth.corpus import write_corpus
    from clasp.datasets.synth_config import CorpusConfig

    config = config_from(CorpusConfig, settings)
    summary = write_corpus(config)
    kinds = ", ".join(f"{k} {n}" for k, n in summary.kinds.items())
    click.echo(f"wrote {summary.pairs} image-caption pairs to {config.out} in {summary.seconds:.1f} s "
               f"({summary.pairs_per_second:.0f} pairs/s): {kinds}")


@main.command("eval")
@declared_options("clasp.evaluation.config", "EvalConfig")
def eval_command(**settings) -> None:
    """Probe a frozen backbone: attributes (linear, mA), parsing (linear on patches, mIoU), re-ID (cosine kNN, mAP,
    rank-1), pose (linear on patches to heat maps, OKS AP)."""
    from clasp.evaluation.config import EvalConfig
    from clasp.evaluation.run_eval import evaluate, format_table, unscored_main_metric

    config = config_from(EvalConfig, settings)
    results = evaluate(config, log=lambda msg: click.echo(msg, err=True))
    click.echo(format_table(results))
    if config.out is not None:
        click.echo(f"results written to {config.out}")
    _fail_if_unscored(unscored_main_metric(results))


@main.command("eval-labels")
@declared_options("clasp.evaluation.config", "LabelQualityConfig")
def eval_labels(**settings) -> None:
    """Quality of pseudo-labels against synthetic ground truth: IoU per part, accuracy per attribute group."""
    from clasp.evaluation.config import LabelQualityConfig
    from clasp.evaluation.label_quality import evaluate_labels, format_label_quality

    config = config_from(LabelQualityConfig, settings)
    results = evaluate_labels(config)
    click.echo(format_label_quality(results))
    if config.out is not None:
        click.echo(f"results written to {config.out}")


@main.command("truth-labels")
@click.argument("world", type=click.Path(path_type=Path))
@declared_options("clasp.evaluation.config", "TruthStoreConfig")
def truth_labels(world: Path, **settings) -> None:
    """A label store of a `clasp synth` WORLD whose labels are its ground truth, optionally corrupted.

    A control no real data set has: pre-training on it tells what labels of a
    known quality buy (noise 0 is the upper bound). Read it like any store.
    """
    from clasp.evaluation.config import TruthStoreConfig
    from clasp.evaluation.truth_store import write_truth_store

    config = config_from(TruthStoreConfig, settings, world=world)
    summary = write_truth_store(config)
    click.echo(f"wrote {summary.rows} rows in {summary.shards} shards to {config.out} in {summary.seconds:.1f} s; "
               f"changed {summary.part_cells_changed:.1%} of part cells and {summary.attribute_values_changed:.1%} "
               "of attribute values")


if __name__ == "__main__":
    main()
