"""The settings the training commands share are declared once (`clasp.runs.settings`), and so is the layering
of config files (`clasp.settings.layers`)."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import pytest

from clasp.hardware.precision import DEFAULT_PRECISION, PRECISION_HELP, PRECISIONS
from clasp.runs.settings import RunSettings, workers_problem
from clasp.settings import coerce, same_as, setting, settings_of
from clasp.settings.layers import config_layers, load_config_file
from clasp.settings.parsers import names, size_hw

SHARED = {info.name: info for info in settings_of(RunSettings)}
# what a command may say otherwise at its `same_as`
OWN = ("default", "help", "resumable", "shown")


def training_configs() -> dict[str, type]:
    from clasp.evaluation.config import EvalConfig
    from clasp.finetune.config import FinetuneConfig
    from clasp.labeling.config import ClipLabelerConfig, LabelConfig
    from clasp.labeling.train_clip_config import TrainClipConfig
    from clasp.pretraining.config import PretrainConfig

    return {"pretrain": PretrainConfig, "finetune": FinetuneConfig, "train-clip": TrainClipConfig,
            "label": LabelConfig, "labeler": ClipLabelerConfig, "eval": EvalConfig}


def test_a_shared_setting_is_the_shared_declaration_wherever_it_appears() -> None:
    seen = {name: [] for name in SHARED}
    for command, cls in training_configs().items():
        for info in settings_of(cls):
            shared = SHARED.get(info.name)
            if shared is None or (command == "label" and info.name == "force"):  # label's --force: another meaning
                continue
            seen[info.name].append(command)
            assert info.help.startswith(shared.help), (command, info.name)  # only a sentence of its own added
            same = {k: v for k, v in vars(shared).items() if k not in OWN}
            assert same == {k: v for k, v in vars(info).items() if k not in OWN}, (command, info.name)
    assert set(seen["precision"]) == {"pretrain", "finetune", "label", "labeler", "eval"}
    in_both = {name for name, commands in seen.items() if {"pretrain", "finetune"} <= set(commands)}
    assert {"precision", "num_workers", "seed", "save_every", "keep_checkpoints", "log_every", "stop_at", "resume",
            "force"} <= in_both
    assert "train-clip" in seen["seed"]


def test_pretrain_and_finetune_declare_precision_and_workers_once() -> None:
    from clasp.finetune.config import FinetuneConfig
    from clasp.pretraining.config import PretrainConfig

    pre = {info.name: info for info in settings_of(PretrainConfig)}
    fine = {info.name: info for info in settings_of(FinetuneConfig)}
    assert pre["precision"].choices == fine["precision"].choices == PRECISIONS
    assert pre["precision"].default == fine["precision"].default == DEFAULT_PRECISION == PRECISIONS[0]
    assert pre["num_workers"].limits == fine["num_workers"].limits
    assert not pre["num_workers"].resumable and fine["num_workers"].resumable  # the data order depends on it
    assert fine["save_every"].default == 500 and pre["save_every"].default == 1000
    assert pre["seed"].limits == fine["seed"].limits == (0, 2**32 - 1)


def test_one_workers_rule() -> None:
    from clasp.hardware import available_cores
    from clasp.hardware.cores import WORKERS_PER_CORE, beyond_cores

    cores = available_cores()
    assert workers_problem(None) is None and workers_problem(WORKERS_PER_CORE * cores) is None
    assert workers_problem(WORKERS_PER_CORE * cores + 1) == (
        f"num_workers {WORKERS_PER_CORE * cores + 1} is more than {WORKERS_PER_CORE} per available core "
        f"({WORKERS_PER_CORE} x {cores} = {WORKERS_PER_CORE * cores})")
    assert beyond_cores(9, cores=2) == "is more than 4 per available core (4 x 2 = 8)"


def test_the_task_prompts_have_one_home() -> None:
    from clasp.finetune.config import PROMPTS
    from clasp.pretraining.export_config import ExportConfig
    from clasp.pretraining.tasks import TASKS

    assert PROMPTS is TASKS
    assert {info.name: info for info in settings_of(ExportConfig)}["task"].choices is TASKS


@dataclass
class Base:
    count: int = setting(3, "How many.", limits=(1, 10), resumable=True)


@dataclass
class Derived:
    count: int = same_as(Base, "count", default=5, note="Here: of these.", resumable=False)
    size: tuple[int, int] = setting((4, 2), "Grid.", parse=size_hw)
    tags: tuple[str, ...] | None = setting(None, "Tags.", parse=names)
    out: str = setting("", "Folder.", resumable=True, inherited=False)
    resume: bool = setting(False, "Resume.", inherited=False)


def test_same_as_says_only_what_differs() -> None:
    (info, *_) = settings_of(Derived)
    assert (info.default, info.help, info.limits, info.resumable) == (5, "How many. Here: of these.", (1, 10), False)
    assert settings_of(Base)[0].help == "How many." and settings_of(Base)[0].resumable
    assert [f.default for f in fields(Derived)][:1] == [5]


def test_a_declared_parser_reads_config_files_too() -> None:
    size, tags = settings_of(Derived)[1:3]
    assert coerce(size, "8x4", "f.yaml") == (8, 4) and coerce(size, [8, 4], "f.yaml") == (8, 4)
    assert coerce(tags, "a, b", "f.yaml") == ("a", "b") and coerce(tags, "", "f.yaml") == ()
    with pytest.raises(ValueError, match=r"f\.yaml: setting 'size': '8' is not HEIGHTxWIDTH"):
        coerce(size, "8", "f.yaml")
    with pytest.raises(ValueError, match="both sizes must be positive"):
        size_hw("0x3")


def test_config_layers_name_each_source_and_start_from_the_saved_run(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("count: 7\nsize: 2x2\n")
    assert load_config_file(Derived, config) == {"count": 7, "size": (2, 2)}
    layers = config_layers(Derived, config, {"count": 8, "tags": None})
    assert layers.values() == {"count": 8, "size": (2, 2)}
    assert layers.source_of("count") == "command line" and layers.source_of("size") == str(config)
    assert layers.source_of("out") is None
    with pytest.raises(ValueError, match="unknown setting 'colour'"):
        config_layers(Derived, None, {"colour": 1})
    with pytest.raises(ValueError, match="command line: setting 'count' must be an integer"):
        config_layers(Derived, None, {"count": "many"})

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"config": {"count": 9, "out": "elsewhere", "resume": False}}))

    def load(path: Path):
        return json.loads(path.read_text())["config"], {}

    resumed = config_layers(Derived, None, {"out": str(run), "resume": True}, "config.json", load)
    assert resumed.values() == {"count": 9, "out": str(run), "resume": True}  # `out` and `resume`: not inherited
    assert resumed.source_of("count") == str(run / "config.json")
    fresh = config_layers(Derived, None, {"out": str(run)}, "config.json", load)
    assert fresh.values() == {"out": str(run)}


def test_precision_help_is_written_once() -> None:
    assert SHARED["precision"].help == PRECISION_HELP


def test_training_configs_inherit_the_run_settings_and_list_their_own_first() -> None:
    from dataclasses import fields

    from clasp.finetune.config import FinetuneConfig
    from clasp.pretraining.config import PretrainConfig
    from clasp.runs.settings import RunSettings
    from clasp.runs.trackers import TrackerSettings

    shared = {f.name for f in fields(RunSettings)} | {f.name for f in fields(TrackerSettings)}
    for cls in (PretrainConfig, FinetuneConfig):
        assert issubclass(cls, RunSettings) and issubclass(cls, TrackerSettings)
        names = [info.name for info in settings_of(cls)]
        inherited = [n for n in names if n in shared and n not in cls.__annotations__]
        assert names[-len(inherited):] == inherited  # the inherited ones close the list
    assert FinetuneConfig().save_every == 500 and PretrainConfig().save_every == RunSettings().save_every
