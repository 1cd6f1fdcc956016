"""`python -m clasp.settings README.md`: rewrite the option tables of a markdown file from the dataclasses."""

import sys
from pathlib import Path

from clasp.settings.readme_tables import rewrite

for name in sys.argv[1:] or ["README.md"]:
    path = Path(name)
    text = path.read_text(encoding="utf-8")
    new = rewrite(text)
    if new != text:
        path.write_text(new, encoding="utf-8")
        print(f"rewrote the settings tables of {path}")
