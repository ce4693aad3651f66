"""Every committed leaderboard is what the command in its own header writes from the committed
records: its tables are regenerated here (its chart files as they are) and compared, so a change to
the reporting code that would change a board fails until the board is regenerated and committed."""

import argparse
import re
import shlex
from pathlib import Path

import pytest

from bench.reporting import leaderboard

ROOT = Path(__file__).resolve().parent.parent
BOARDS = [
    p
    for p in [ROOT / "leaderboard.md", *sorted((ROOT / "results").glob("*/*.md"))]
    if leaderboard.generated_from(p.read_text())
]


def chart_files(text: str, board: Path) -> list[Path]:
    """The chart files the board links in its "Data and charts" section, in order, once each."""
    section = text.split("## Data and charts", 1)[1]
    links = re.findall(r"\]\(([^)]+\.(?:html|png))\)", section)
    return [board.parent / link for link in dict.fromkeys(links)]


def test_there_are_boards_to_check():
    assert {ROOT / "leaderboard.md", ROOT / "results" / "local-plateau2" / "grid-local.md"} <= set(BOARDS)


@pytest.mark.parametrize("board", BOARDS, ids=lambda p: str(p.relative_to(ROOT)))
def test_a_committed_board_regenerates_byte_for_byte(board, monkeypatch):
    text = board.read_text()
    line = next(line for line in text.splitlines() if line.startswith(leaderboard.COMMAND_PREFIX))
    parser = argparse.ArgumentParser()
    leaderboard.add_arguments(parser)
    args = parser.parse_args(shlex.split(line)[4:])  # after "python -m bench leaderboard"
    monkeypatch.chdir(ROOT)  # the command's paths are relative to the repository root
    charts = chart_files(text, board)
    assert charts and all(p.exists() for p in charts), f"{board.name} links chart files that do not exist"
    rebuilt = leaderboard.build(args, chart_paths=charts)
    assert rebuilt.markdown == text, f"{board.relative_to(ROOT)} is stale: run `{line}`"
    assert rebuilt.csv == board.with_suffix(".csv").read_text(), f"{board.with_suffix('.csv').name} is stale"
