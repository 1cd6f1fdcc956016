"""Text -> value for the settings whose command-line form is not a plain number or word (`setting(parse=...)`).

Each parser takes the text as given and returns the value, or raises ValueError with a phrase that quotes the
text; the command line shows it as the option's error, a config file prefixes its name and the key.
"""

from __future__ import annotations


def size_hw(text: str) -> tuple[int, int]:
    """'448x224' -> (448, 224): HEIGHTxWIDTH, both positive."""
    try:
        h, w = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"{text!r} is not HEIGHTxWIDTH, e.g. 448x224") from None
    if h < 1 or w < 1:
        raise ValueError(f"{text!r}: both sizes must be positive")
    return h, w


def names(text: str) -> tuple[str, ...]:
    """'a, b,,c' -> ('a', 'b', 'c'): comma-separated names, blanks dropped ('' is the empty tuple)."""
    return tuple(name.strip() for name in text.split(",") if name.strip())
