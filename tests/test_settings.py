"""Settings declared once: the CLI options, config keys, resume rule and option tables of docs/commands come from the dataclasses."""

from __future__ import annotations

import math

import pytest

from clasp.settings import check_value, coerce, settings_of
from clasp.command_pages import PAGES, TABLES, page, rewrite, table
from clasp.settings.option_tables import blocks


def test_option_tables_are_the_dataclasses() -> None:
    for name in TABLES:
        found = blocks(page(name).read_text(encoding="utf-8"))
        assert set(found) == {name}, f"docs/commands/{name}.md has the settings tables {sorted(found)}, not [{name!r}]"
        assert found[name] == table(name), f"the table of {name!r} drifted: run `python -m clasp.command_pages`"
    for other in PAGES.glob("*.md"):
        assert set(blocks(other.read_text(encoding="utf-8"))) <= {other.stem}, f"{other.name} holds another command's table"


def test_a_command_added_to_the_mapping_takes_over_its_hand_written_table() -> None:
    written = "# `clasp export`\n\n## Options\n\nBy hand:\n\n| option | default | meaning |\n| --- | --- | --- |\n| `--out` | x | y |\n\n## Examples\n"
    rewritten = rewrite(written, "export")
    assert blocks(rewritten) == {"export": table("export")}
    assert rewritten.startswith("# `clasp export`\n\n## Options\n\nBy hand:\n\n<!-- settings: export -->\n")
    assert rewritten.endswith("<!-- /settings -->\n\n## Examples\n") and rewrite(rewritten, "export") == rewritten
    assert rewrite(written, "no-such-command") == written  # a command without declarations keeps its table


def test_pretrain_options_keys_and_resume_rule_come_from_the_dataclass() -> None:
    from clasp.cli import pretrain
    from clasp.pretraining.config import KEYS, RESUMABLE_CHANGES, PretrainConfig

    infos = settings_of(PretrainConfig)
    options = {p.name: p for p in pretrain.params}
    assert {i.name for i in infos if i.flag} == set(options) - {"config_file"}
    assert set(KEYS) == {i.name for i in infos}
    assert options["experts"].type.max == 64 and tuple(options["preset"].type.choices) == ("tiny", "small", "base")
    assert {"precision", "save_every", "out", "on_bad_row"} <= RESUMABLE_CHANGES
    assert not {"batch_size", "lr", "experts", "seed"} & RESUMABLE_CHANGES


def test_label_options_come_from_the_dataclass() -> None:
    from clasp.cli import label
    from clasp.labeling.config import LabelConfig

    flags = {i.name for i in settings_of(LabelConfig) if i.flag}
    assert flags == {p.name for p in label.params}


def test_every_command_offers_one_precision_vocabulary() -> None:
    from clasp.cli import main

    seen = []
    for command in main.commands.values():
        for sub in getattr(command, "commands", {"": command}).values():
            seen += [tuple(p.type.choices) for p in sub.params if p.name == "precision"]
    assert seen and set(seen) == {("auto", "fp32", "bf16", "fp16")}


@pytest.mark.parametrize("value, message", [
    (-1, "must not be negative, got -1"), (0.0, None), (2.0, "must be in [0, 1], got 2"),
    (math.nan, "must be a finite number, got nan"),
])
def test_one_bounds_rule_for_every_number(value, message) -> None:
    from clasp.pretraining.config import SETTINGS

    problem = check_value(SETTINGS["lr"], value)
    assert (problem is None) if message is None else (problem == f"lr {message}")


def test_coerce_keeps_ints_and_names_the_source() -> None:
    from clasp.pretraining.config import SETTINGS

    assert coerce(SETTINGS["lr"], "1e-4", "f.yaml") == 1e-4
    assert coerce(SETTINGS["steps"], None, "f.yaml") is None
    with pytest.raises(ValueError, match=r"f\.yaml: setting 'batch_size' must be an integer, got 2\.5"):
        coerce(SETTINGS["batch_size"], 2.5, "f.yaml")
    with pytest.raises(ValueError, match="cannot be empty"):
        coerce(SETTINGS["batch_size"], None, "f.yaml")


def test_finetune_options_keys_and_resume_rule_come_from_the_dataclass() -> None:
    from clasp.cli import finetune
    from clasp.finetune.config import KEYS, RECIPE_ONLY, RESUMABLE_CHANGES, FinetuneConfig

    infos = settings_of(FinetuneConfig)
    assert set(KEYS) == {i.name for i in infos}
    recipe_only = {name for names in RECIPE_ONLY.values() for name in names}
    shared = {i.name for i in infos if i.flag} - recipe_only
    for task, command in finetune.commands.items():
        options = {p.name: p for p in command.params}
        assert set(options) - {"config_file"} == shared | set(RECIPE_ONLY[task]), task
        assert options["batch_size"].type.max == 65_536 and options["warmup"].type.max == 0.999
    assert {"precision", "rerank", "out", "stop_at"} <= RESUMABLE_CHANGES
    assert not {"lr", "batch_size", "margin", "seed"} & RESUMABLE_CHANGES
