"""`python -m clasp.settings [PATH ...]`: rewrite the option tables of the command pages from the dataclasses.

A PATH is a markdown file or a folder of them; without one, `docs/commands`. A
page's command is its file name (`docs/commands/pretrain.md`: `pretrain`).
"""

import sys
from pathlib import Path

from clasp.settings.readme_tables import PAGES, TABLES, blocks, rewrite

paths = [Path(arg) for arg in sys.argv[1:]] or [PAGES]
for path in (p for arg in paths for p in (sorted(arg.glob("*.md")) if arg.is_dir() else [arg])):
    text = path.read_text(encoding="utf-8")
    new = rewrite(text, path.stem)
    if new != text:
        path.write_text(new, encoding="utf-8")
        print(f"rewrote the settings tables of {path}")
    if path.stem in TABLES and path.stem not in blocks(new):
        print(f"{path}: no `## Options` table to put the settings of {path.stem!r} in", file=sys.stderr)
