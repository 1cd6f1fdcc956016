"""The README stays a first visit, every relative link of the README and docs/ reaches a file and heading, and
the import layering the README draws is the code's."""

from __future__ import annotations

import ast
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
    """Every heading anchor of a page; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    anchors = set()
    for heading in HEADING.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        slug = _slug(heading)
        seen[slug] = seen.get(slug, -1) + 1
        anchors.add(slug if seen[slug] == 0 else f"{slug}-{seen[slug]}")
    return anchors


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
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
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


def _imports(package: str) -> set[str]:
    """The clasp packages the code of `package` (a folder, or a module at the root) imports."""
    found: set[str] = set()
    files = [ROOT / f"{package}.py"] if (ROOT / f"{package}.py").exists() else sorted((ROOT / package).rglob("*.py"))
    for file in files:
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            found |= {n.split(".")[1] for n in names if n.startswith("clasp.")}
    return found - {package}


def test_imports_go_down_the_readme_layering() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    drawing = readme.split("Imports go down only", 1)[1].split("```", 2)[1]
    levels = [[w.rstrip("/").removesuffix(".py") for w in re.sub(r"\(.*?\)", "", line).split()]
              for line in drawing.strip().splitlines()[::-1]]  # the floor first
    below: set[str] = set()
    for level in levels:
        for package in level:
            assert (ROOT / package).is_dir() or (ROOT / f"{package}.py").exists(), f"README layering names {package}"
            upward = _imports(package) & ({p for lv in levels for p in lv} - below)
            assert not upward, f"{package} imports {sorted(upward)}, which the README draws at its level or above"
        below |= set(level)
