"""The README stays a first visit, and every relative link of the README and docs/ reaches a file and heading."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
HEADING = re.compile(r"^#{1,6} +(.+?) *#*$", re.M)


def _slug(heading: str) -> str:
    """A heading's anchor as GitHub writes it: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", r"\1", heading).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    for heading in HEADING.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        slug = _slug(heading)
        seen[slug] = seen.get(slug, -1) + 1
        yield slug if seen[slug] == 0 else f"{slug}-{seen[slug]}"


def _broken_links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and file.suffix == ".md" and anchor not in set(_anchors(file)):
            broken.append(f"{target} (no such heading)")
    return [f"{page.relative_to(ROOT)}: {b}" for b in broken]


def test_readme_fits_a_first_visit() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= 400, f"README.md has {lines} lines; reference goes to docs/commands/, measurements to docs/results.md"


def test_every_relative_link_reaches_a_file_and_heading() -> None:
    broken = [b for page in PAGES for b in _broken_links(page)]
    assert not broken, "\n".join(broken)


def test_slugs_are_githubs() -> None:
    assert _slug("`clasp label` — images → label shards") == "clasp-label--images--label-shards"
    assert _slug("Pose — `clasp finetune pose`") == "pose--clasp-finetune-pose"
    assert _slug("Results of the last `make reproduce`") == "results-of-the-last-make-reproduce"
