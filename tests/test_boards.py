"""Every committed leaderboard is what the command in its own header writes from the committed
records: its tables are regenerated here (its chart files as they are) and compared, so a change to
the reporting code that would change a board fails until the board is regenerated and committed."""

import argparse
import re
import shlex
from pathlib import Path

import pytest

from bench.reporting import charts, leaderboard

ROOT = Path(__file__).resolve().parent.parent
# Every markdown file under results/ is a board (records/ and charts/ hold none), and leaderboard.md.
BOARDS = [ROOT / "leaderboard.md"] + sorted(
    p for p in (ROOT / "results").rglob("*.md") if not {"records", "charts"} & set(p.parts)
)


def command(board: Path) -> argparse.Namespace:
    """The arguments of the command in the board's header."""
    line = next(x for x in board.read_text().splitlines() if x.startswith(leaderboard.COMMAND_PREFIX))
    parser = argparse.ArgumentParser()
    leaderboard.add_arguments(parser)
    return parser.parse_args(shlex.split(line)[4:])  # after "python -m bench leaderboard"


def chart_files(text: str, board: Path) -> list[Path]:
    """The chart files the board links in its "Data and charts" section, in order, once each."""
    section = text.split("## Data and charts", 1)[1]
    links = re.findall(r"\]\(([^)]+\.(?:html|png))\)", section)
    return [board.parent / link for link in dict.fromkeys(links)]


@pytest.mark.parametrize("board", BOARDS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_markdown_file_under_results_is_a_board_its_header_regenerates(board):
    assert leaderboard.generated_from(board.read_text()), f"{board} has no regeneration command"
    assert command(board).output == str(board.relative_to(ROOT))  # it names itself


@pytest.mark.parametrize("board", BOARDS, ids=lambda p: str(p.relative_to(ROOT)))
def test_a_committed_board_regenerates_byte_for_byte(board, monkeypatch):
    text = board.read_text()
    args = command(board)
    monkeypatch.chdir(ROOT)  # the command's paths are relative to the repository root
    drawn = chart_files(text, board)
    folder = charts.default_out(Path(args.runs_dir), args.study).resolve()
    assert drawn and all(p.exists() for p in drawn), f"{board.name} links chart files that do not exist"
    assert all(p.resolve().parent == folder and p.stem in charts.TITLES for p in drawn), (
        f"{board.name} links charts outside its own chart folder {folder}"
    )
    records, trials = leaderboard.load(args)
    rebuilt = leaderboard.build(args, records, trials, chart_paths=drawn)
    regenerate = leaderboard.command_line(args)
    assert rebuilt.markdown == text, f"{board.relative_to(ROOT)} is stale: run `{regenerate}`"
    assert rebuilt.csv == board.with_suffix(".csv").read_text(), f"{board.with_suffix('.csv').name} is stale"
