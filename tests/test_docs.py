"""The README and docs/ cannot drift from the leaderboards: every accuracy they quote with its
interval, every paired difference (a signed number of points, either way round) and every Holm p
is in a committed leaderboard, and every relative link they make resolves."""

import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LEADERBOARDS = [ROOT / "leaderboard.md", *sorted((ROOT / "results").glob("*/*.md"))]


@cache
def boards() -> str:
    """Every committed leaderboard's text, read once for all the pages' checks."""
    return "\n".join(p.read_text() for p in LEADERBOARDS)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_quoted_accuracy_is_in_a_leaderboard(page):
    quoted = re.findall(r"\b\d{1,3}\.\d\d ± \d+\.\d\d\b", page.read_text())
    missing = sorted({q for q in quoted if q not in boards()})
    assert not missing, f"{page.name} quotes accuracies no leaderboard has: {missing}"


def _flipped(number: str) -> str:
    return ("-" if number[0] == "+" else "+") + number[1:]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_quoted_difference_and_holm_p_is_in_a_leaderboard(page):
    text = page.read_text().replace("−", "-")
    signed = set(re.findall(r"(?<![\w.])([+-]\d+\.\d\d)(?!\d)", text))
    missing = sorted(d for d in signed if d not in boards() and _flipped(d) not in boards())
    holm = set(re.findall(r"Holm p\s*(?:=|≤|<)?\s*(0\.\d{2,3})(?!\d)", text))
    # the summary's "Holm p = 0.017" or the matched-budget table's "| 0.0171" column
    missing += sorted(
        f"Holm p {v}" for v in holm if f"Holm p = {v}" not in boards() and f"| {v}" not in boards()
    )
    assert not missing, f"{page.name} quotes differences or p-values no leaderboard has: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page):
    links = re.findall(r"\]\((?!https?://|#)([^)#\s]+)", page.read_text())
    broken = sorted({link for link in links if not (page.parent / link).exists()})
    assert not broken, f"{page.name} links to files that do not exist: {broken}"
