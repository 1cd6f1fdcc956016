"""A settings dataclass as a markdown options table, and the marked tables of a page.

On a command's page (`docs/commands/<command>.md`) the table sits between
`<!-- settings: COMMAND -->` and `<!-- /settings -->`; `replace_tables` puts the
rendered tables there, and on a page with no markers yet replaces the table
under its `## Options` heading, markers included. Which command reads which
dataclass is known only above every package (`clasp.command_pages`): this
module renders a class it is given and imports nothing of ours but `fields`.
"""

from __future__ import annotations

import re
from typing import Callable

from clasp.settings.fields import SettingInfo, settings_of

BLOCK = re.compile(r"(<!-- settings: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /settings -->)", re.S)
# the first table under the `## Options` heading of a page, up to the next heading
OPTIONS_TABLE = re.compile(r"(^## Options\n(?:(?!#)(?!\|).*\n)*?)((?:\|.*\n)+)", re.M)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _name_cell(info: SettingInfo, keys: bool) -> str:
    if not keys:
        return f"`{info.option}`"
    if not info.flag:
        return f"`{info.name}` (config file only)"
    return f"`{info.option}` / `{info.name}`"


def render(cls: type, keys: bool) -> str:
    """The markdown table of `cls`'s settings; `keys`: they are config-file keys too (a column says so)."""
    head = "| flag / key | default | meaning |" if keys else "| option | default | meaning |"
    lines = [head, "| --- | --- | --- |"]
    for info in settings_of(cls):
        if info.hidden or (not keys and not info.flag):
            continue
        lines.append(f"| {_name_cell(info, keys)} | {_cell(info.shown_default)} | {_cell(info.help)} |")
    return "\n".join(lines) + "\n"


def replace_tables(text: str, table_of: Callable[[str], str | None], name: str | None = None) -> str:
    """`text` with every marked table replaced by `table_of(command)`; `name`: the command whose page `text` is,
    whose `## Options` table becomes its rendered one when the page has no markers for it yet. A command
    `table_of` does not know (None) keeps its table."""
    own = table_of(name) if name is not None else None
    if own is not None and name not in blocks(text):
        marked = f"<!-- settings: {name} -->\n" + own + "<!-- /settings -->\n"
        text = OPTIONS_TABLE.sub(lambda m: m.group(1) + marked, text, count=1)

    def fill(match: re.Match) -> str:
        table = table_of(match.group("name"))
        return match.group(0) if table is None else match.group(1) + table + match.group(4)

    return BLOCK.sub(fill, text)


def blocks(text: str) -> dict[str, str]:
    """{command: its current table} of every marked table in `text`."""
    return {m.group("name"): m.group("body") for m in BLOCK.finditer(text)}
