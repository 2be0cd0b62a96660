"""The README and docs/ link to each other by relative path and heading anchor; a file renamed
or a heading reworded must not leave a reader at a dead link."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s:]+\.md)?(#[^)\s]+)?\)")


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces as hyphens."""
    heads = [ln.lstrip("#").strip() for ln in page.read_text().splitlines() if ln.startswith("#")]
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in heads}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_and_anchors_resolve(page: Path) -> None:
    dead = []
    for target, fragment in LINK.findall(page.read_text()):
        if not target and not fragment:
            continue
        linked = (page.parent / target).resolve() if target else page
        if not linked.is_file():
            dead.append(f"{target} (no such file)")
        elif fragment and fragment[1:] not in anchors(linked):
            dead.append(f"{target}{fragment} (no such heading)")
    assert not dead, f"{page.name}: dead links: {dead}"


def test_a_dead_anchor_is_caught(tmp_path: Path) -> None:
    page = tmp_path / "a.md"
    page.write_text("# A page\n\n## While a search runs\n")
    assert "while-a-search-runs" in anchors(page)
    assert "while-it-runs" not in anchors(page)
