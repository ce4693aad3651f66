"""Every registered chart (bench.reporting.chartkit): `python -m bench charts`, also run by
`leaderboard`.

Each chart is written twice: HTML that opens offline (the Vega JavaScript from vl-convert, one
file per chart folder) and PNG. Charts the records cannot support (no LoRA rows, no
per-class analysis) are skipped with a warning instead of failing the command.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from bench.records import load_records
from bench.reporting import charts_accuracy, charts_tuning  # noqa: F401  (register the charts, in order)
from bench.reporting.aggregate import aggregate
from bench.reporting.chartkit import CHARTS, TITLES, default_out, log, save
from lorafit.errors import LorafitError

__all__ = ["CHARTS", "TITLES", "default_out", "render", "add_arguments", "main"]


def render(records: list[dict], out_dir: Path, agg: pd.DataFrame | None = None) -> list[Path]:
    """Write every chart the records support into out_dir; returns the files written, in a fixed order.
    agg: aggregate(records), if already computed."""
    if not records:
        raise LorafitError("no records to chart; run `python -m bench run grid` first")
    records = sorted(records, key=lambda r: (r["run"]["id"], r["run"].get("study") or ""))
    agg = aggregate(records) if agg is None else agg
    out_dir = Path(out_dir)
    written = []
    for entry in CHARTS.values():
        drawn = entry.draw(records, agg)
        if drawn is None:
            log.warning("chart %s skipped: %s", entry.stem, entry.skipped)
            continue
        written += save(drawn, out_dir, entry.stem)
    return written


# --------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs-dir", default="runs", help="where the records are (default ./runs)")
    parser.add_argument("--study", default=None, help="only this study's records (default: every study)")
    parser.add_argument(
        "--out",
        default=None,
        help="folder for the chart files (default RUNS/charts, RUNS/charts/STUDY with --study)",
    )


def main(args: argparse.Namespace) -> int:
    runs = Path(args.runs_dir)
    records = load_records(runs, args.study)
    if not records:
        where = runs / "records" / args.study if args.study else runs / "records"
        raise LorafitError(f"no records under {where}; run `python -m bench run grid` first")
    out = Path(args.out) if args.out else default_out(runs, args.study)
    try:
        paths = render(records, out)
    except OSError as e:
        raise LorafitError(f"cannot write charts into {out} ({e.strerror}); pass a writable --out") from None
    stems = sorted({p.stem for p in paths}, key=list(TITLES).index)
    print(f"charts: {', '.join(stems) or 'none'} (HTML + PNG) in {out}")
    return 0
