"""Where a run's settings come from, the same for every command that has a `--config FILE`.

Layers, later winning: the defaults, (with resume) the saved run settings, the
config file, the flags. `read_settings_file` reads the file; `merge_layers` stacks them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Collection

import yaml


def read_settings_file(path: str | Path, keys: Collection[str]) -> dict[str, Any]:
    """The settings in `path`, as written (the caller coerces them); ValueError with one line naming the file.

    JSON when the name ends in .json, else YAML; an empty file is no settings. A saved run config
    (`{"config": {...}, "derived": {...}}`) gives its `config`, so a finished run can seed a new one.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: config file not found")
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: does not parse ({' '.join(str(exc).split())})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of settings, got {type(data).__name__}")
    if set(data) >= {"config", "derived"} and isinstance(data["config"], dict):
        data = data["config"]
    unknown = sorted(set(data) - set(keys))
    if unknown:
        raise ValueError(f"{path}: unknown setting {unknown[0]!r}" + (f" (and {unknown[1:]})" if unknown[1:] else "")
                         + f"; known settings: {', '.join(keys)}")
    return data


def merge_layers(layers: list[dict[str, Any]]) -> dict[str, Any]:
    """The layers merged, later winning; a layer that gives `steps` without `epochs` (or the reverse) clears the
    other, so the run length is always the one the latest layer asked for."""
    values: dict[str, Any] = {}
    for layer in layers:
        if "steps" in layer and "epochs" not in layer:
            values["epochs"] = None
        if "epochs" in layer and "steps" not in layer:
            values["steps"] = None
        values.update(layer)
    return values
