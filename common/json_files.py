"""Reading a JSON file a user named: the document, or one error line naming the file and the problem.

`read_json(path, error)` returns the parsed document. A failure raises
`error(message)`, the message one line that starts with the path:

- `<path>: not found` (with `what="eval results"`: `<path>: eval results not found`);
- `<path>: cannot be read as JSON (<reason>)`: unreadable, not UTF-8, not JSON,
  or nested too deep for the parser.

The caller passes its own error class (a subclass of `clasp.errors.InputError`,
so the command line reports one `error:` line, exit code 2), which keeps its
package's error vocabulary; the default is `JsonFileError`. What shape the
document must have (an object, a list, required keys) is the caller's to check.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from clasp.errors import InputError


class JsonFileError(InputError, ValueError):
    """A JSON file that is missing or does not parse; the message names the file."""


def read_json(path: str | Path, error: Callable[[str], Exception] = JsonFileError, what: str = "") -> Any:
    """The JSON document at `path`; `error("<path>: <problem>")` is raised when it cannot be had."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{path}: {what + ' ' if what else ''}not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise error(f"{path}: cannot be read as JSON ({exc})") from None
