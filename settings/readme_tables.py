"""The README's option tables, rendered from the declared settings.

A table sits between `<!-- settings: NAME -->` and `<!-- /settings -->`;
`python -m clasp.settings README.md` rewrites every such table in place and
`tests/test_settings.py` fails when one differs from its dataclass.
"""

from __future__ import annotations

import importlib
import re

from clasp.settings.fields import SettingInfo, settings_of

# table name -> (module, dataclass, whether the settings are also config-file keys)
TABLES: dict[str, tuple[str, str, bool]] = {
    "pretrain": ("clasp.pretraining.config", "PretrainConfig", True),
    "label": ("clasp.labeling.config", "LabelConfig", False),
    "finetune": ("clasp.finetune.config", "FinetuneConfig", True),
    "train-clip": ("clasp.labeling.train_clip_config", "TrainClipConfig", False),
}
BLOCK = re.compile(r"(<!-- settings: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /settings -->)", re.S)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _name_cell(info: SettingInfo, keys: bool) -> str:
    if not keys:
        return f"`{info.option}`"
    if not info.flag:
        return f"`{info.name}` (config file only)"
    return f"`{info.option}` / `{info.name}`"


def render(name: str) -> str:
    """The markdown table of the settings behind `name` (see TABLES)."""
    module, cls_name, keys = TABLES[name]
    cls = getattr(importlib.import_module(module), cls_name)
    head = "| flag / key | default | meaning |" if keys else "| option | default | meaning |"
    lines = [head, "| --- | --- | --- |"]
    for info in settings_of(cls):
        if info.hidden or (not keys and not info.flag):
            continue
        lines.append(f"| {_name_cell(info, keys)} | {_cell(info.shown_default)} | {_cell(info.help)} |")
    return "\n".join(lines) + "\n"


def rewrite(text: str) -> str:
    """`text` with every settings table replaced by its rendering."""
    return BLOCK.sub(lambda m: m.group(1) + render(m.group("name")) + m.group(4), text)


def blocks(text: str) -> dict[str, str]:
    """{table name: its current body} of every settings table in `text`."""
    return {m.group("name"): m.group("body") for m in BLOCK.finditer(text)}
