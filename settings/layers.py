"""Where a run's settings come from, the same for every command that has a `--config FILE`.

Layers, later winning: the defaults, (with resume) the saved run settings, the
config file, the flags. `read_settings_file` reads the file; `merge_layers` stacks them;
`config_layers` builds the layers of any config dataclass (`clasp pretrain` and
`clasp finetune` both use it), each value coerced to its declared type and each
layer remembering where it came from, so a refused value can name its file;
`build_layered` builds and validates the config from them, naming that layer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection

import yaml

from clasp.settings.fields import coerce, settings_of


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


def coerced(cls: type, values: dict[str, Any], source: str) -> dict[str, Any]:
    """`values` as the declared types of `cls`'s settings; ValueError naming `source` and the key."""
    infos = {info.name: info for info in settings_of(cls)}
    return {key: coerce(infos[key], value, source) for key, value in values.items()}


def load_config_file(cls: type, path: str | Path) -> dict[str, Any]:
    """The settings of `cls` in a YAML or JSON file, coerced; unknown keys and bad values name the key and file."""
    keys = [info.name for info in settings_of(cls)]
    return coerced(cls, read_settings_file(path, keys), str(path))


@dataclass
class Layers:
    """A run's settings layer by layer, lowest first, each with where it came from (a file, "command line")."""

    layers: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def values(self) -> dict[str, Any]:
        """The layers merged (`merge_layers`)."""
        return merge_layers([layer for _, layer in self.layers])

    def source_of(self, key: str | None) -> str | None:
        """Where the value of `key` came from (the highest layer that gives it); None: the defaults."""
        found = [source for source, layer in self.layers if key in layer]
        return found[-1] if found else None


def config_layers(cls: type, config_file: str | Path | None, overrides: dict[str, Any],
                  saved_file: str | None = None,
                  load_saved: Callable[[Path], tuple[dict[str, Any], Any]] | None = None) -> Layers:
    """[saved run settings] <- config file <- overrides (None means "not given"), coerced; ValueError names the
    first unknown key or bad value.

    With `resume` and `out` given, and `out`/`saved_file` there, the settings `load_saved` reads from it form
    the lowest layer, without those declared `inherited=False` (they describe one start, not the run).
    """
    infos = {info.name: info for info in settings_of(cls)}
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(given) - set(infos))
    if unknown:
        raise ValueError(f"unknown setting {unknown[0]!r}")
    layers = Layers()
    if config_file is not None:
        layers.layers.append((str(config_file), load_config_file(cls, config_file)))
    layers.layers.append(("command line", coerced(cls, given, "command line")))
    merged = layers.values()
    if load_saved is not None and saved_file and merged.get("resume") and merged.get("out"):
        path = Path(merged["out"]) / saved_file
        if path.is_file():
            saved, _ = load_saved(path)
            inherited = {k: v for k, v in saved.items() if k in infos and infos[k].inherited}
            layers.layers.insert(0, (str(path), coerced(cls, inherited, str(path))))
    return layers


def build_layered(cls: type, config_file: str | Path | None, overrides: dict[str, Any], error: type[Exception],
                  saved_file: str | None = None,
                  load_saved: Callable[[Path], tuple[dict[str, Any], Any]] | None = None,
                  complete: Callable[[dict[str, Any]], None] | None = None,
                  key_of: Callable[[Exception], str | None] = lambda exc: getattr(exc, "key", None)) -> Any:
    """`cls` from its layers (`config_layers`), validated; every refusal is an `error` of one line.

    A layer that cannot be read is refused as it is; a value `cls.validate()` refuses (`key_of` names its
    setting) is refused naming the layer that set it (`config.yaml: lr ...`, `command line: lr ...`), so the
    user knows which file to fix. `complete` may fill values derived from others before validation.
    """
    try:
        layers = config_layers(cls, config_file, overrides, saved_file, load_saved)
    except ValueError as exc:  # an unknown key, a value of the wrong type, a file that does not parse
        raise error(str(exc)) from None
    values = layers.values()
    if complete is not None:
        complete(values)
    try:
        return cls(**values).validate()
    except error as exc:
        key = key_of(exc)
        source = layers.source_of(key) if key is not None else None
        if source is None:
            raise
        exc.args = (f"{source}: {exc}",)
        raise exc from None
