"""Checks of what a reader decodes: every chunk and every row, before it is used.

`clasp verify` checks a shard's bytes against the manifest; the readers that
use the data (`clasp inspect`, `clasp show`, the pre-training stream, and
`clasp verify --deep`) also check what they decode, because a value that
passes the format can still poison a result:

- a compressed chunk that no longer decompresses (h5py: "filter returned failure");
- an image that does not decode, or decodes to another size than the manifest's;
- `part_mask` outside the vocabulary, `part_conf` outside [0, 1] or not finite,
  `attr_logits` not finite.

What happens to a bad row is the reader's `on_bad_row` setting:

- `stop` (the default): the first bad row ends the command with one line,
  `<shard>: row N: <field>: <problem>` (a chunk that does not decompress names
  its rows as `rows A-B`);
- `skip`: the row is left out and counted; the first few are named.

Problems with a whole shard (missing, another size, a sha256 that no longer
matches the manifest) stop the command under either setting: which of its rows
are damaged cannot be known. `clasp verify` names them and a rerun of
`clasp label` rebuilds them.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clasp.store.errors import StoreError
from clasp.store.schema import LabelRows

ON_BAD_ROW = ("stop", "skip")
EXAMPLES = 5  # bad rows named in a summary


class BadDataError(StoreError):
    """A row or chunk that fails a check (under `on_bad_row=stop`); the message is one line."""

    def __init__(self, path: str | Path, rows: str, problem: str) -> None:
        self.rows = rows
        self.detail = problem
        super().__init__(path, f"{rows}: {problem}")


def check_policy(on_bad_row: str) -> str:
    if on_bad_row not in ON_BAD_ROW:
        raise ValueError(f"on_bad_row must be one of {'|'.join(ON_BAD_ROW)}, got {on_bad_row!r}")
    return on_bad_row


def rows_label(start: int, stop: int) -> str:
    return f"row {start}" if stop - start == 1 else f"rows {start}-{stop - 1}"


def label_problems(rows: LabelRows, num_parts: int,
                   fields: tuple[str, ...] = ("part_mask", "part_conf", "attr_logits")) -> list[str | None]:
    """Per row, the first `<field>: <problem>` of its label values, or None when they are good."""
    n = len(rows)
    problems: list[str | None] = [None] * n
    if n == 0:
        return problems

    def note(name: str, bad: np.ndarray, values: np.ndarray, what: str) -> None:
        for i in np.flatnonzero(bad):
            if problems[i] is None:
                value = values[i][_first(values[i], name, num_parts)]
                problems[i] = f"{name}: value {_number(value)} {what}"

    if "part_mask" in fields and rows.part_mask.size:
        mask = np.asarray(rows.part_mask).reshape(n, -1)
        note("part_mask", (mask >= num_parts).any(axis=1), mask, f"outside the vocabulary [0, {num_parts})")
    if "part_conf" in fields and rows.part_conf.size:
        conf = np.asarray(rows.part_conf, np.float32).reshape(n, -1)
        with np.errstate(invalid="ignore"):
            bad = ~((conf >= 0) & (conf <= 1))
        note("part_conf", bad.any(axis=1), conf, "outside [0, 1]")
    if "attr_logits" in fields and rows.attr_logits.size:
        logits = np.asarray(rows.attr_logits, np.float32).reshape(n, -1)
        note("attr_logits", (~np.isfinite(logits)).any(axis=1), logits, "is not finite")
    return problems


def _first(values: np.ndarray, name: str, num_parts: int) -> int:
    if name == "part_mask":
        return int(np.argmax(values >= num_parts))
    if name == "part_conf":
        with np.errstate(invalid="ignore"):
            return int(np.argmax(~((values >= 0) & (values <= 1))))
    return int(np.argmax(~np.isfinite(values)))


def _number(value) -> str:
    value = value.item() if hasattr(value, "item") else value
    return f"{value:g}" if isinstance(value, float) else str(value)


def image_problem(data: bytes, hw: tuple[int, int] | None = None) -> str | None:
    """Why the stored image bytes are not a usable image (of size `hw`, H x W), or None."""
    from PIL import Image

    if not data:
        return "image: empty"
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            size = (image.height, image.width)
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for bad data
        return f"image: does not decode ({' '.join(str(exc).split()) or type(exc).__name__})"
    if hw is not None and size != tuple(hw):
        return f"image: decodes to {size[0]}x{size[1]}, the manifest says {hw[0]}x{hw[1]}"
    return None


@dataclass
class BadRows:
    """Applies `on_bad_row` for one command: raise on the first bad row, or count and name a few."""

    on_bad_row: str = "stop"
    count: int = 0
    examples: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_policy(self.on_bad_row)

    def bad(self, path: str | Path, rows: str, problem: str, count: int = 1) -> None:
        """Report `count` bad rows (`rows` says which: "row 7", "rows 0-255")."""
        if self.on_bad_row == "stop":
            raise BadDataError(path, rows, problem)
        self.count += count
        if len(self.examples) < EXAMPLES:
            self.examples.append(f"{path}: {rows}: {problem}")

    def note(self) -> str | None:
        """One line for a summary, when rows were skipped."""
        if not self.count:
            return None
        return f"skipped {self.count} bad row{'s' if self.count != 1 else ''} (on_bad_row=skip), first: " + \
            "; ".join(self.examples)
