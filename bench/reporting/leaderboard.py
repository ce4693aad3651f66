"""leaderboard.md and leaderboard.csv from the stored records alone: `python -m bench leaderboard`.

One row per configuration (the RunConfig minus its seed): test accuracy as a mean with a 95%
t-interval over seeds, paired differences to full fine-tuning and the linear probe, trainable
parameters against full fine-tuning, the Pareto flag and its bootstrap probability, a generated
summary with Holm-adjusted paired tests, and links to the charts. The statistics come from
`bench.reporting.aggregate`; the columns from `bench.reporting.columns`; this module assembles
the sections and writes the files. Deterministic: the same records give
byte-identical files (nothing from the clock or the filesystem order goes in; every table is
sorted explicitly).
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import shlex
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from bench.records import load_records, write_atomic
from bench.reporting import charts, columns, compute, epochs, evidence
from bench.reporting.aggregate import aggregate, is_tuning_trial
from bench.reporting.comparisons import comparisons
from bench.reporting.header import header
from bench.reporting.summary import summary
from bench.reporting.tables import budget_table, ledger_table
from bench.sensitivity import SUFFIX
from lorafit.errors import LorafitError

COMMAND_PREFIX = "python -m bench leaderboard"


def render_csv(agg: pd.DataFrame) -> str:
    rows = columns.csv_rows(agg)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


# --------------------------------------------------------------------------------- markdown


def chart_section(chart_links: Iterable[str | Path], csv_link: str | None = None) -> list[str]:
    """One line per chart (its files grouped by name), then the accuracy-vs-parameters PNG inline."""
    by_stem: dict[str, list[str]] = {}
    for link in chart_links:
        by_stem.setdefault(Path(link).stem, []).append(Path(link).as_posix())
    lines = (
        ["", "## Data and charts", "", f"- Every column of every table, machine-readable: [CSV]({csv_link})"]
        if csv_link
        else ([] if not by_stem else ["", "## Charts", ""])
    )
    if not by_stem:
        return lines
    for stem, links in by_stem.items():
        files = " · ".join(f"[{Path(link).suffix.lstrip('.').upper()}]({link})" for link in links)
        lines.append(f"- {charts.TITLES.get(stem, stem)}: {files}")
    missing = [t for stem, t in charts.TITLES.items() if stem not in by_stem]
    if missing:
        lines.append(f"- Not drawn (the records lack what they need): {'; '.join(missing)}")
    png = [link for link in by_stem.get("acc_vs_params", []) if link.endswith(".png")]
    if png:
        lines += ["", f"![{charts.TITLES['acc_vs_params']}]({png[0]})"]
    return lines


def render_markdown(
    records: list[dict],
    command: str,
    chart_links: Iterable[str | Path] = (),
    csv_link: str | None = None,
    agg: pd.DataFrame | None = None,
    trials: list[dict] = (),
) -> str:
    """The whole leaderboard. chart_links: chart file paths relative to the output file, in display order;
    csv_link: the CSV's path relative to it; agg: aggregate(records), if already computed; trials:
    the tuning stage's records (they count towards the compute line, never the table)."""
    if not records:
        raise LorafitError("no records to put on a leaderboard; run `python -m bench run grid` first")
    records = sorted(records, key=lambda r: (r["run"]["id"], r["run"].get("study") or ""))
    agg = aggregate(records) if agg is None else agg
    lines = header(records, command, agg, trials)
    checks = epochs.checked(records)
    setups = list(agg["setup"].unique())
    for setup in setups:
        part = agg[agg["setup"].eq(setup)]
        comp = comparisons(part)  # the summary and the matched-budget table print the same ones
        suffix = f" — {setup}" if len(setups) > 1 else ""
        lines += [
            "",
            f"## Results{suffix}",
            "",
            columns.table(part),
            "",
            *columns.legend(part),
            "",
            f"## Summary{suffix}",
            "",
        ] + [f"- {s}" for s in summary(part, comp)]
        extra = (
            budget_table(part, comp)
            + evidence.tuning_table(part, compute.candidate_paths(trials))
            + evidence.containment_table(evidence.containment(part))
            + epochs.sensitivity_table(part, checks)
            + epochs.comparisons_table(part, checks, comp)
            + ledger_table(part)
        )
        if extra:
            lines += ["", *extra[:-1]]
    lines += chart_section(chart_links, csv_link)
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs-dir", default="runs", help="where the records are (default ./runs)")
    parser.add_argument(
        "--output",
        default=None,
        help="markdown file to write (default RUNS/leaderboard.md); the CSV goes beside it",
    )
    parser.add_argument("--study", default=None, help="only this study's records (default: every study)")
    parser.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="only seeds 0..N-1 (whole paired seeds, e.g. while a longer run is still adding seeds)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="overwrite an output file generated from other records (another --runs-dir/--study)",
    )


def output_path(args: argparse.Namespace) -> Path:
    return Path(args.output) if args.output else Path(args.runs_dir) / "leaderboard.md"


def command_line(args: argparse.Namespace) -> str:
    """The command that regenerates the file, paths exactly as given."""
    parts = [
        "python",
        "-m",
        "bench",
        "leaderboard",
        "--runs-dir",
        args.runs_dir,
        "--output",
        str(output_path(args)),
    ]
    if args.study:
        parts += ["--study", args.study]
    if args.seeds is not None:
        parts += ["--seeds", str(args.seeds)]
    return shlex.join(parts)


def generated_from(text: str) -> tuple[str, str | None] | None:
    """(runs dir, study) named by a leaderboard's regeneration command; None if the text has none."""
    if not text.startswith("# Leaderboard"):
        return None
    line = next((line for line in text.splitlines() if line.startswith(COMMAND_PREFIX)), None)
    try:
        words = shlex.split(line) if line else []
    except ValueError:
        return None
    flags = dict(zip(words, words[1:]))  # the command line writes "--flag value" pairs only
    return (flags["--runs-dir"], flags.get("--study")) if "--runs-dir" in flags else None


def check_overwrite(output: Path, args: argparse.Namespace) -> None:
    """Refuse (one line) to replace a leaderboard generated from other records, unless --force."""
    if output.is_dir():
        raise LorafitError(
            f"--output {output} is a folder; name the leaderboard file, e.g. {output / 'leaderboard.md'}"
        )
    if args.force or not output.exists():
        return
    try:
        text = output.read_text(errors="replace")
    except OSError as e:
        raise LorafitError(f"cannot read {output} ({e.strerror}); pass another --output") from None
    origin = generated_from(text)
    if origin is None:
        raise LorafitError(
            f"{output} exists and is not a leaderboard this command wrote; "
            "pass another --output, or --force to overwrite it"
        )
    runs, study = origin
    same_runs = (
        os.path.normpath(runs) == os.path.normpath(args.runs_dir)
        or Path(runs).resolve() == Path(args.runs_dir).resolve()
    )
    if not same_runs or study != args.study:
        was = f"--runs-dir {runs}" + (f" --study {study}" if study else "")
        now = f"--runs-dir {args.runs_dir}" + (f" --study {args.study}" if args.study else "")
        raise LorafitError(
            f"{output} was generated from other records ({was}, not {now}); "
            "pass another --output, or --force to replace it"
        )


def load(args: argparse.Namespace) -> tuple[list[dict], list[dict]]:
    """The records a leaderboard is made of (cells and the check's 2x runs) and its tuning trials."""
    runs = Path(args.runs_dir)
    if args.study and args.study.endswith(SUFFIX):  # alone, its 2x runs have no 1x rows to pair with
        raise LorafitError(
            f"--study {args.study} is the epoch-sensitivity check of {args.study.removesuffix(SUFFIX)}; "
            f"pass --study {args.study.removesuffix(SUFFIX)} (its leaderboard includes the check's table)"
        )
    # A study's epoch-sensitivity check is its own study (<study>-2x) and pairs with it.
    records = load_records(runs, args.study) + (
        load_records(runs, f"{args.study}{SUFFIX}") if args.study else []
    )
    if not records:
        where = runs / "records" / args.study if args.study else runs / "records"
        raise LorafitError(
            f"no records under {where}; run `python -m bench run grid` first"
            + (" (or check --study)" if args.study else "")
        )
    records = sorted(records, key=lambda r: (r["run"]["id"], r["run"].get("study") or ""))
    # The tuning stage's trials feed the sensitivity chart, never the table.
    trials = load_records(runs, f"{args.study}-tune") if args.study else []
    records, trials = (
        [r for r in records if not is_tuning_trial(r)],
        trials + [r for r in records if is_tuning_trial(r)],
    )
    if args.seeds is not None:
        if args.seeds < 1:
            raise LorafitError(f"--seeds must be >= 1, got {args.seeds}")
        kept = [r for r in records if r["config"].get("seed", 0) < args.seeds]
        if len(kept) < len(records):
            left = len(records) - len(kept)
            print(f"leaderboard: {left} records of seeds >= {args.seeds} left out (--seeds)")
        records = kept
    if not records:
        raise LorafitError(
            f"only tuning-stage records under {runs / 'records'}; the grid's cells have not run yet"
        )
    return records, trials


class Board(NamedTuple):
    markdown: str
    csv: str
    charts: list[Path]
    configurations: int


def build(
    args: argparse.Namespace, records: list[dict], trials: list[dict], chart_paths: list[Path] | None = None
) -> Board:
    """The leaderboard's markdown and CSV text and its chart files, from load(args)'s records.
    Renders the charts into the runs dir unless `chart_paths` (the files already drawn) is given:
    tests/test_boards.py regenerates every committed board that way and compares."""
    output = output_path(args)
    agg = aggregate(records)
    if chart_paths is None:
        chart_paths = charts.render(
            records + trials, charts.default_out(Path(args.runs_dir), args.study), agg
        )
    links = [os.path.relpath(p, output.parent) for p in chart_paths]
    csv_link = os.path.relpath(output.with_suffix(".csv"), output.parent)
    md = render_markdown(records, command_line(args), links, csv_link, agg, trials)
    return Board(md, render_csv(agg), chart_paths, len(agg))


def main(args: argparse.Namespace) -> int:
    records, trials = load(args)
    output = output_path(args)
    csv_path = output.with_suffix(".csv")
    check_overwrite(output, args)
    try:
        board = build(args, records, trials)
        write_atomic(csv_path, board.csv)
        write_atomic(output, board.markdown)
    except OSError as e:
        raise LorafitError(
            f"cannot write {e.filename or output} ({e.strerror}); pass a writable --output / --runs-dir"
        ) from None
    chart_dir = charts.default_out(Path(args.runs_dir), args.study)
    print(
        f"leaderboard: {board.configurations} configurations from {len(records)} records -> {output}, "
        f"{csv_path}; {len(board.charts)} chart files in {chart_dir}"
    )
    return 0
