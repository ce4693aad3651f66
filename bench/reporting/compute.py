"""What a leaderboard cost to compute, split by part (the tuning stage, the seeds, the
epoch-sensitivity check), from the records' own timings: runs, worker time (the sum of the runs'
wall times) and wall time (the union of the runs' intervals, so gaps between sessions and idle
workers do not count, and parallel workers count once), with the execution path that ran."""

from __future__ import annotations

import datetime as dt
import math
from collections import Counter

from bench.provenance import described, path_of
from bench.reporting.aggregate import is_budget_check, is_tuning_trial, setup_of
from bench.sensitivity import unscaled

PARTS = ("tuning stage", "seeds", "epoch-sensitivity check")


def part_of(record: dict) -> str | None:
    """Which part of the work ran this record; None for a seed cell copied from its tuning run
    (its time is the tuning run's)."""
    if is_tuning_trial(record):
        return "tuning stage"
    if is_budget_check(record):
        return "epoch-sensitivity check"
    return None if record["run"].get("reused_from") else "seeds"


def tuning_study(record: dict) -> str | None:
    """The Optuna tuning study a record belongs to: a trial's (its records folder <grid>-tune/<x>
    is the study <grid>-tune-<x>), or the one that chose a seed cell's rates."""
    if is_tuning_trial(record):
        return record["run"]["study"].replace("-tune/", "-tune-", 1)
    return (record.get("tuning") or {}).get("study")


def candidate_paths(trials: list[dict]) -> dict[str, Counter]:
    """Tuning study -> how many of its candidates took each execution path."""
    out: dict[str, Counter] = {}
    for t in trials:
        out.setdefault(tuning_study(t), Counter())[path_of(t)] += 1
    return out


def setups(records: list[dict]) -> list[str]:
    """Each record's setup for the compute line: a 2x run counts towards its 1x row's, and a
    tuning trial towards the setup of the cells its study tuned (a stage may tune at a smaller
    budget than the cells it serves)."""
    of_cells = {}
    for r in records:
        if not is_tuning_trial(r) and not is_budget_check(r) and tuning_study(r):
            of_cells.setdefault(tuning_study(r), setup_of(r))
    out = []
    for r in records:
        if is_budget_check(r):
            out.append(setup_of({**r, "config": unscaled(r["config"])}))
        elif is_tuning_trial(r):
            out.append(of_cells.get(tuning_study(r)) or setup_of(r))
        else:
            out.append(setup_of(r))
    return out


def _interval(record: dict) -> tuple[float, float] | None:
    metrics, start = record.get("metrics") or {}, record["run"].get("created_at")
    seconds = metrics.get("wall_s")
    seconds = metrics.get("train_s") if seconds is None else seconds
    if start is None or seconds is None:
        return None
    t0 = dt.datetime.fromisoformat(start).timestamp()
    return t0, t0 + float(seconds)


def union_seconds(intervals: list[tuple[float, float]]) -> float:
    """Total length of the union of [start, end] intervals."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def duration(seconds: float) -> str:
    """1.5 h, 12 min or 40 s."""
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


def execution_path(records: list[dict]) -> str:
    """The paths the runs took; with how many runs each when they took more than one."""
    counts = Counter(path_of(r) for r in records)
    if len(counts) == 1:
        return described(next(iter(counts)))
    return (
        "; ".join(
            f"{described(path)}, {n:,} run{'' if n == 1 else 's'}" for path, n in sorted(counts.items())
        )
        or "unknown"
    )


def compute_lines(records: list[dict]) -> dict[str, str]:
    """setup -> its cost: per part, runs, worker time and wall time, and the execution path."""
    by_setup: dict[str, list[dict]] = {}
    for r, setup in zip(records, setups(records)):
        by_setup.setdefault(setup, []).append(r)
    return {setup: _line(mine) for setup, mine in by_setup.items()}


def _line(mine: list[dict]) -> str:
    pieces = []
    for part in PARTS:
        ran = [r for r in mine if part_of(r) == part]
        if not ran:
            continue
        spans = [s for r in ran if (s := _interval(r)) is not None]
        piece = f"{part} {len(ran):,} run{'' if len(ran) == 1 else 's'}"
        if spans:  # fsum, and union_seconds sorts: the same figures in any record order
            worker_s = math.fsum(end - start for start, end in spans)
            piece += f", {duration(worker_s)} of worker time, {duration(union_seconds(spans))} wall"
        if len(spans) < len(ran):
            piece += f" ({len(ran) - len(spans)} without timings)"
        pieces.append(piece)
    reused = sum(part_of(r) is None for r in mine)
    if reused:
        one = reused == 1
        pieces.append(f"{reused} seed cell{'' if one else 's'} reused {'its' if one else 'their'} tuning run")
    timed = [r for r in mine if part_of(r) is not None]
    return f"{'; '.join(pieces) or 'no runs'} ({execution_path(timed)})"
