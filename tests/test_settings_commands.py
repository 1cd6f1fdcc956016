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


def test_the_command_line_reads_no_heavy_module() -> None:
    import subprocess
    import sys

    code = "import sys, clasp.cli; print(sorted(m for m in ('torch', 'numpy', 'h5py', 'PIL') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
