"""Every command whose options are declared: its options are its config dataclass's settings, defaults included."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from clasp.cli import main
from clasp.settings import settings_of
from clasp.settings.click_options import click_type

# command path -> (module, config dataclass): the table the docs' option tables can be rendered from
DECLARED = {
    ("pretrain",): ("clasp.pretraining.config", "PretrainConfig"),
    ("finetune", "reid"): ("clasp.finetune.config", "FinetuneConfig"),
    ("label",): ("clasp.labeling.config", "LabelConfig"),
    ("train-clip",): ("clasp.labeling.train_clip_config", "TrainClipConfig"),
    ("export",): ("clasp.pretraining.export_config", "ExportConfig"),
    ("eval",): ("clasp.evaluation.config", "EvalConfig"),
    ("eval-labels",): ("clasp.evaluation.config", "LabelQualityConfig"),
    ("truth-labels",): ("clasp.evaluation.config", "TruthStoreConfig"),
    ("synth",): ("clasp.datasets.synth_config", "SynthConfig"),
    ("synth-corpus",): ("clasp.datasets.synth_config", "CorpusConfig"),
    ("verify",): ("clasp.store.reader_config", "VerifyConfig"),
    ("inspect",): ("clasp.store.reader_config", "InspectConfig"),
    ("show",): ("clasp.store.reader_config", "ContactSheetConfig"),
    ("tiny-clip",): ("clasp.labeling.tiny_clip_config", "TinyClipConfig"),
}


def command(path: tuple[str, ...]) -> click.Command:
    found = main
    for name in path:
        found = found.commands[name]
    return found


def config_class(module: str, name: str) -> type:
    import importlib

    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("path", list(DECLARED), ids=" ".join)
def test_every_option_is_a_declared_setting_that_leaves_the_default_to_the_dataclass(path) -> None:
    cls = config_class(*DECLARED[path])
    infos = {info.name: info for info in settings_of(cls)}
    options = [p for p in command(path).params if isinstance(p, click.Option) and p.name != "config_file"]
    assert options
    for option in options:
        info = infos[option.name]  # no hand-written option: each one is a declared setting
        if info.required:
            assert option.required and option.default in (None, getattr(click.core, "UNSET", None)), option.name
        else:
            assert option.default is None, option.name  # "not given": the dataclass's default applies
        assert option.help == info.help and option.opts == [info.option], option.name
        if not info.required:
            assert option.show_default == info.shown_default, option.name
        if info.kind is not bool and info.parse is None:
            assert type(option.type) is type(click_type(info)), option.name


@pytest.mark.parametrize("path", list(DECLARED), ids=" ".join)
def test_the_shown_default_is_the_dataclass_default(path) -> None:
    cls = config_class(*DECLARED[path])
    defaults = {f.name: f.default for f in fields(cls)}
    for info in settings_of(cls):
        assert info.default == defaults[info.name], info.name
        if info.shown is None and not info.required and info.kind in (int, float, str) and info.default not in (None, ""):
            assert info.shown_default == str(defaults[info.name]), info.name


def captured(monkeypatch, target: str, result=None) -> list:
    seen: list = []

    def fake(config, *args, **kwargs):
        seen.append(config)
        if result is None:
            raise SystemExit(0)
        return result

    monkeypatch.setattr(target, fake)
    return seen


def test_eval_builds_its_config_from_the_declaration(tmp_path: Path, monkeypatch) -> None:
    from clasp.evaluation.config import EvalConfig

    seen = captured(monkeypatch, "clasp.evaluation.run_eval.evaluate")
    result = CliRunner().invoke(main, ["eval", "--backbone", str(tmp_path), "--data", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert seen == [EvalConfig(backbone=tmp_path, data=tmp_path)]
    assert seen[0].probe.steps == 300 and seen[0].precision == "auto" and seen[0].tasks is None

    result = CliRunner().invoke(main, ["eval", "--backbone", str(tmp_path), "--data", str(tmp_path), "--tasks",
                                       "reid, pose,", "--probe-steps", "7", "--task-prompt", "per-probe"])
    assert result.exit_code == 0, result.output
    assert seen[1].tasks == ("reid", "pose") and seen[1].probe.steps == 7 and seen[1].task_prompt == "per-probe"
    bad = CliRunner().invoke(main, ["eval", "--backbone", str(tmp_path), "--data", str(tmp_path), "--probe-steps", "0"])
    assert bad.exit_code == 2 and "--probe-steps" in bad.output


def test_a_given_probe_decides_the_probe_steps() -> None:
    from clasp.evaluation.config import EvalConfig, ProbeSettings

    assert EvalConfig(Path("b"), Path("d"), probe_steps=9).probe == ProbeSettings(steps=9)
    assert EvalConfig(Path("b"), Path("d"), probe=ProbeSettings(steps=4)).probe_steps == 4


def test_truth_labels_parses_its_grid_by_the_declared_parser(tmp_path: Path, monkeypatch) -> None:
    from clasp.evaluation.config import TruthStoreConfig

    seen = captured(monkeypatch, "clasp.evaluation.truth_store.write_truth_store")
    ok = CliRunner().invoke(main, ["truth-labels", str(tmp_path), "--out", str(tmp_path / "o"), "--grid", "4x2"])
    assert ok.exit_code == 0, ok.output
    assert seen == [TruthStoreConfig(world=tmp_path, out=tmp_path / "o", grid=(4, 2))]
    bad = CliRunner().invoke(main, ["truth-labels", str(tmp_path), "--out", str(tmp_path / "o"), "--grid", "4by2"])
    assert bad.exit_code == 2 and "'4by2' is not HEIGHTxWIDTH" in bad.output


def test_synth_and_its_layout_and_the_corpus_take_the_dataclass_defaults(tmp_path: Path, monkeypatch) -> None:
    from clasp.datasets.synth.layouts import LAYOUTS
    from clasp.datasets.synth_config import LAYOUTS as DECLARED_LAYOUTS
    from clasp.datasets.synth_config import CorpusConfig, SynthConfig

    assert DECLARED_LAYOUTS == LAYOUTS
    seen = captured(monkeypatch, "clasp.datasets.synth.synthesize")
    ok = CliRunner().invoke(main, ["synth", "--out", str(tmp_path)])
    assert ok.exit_code == 0, ok.output
    assert seen == [SynthConfig(out=tmp_path)]
    corpus = captured(monkeypatch, "clasp.datasets.synth.corpus.write_corpus")
    ok = CliRunner().invoke(main, ["synth-corpus", "--out", str(tmp_path), "--pairs", "5"])
    assert ok.exit_code == 0, ok.output
    assert corpus == [CorpusConfig(out=tmp_path, pairs=5)]


def test_eval_labels_takes_its_declared_options(tmp_path: Path, monkeypatch) -> None:
    from clasp.evaluation.config import LabelQualityConfig

    seen = captured(monkeypatch, "clasp.evaluation.label_quality.evaluate_labels")
    ok = CliRunner().invoke(main, ["eval-labels", "--shards", str(tmp_path), "--truth", str(tmp_path / "t")])
    assert ok.exit_code == 0, ok.output
    assert seen == [LabelQualityConfig(shards=tmp_path, truth=tmp_path / "t")]


@pytest.mark.parametrize("path", [("verify",), ("inspect",), ("show",), ("tiny-clip",)], ids=" ".join)
def test_every_declared_setting_is_an_option(path) -> None:
    cls = config_class(*DECLARED[path])
    options = {p.name for p in command(path).params if isinstance(p, click.Option)}
    assert {info.name for info in settings_of(cls) if info.flag} <= options


@pytest.mark.parametrize("args", [["eval"], ["export", "run"], ["synth"], ["show", "shards"]], ids=" ".join)
def test_a_required_setting_left_out_is_a_usage_error(args) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "Missing option" in result.output, result.output


def test_a_short_option_and_a_flag_named_unlike_its_field() -> None:
    from clasp.store.reader_config import ContactSheetConfig, InspectConfig

    infos = {info.name: info for info in settings_of(ContactSheetConfig) + settings_of(InspectConfig)}
    assert infos["n"].option == "-n" and infos["attribute_lines"].option == "--attributes"
    assert infos["as_json"].option == "--json" and infos["examples_per_reason"].option == "--examples"
    assert infos["image_height"].option == "--image-height"


def test_the_readers_build_their_configs_from_the_declarations(tmp_path: Path, monkeypatch) -> None:
    from clasp.store.reader_config import ContactSheetConfig, InspectConfig, VerifyConfig

    seen = captured(monkeypatch, "clasp.store.inspect.inspect_store")
    ok = CliRunner().invoke(main, ["inspect", str(tmp_path), "--json", "--examples", "0", "--cache-size", "1G"])
    assert ok.exit_code == 0, ok.output
    assert seen == [InspectConfig(tmp_path, as_json=True, examples_per_reason=0, cache_size="1G")]
    assert seen[0].cache.limit == 1 << 30 and seen[0].on_bad_row == "stop"
    bad = CliRunner().invoke(main, ["inspect", str(tmp_path), "--examples", "-1"])
    assert bad.exit_code == 2 and "--examples" in bad.output

    sheets = captured(monkeypatch, "clasp.store.contact_sheet.make_contact_sheet")
    ok = CliRunner().invoke(main, ["show", str(tmp_path), "--out", str(tmp_path / "o"), "-n", "4", "--attributes",
                                   "2", "--on-bad-row", "skip"])
    assert ok.exit_code == 0, ok.output
    assert sheets == [ContactSheetConfig(tmp_path, tmp_path / "o", n=4, attribute_lines=2, on_bad_row="skip")]
    assert sheets[0].alpha == 0.55 and sheets[0].image_height == 256
    for args in (["-n", "0"], ["--image-height", "15"], ["--on-bad-row", "ignore"]):
        bad = CliRunner().invoke(main, ["show", str(tmp_path), "--out", str(tmp_path / "o"), *args])
        assert bad.exit_code == 2 and args[0] in bad.output, args
    missing = CliRunner().invoke(main, ["show", str(tmp_path)])
    assert missing.exit_code == 2 and "--out" in missing.output

    checks = []

    def verify_store(root, deep, cache):
        checks.append((root, deep, cache))
        raise SystemExit(0)

    monkeypatch.setattr("clasp.store.verify_store", verify_store)
    ok = CliRunner().invoke(main, ["verify", "memory://x", "--deep"])
    assert ok.exit_code == 0, ok.output
    assert checks == [("memory://x", True, VerifyConfig("memory://x").cache)]


def test_tiny_clip_builds_its_config_from_the_declaration(tmp_path: Path, monkeypatch) -> None:
    from clasp.labeling.tiny_clip_config import TinyClipConfig

    calls = []
    monkeypatch.setattr("clasp.labeling.tiny_clip.write_tiny_clip",
                        lambda out_dir, seed, vocab_file: calls.append((out_dir, seed, vocab_file)) or out_dir)
    ok = CliRunner().invoke(main, ["tiny-clip", str(tmp_path / "clip"), "--seed", "3"])
    assert ok.exit_code == 0, ok.output
    assert calls == [(tmp_path / "clip", 3, None)] and "seed 3" in ok.output
    assert TinyClipConfig(tmp_path).seed == 0 and TinyClipConfig(tmp_path).vocab is None


def test_on_bad_row_is_declared_once_in_the_store() -> None:
    from clasp.pretraining.config import PretrainConfig
    from clasp.store.reader_config import ContactSheetConfig, InspectConfig, ReaderSettings
    from clasp.store.rowcheck import ON_BAD_ROW

    store = {info.name: info for info in settings_of(ReaderSettings)}["on_bad_row"]
    assert store.choices == ON_BAD_ROW and store.default == "stop"
    for cls in (PretrainConfig, InspectConfig, ContactSheetConfig):
        info = {i.name: i for i in settings_of(cls)}["on_bad_row"]
        assert info.choices == store.choices and info.help.startswith(store.help), cls.__name__
    assert {i.name: i for i in settings_of(PretrainConfig)}["on_bad_row"].resumable


def test_the_command_line_reads_no_heavy_module() -> None:
    import subprocess
    import sys

    code = "import sys, clasp.cli; print(sorted(m for m in ('torch', 'numpy', 'h5py', 'PIL') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
