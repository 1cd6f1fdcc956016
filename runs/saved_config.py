"""OUT/config.json: what a run saves of its settings, and the rule that decides whether `--resume` may continue it.

The saved form is `{"clasp_version", "config": every setting, "derived": values computed from the settings
and the data (world size, total steps, data fingerprint, ...)}`, written at every start and beside every
checkpoint. Invariants:

- `--resume` continues a run only when every setting outside the command's `resumable` set and every
  derived value equals the saved one; a setting the saved file lacks (written by an older clasp) counts as
  its default. Anything else would not reproduce the uninterrupted run.
- A refusal is one line naming the file and, for each difference, the key with both values.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from clasp.errors import InputError


class SavedConfigError(InputError, ValueError):
    """A config.json that is not a saved run config; one line naming it."""


def saved_form(settings: Mapping[str, Any], derived: Mapping[str, Any]) -> dict[str, Any]:
    """What config.json holds: the settings plus the values derived from them and the data."""
    from clasp import __version__

    return {"clasp_version": __version__, "config": dict(settings), "derived": dict(derived)}


def load_saved(path: str | Path, error: type[Exception] = SavedConfigError) -> tuple[dict[str, Any], dict[str, Any]]:
    """(settings, derived) of a saved config.json; `error` (one line naming the file) when it is not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return dict(data["config"]), dict(data.get("derived", {}))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise error(f"{path}: not a saved run config ({type(exc).__name__}: {exc})") from None


@dataclass(frozen=True)
class ResumeRule:
    """A command's resume rule: its setting names, those that may change on resume, and their defaults."""

    keys: tuple[str, ...]
    resumable: frozenset[str]
    defaults: Mapping[str, Any]

    def differences(self, saved: Mapping[str, Any], saved_derived: Mapping[str, Any], settings: Mapping[str, Any],
                    derived: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
        """(key, saved value, new value) for every difference that forbids an exact resume."""
        out = []
        for key in self.keys:
            old = saved.get(key, self.defaults.get(key))
            if key not in self.resumable and old != settings[key]:
                out.append((key, old, settings[key]))
        for key in sorted(set(saved_derived) | set(derived)):
            if saved_derived.get(key) != derived.get(key):
                out.append((f"derived.{key}", saved_derived.get(key), derived.get(key)))
        return out


def describe_differences(diffs: list[tuple[str, Any, Any]], path: str | Path) -> str:
    """The one-line refusal of a resume, naming the saved config and every difference."""
    parts = [f"{key}: checkpoint {old!r}, now {new!r}" for key, old, new in diffs]
    return (f"{path}: cannot resume, settings differ from the run's ({'; '.join(parts)}); "
            "use the run's settings, or --force to start over")
