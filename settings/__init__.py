"""Settings declared once.

Each field of a stage's config dataclass (`PretrainConfig`, `LabelConfig`, ...)
is declared with `setting(default, help, ...)`: its name, type, default, help,
choices and bounds live in that one line. From it are derived the command-line
options (`click_options`), the config-file keys and their type checks
(`coerce`), the bounds check (`check_value`), which settings may change on
resume, and the README's option tables (`python -m clasp.settings README.md`
rewrites them; a test fails when they drift). This package imports nothing of
ours, so both stages can use it.
"""

from clasp.settings.fields import SettingInfo, check_value, coerce, first_problem, setting, settings_of, same_as

__all__ = ["SettingInfo", "check_value", "coerce", "first_problem", "same_as", "setting", "settings_of"]
