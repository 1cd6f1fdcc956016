"""The option tables of the command pages (`docs/commands/<command>.md`), rendered from the declared settings.

`TABLES` maps a command to the dataclass its options are declared in; adding a
command is one line there. On its page the table sits between
`<!-- settings: COMMAND -->` and `<!-- /settings -->`. `python -m clasp.settings`
rewrites every such table in place; on the page of a listed command that has no
markers yet, the table under its `## Options` heading is replaced by the
rendered one, markers included. `tests/test_settings.py` fails when a page's
table differs from its dataclass.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

from clasp.settings.fields import SettingInfo, settings_of

# command -> (module, dataclass, whether the settings are also config-file keys)
TABLES: dict[str, tuple[str, str, bool]] = {
    "pretrain": ("clasp.pretraining.config", "PretrainConfig", True),
    "label": ("clasp.labeling.config", "LabelConfig", False),
    "finetune": ("clasp.finetune.config", "FinetuneConfig", True),
    "train-clip": ("clasp.labeling.train_clip_config", "TrainClipConfig", False),
    "export": ("clasp.pretraining.export_config", "ExportConfig", False),
}
PAGES = Path(__file__).resolve().parents[1] / "docs" / "commands"
BLOCK = re.compile(r"(<!-- settings: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /settings -->)", re.S)
# the first table under the `## Options` heading of a page, up to the next heading
OPTIONS_TABLE = re.compile(r"(^## Options\n(?:(?!#)(?!\|).*\n)*?)((?:\|.*\n)+)", re.M)


def page(name: str) -> Path:
    """The reference page of command `name`."""
    return PAGES / f"{name}.md"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _name_cell(info: SettingInfo, keys: bool) -> str:
    if not keys:
        return f"`{info.option}`"
    if not info.flag:
        return f"`{info.name}` (config file only)"
    return f"`{info.option}` / `{info.name}`"


def render(name: str) -> str:
    """The markdown table of the settings behind command `name` (see TABLES)."""
    module, cls_name, keys = TABLES[name]
    cls = getattr(importlib.import_module(module), cls_name)
    head = "| flag / key | default | meaning |" if keys else "| option | default | meaning |"
    lines = [head, "| --- | --- | --- |"]
    for info in settings_of(cls):
        if info.hidden or (not keys and not info.flag):
            continue
        lines.append(f"| {_name_cell(info, keys)} | {_cell(info.shown_default)} | {_cell(info.help)} |")
    return "\n".join(lines) + "\n"


def rewrite(text: str, name: str | None = None) -> str:
    """`text` with every settings table replaced by its rendering; `name`: the command whose page `text` is,
    whose `## Options` table becomes the rendered one when the page has no markers for it yet."""
    if name in TABLES and name not in blocks(text):
        marked = f"<!-- settings: {name} -->\n" + render(name) + "<!-- /settings -->\n"
        text = OPTIONS_TABLE.sub(lambda m: m.group(1) + marked, text, count=1)
    return BLOCK.sub(lambda m: m.group(1) + render(m.group("name")) + m.group(4), text)


def blocks(text: str) -> dict[str, str]:
    """{command: its current table} of every settings table in `text`."""
    return {m.group("name"): m.group("body") for m in BLOCK.finditer(text)}
