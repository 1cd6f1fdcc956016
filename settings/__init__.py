"""Settings declared once.

Each field of a command's config dataclass (`PretrainConfig`, `LabelConfig`,
`EvalConfig`, ...) is declared with `setting(default, help, ...)`: its name,
type, default, help, choices, bounds and, where the command line writes it as
text (`--grid 16x8`, `--tasks a,b`), its parser (`parsers.py`) live in that one
line. A setting several commands share is declared once and taken with
`same_as(cls, name)`, which says only what differs (its default, a sentence of
its own, its resume rule); the training commands' shared settings are
`clasp.runs.settings.RunSettings`. From the declaration are derived the
command-line options (`click_options`), the config-file keys and their type
checks (`coerce`), the layering of defaults, saved run, config file and flags
(`layers.config_layers`), the bounds check (`check_value`), which settings may
change on resume, and the option tables of docs/commands (`option_tables.py` renders a class;
`python -m clasp.command_pages` rewrites the pages; a test fails when they drift). This package
imports nothing of ours, so every stage can use it.
"""

from clasp.settings.fields import SettingInfo, check_value, coerce, first_problem, setting, settings_of, same_as

__all__ = ["SettingInfo", "check_value", "coerce", "first_problem", "same_as", "setting", "settings_of"]
