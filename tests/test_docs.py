"""The README and docs/ cannot drift from the leaderboards: every accuracy they quote with its
interval is in a committed leaderboard, and every relative link they make resolves."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LEADERBOARDS = [ROOT / "leaderboard.md", *sorted((ROOT / "results").glob("*/*.md"))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_quoted_accuracy_is_in_a_leaderboard(page):
    boards = "\n".join(p.read_text() for p in LEADERBOARDS)
    quoted = re.findall(r"\b\d{1,3}\.\d\d ± \d+\.\d\d\b", page.read_text())
    missing = sorted({q for q in quoted if q not in boards})
    assert not missing, f"{page.name} quotes accuracies no leaderboard has: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    links = re.findall(r"\]\((?!https?://|#)([^)#\s]+)", page.read_text())
    broken = sorted({link for link in links if not (page.parent / link).exists()})
    assert not broken, f"{page.name} links to files that do not exist: {broken}"
