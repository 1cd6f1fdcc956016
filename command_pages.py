"""`python -m clasp.command_pages [PATH ...]`: rewrite the options tables of the command pages.

`TABLES` says which dataclass declares each command's options; adding a command
is one line. It lives here, above every package, because naming
`clasp.pretraining.config` from `clasp.settings` would make the floor depend
on the stages. A PATH is a markdown file or a folder of them; without one,
`docs/commands`. A page's command is its file name (`docs/commands/pretrain.md`:
`pretrain`). `tests/test_settings.py` fails when a page differs from its class.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from clasp.settings.option_tables import blocks, render, replace_tables

# command -> (module, dataclass, whether the settings are also config-file keys)
TABLES: dict[str, tuple[str, str, bool]] = {
    "pretrain": ("clasp.pretraining.config", "PretrainConfig", True),
    "label": ("clasp.labeling.config", "LabelConfig", False),
    "finetune": ("clasp.finetune.config", "FinetuneConfig", True),
    "train-clip": ("clasp.labeling.train_clip_config", "TrainClipConfig", False),
    "export": ("clasp.pretraining.export_config", "ExportConfig", False),
    "eval": ("clasp.evaluation.config", "EvalConfig", False),
    "eval-labels": ("clasp.evaluation.config", "LabelQualityConfig", False),
    "truth-labels": ("clasp.evaluation.config", "TruthStoreConfig", False),
    "synth": ("clasp.datasets.synth_config", "SynthConfig", False),
    "synth-corpus": ("clasp.datasets.synth_config", "CorpusConfig", False),
    "verify": ("clasp.store.reader_config", "VerifyConfig", False),
    "inspect": ("clasp.store.reader_config", "InspectConfig", False),
    "show": ("clasp.store.reader_config", "ContactSheetConfig", False),
    "tiny-clip": ("clasp.labeling.tiny_clip_config", "TinyClipConfig", False),
}
PAGES = Path(__file__).resolve().parent / "docs" / "commands"


def page(name: str) -> Path:
    """The reference page of command `name`."""
    return PAGES / f"{name}.md"


def table(name: str | None) -> str | None:
    """The rendered options table of command `name`; None for a command without declared settings."""
    if name not in TABLES:
        return None
    module, cls_name, keys = TABLES[name]
    return render(getattr(importlib.import_module(module), cls_name), keys)


def rewrite(text: str, name: str | None = None) -> str:
    """`text` (the page of command `name`) with its options tables rendered from the declarations."""
    return replace_tables(text, table, name)


def main(args: list[str]) -> None:
    paths = [Path(arg) for arg in args] or [PAGES]
    for path in (p for arg in paths for p in (sorted(arg.glob("*.md")) if arg.is_dir() else [arg])):
        text = path.read_text(encoding="utf-8")
        new = rewrite(text, path.stem)
        if new != text:
            path.write_text(new, encoding="utf-8")
            print(f"rewrote the options tables of {path}")
        if path.stem in TABLES and path.stem not in blocks(new):
            print(f"{path}: no `## Options` table to put the settings of {path.stem!r} in", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
