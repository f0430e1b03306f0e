"""The user docs link to files and sections that exist, and name no path of one machine and no issue number.

A renamed heading silently breaks every link to its anchor (GitHub shows the top of the page instead),
so each relative link's file and `#anchor` are resolved here the way GitHub slugs headings.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted(
    [ROOT / "README.md", ROOT / "patches/README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("models/*/README.md")]
)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
MACHINE_PATHS = re.compile(r"(?<![\w.~])/(?:work|root|home/\w+|check)/")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", path.read_text()).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def test_slug_matches_github_on_the_headings_we_use():
    wait = "the-whole-wait-time-to-first-token-with-a-budget"
    assert slug("The whole wait: time to first token with a budget") == wait
    assert slug("Prefill savings script (`python -m fastv_edge.savings`)") == (
        "prefill-savings-script-python--m-fastv_edgesavings"
    )
    assert slug("Where FastV's time goes") == "where-fastvs-time-goes"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc):
    broken = []
    for target in LINK.findall(FENCE.sub("", doc.read_text())):
        if re.match(r"[a-z]+:", target):
            continue
        file_part, _, anchor = target.partition("#")
        dest = (doc.parent / file_part).resolve() if file_part else doc
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with that anchor in {dest.relative_to(ROOT)}")
    assert not broken, f"{doc.relative_to(ROOT)}: " + "; ".join(broken)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_machine_paths(doc):
    hits = [line.strip() for line in doc.read_text().splitlines() if MACHINE_PATHS.search(line)]
    assert not hits, f"{doc.relative_to(ROOT)} names paths of one machine: {hits[:3]}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_issue_numbers(doc):
    # readers of the docs cannot see this project's tracker
    hits = [line.strip() for line in doc.read_text().splitlines() if re.search(r"\bissues? #?\d+", line, re.I)]
    assert not hits, f"{doc.relative_to(ROOT)} refers to issue numbers: {hits[:3]}"
