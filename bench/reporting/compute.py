"""What a leaderboard cost to compute, split by part (the tuning stage, the seeds, the
epoch-sensitivity check), from the records' own timings: runs, worker time (the sum of the runs'
wall times) and wall time (the union of the runs' intervals, so gaps between sessions and idle
workers do not count, and parallel workers count once), with the execution path that ran."""

from __future__ import annotations

import datetime as dt

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


def _setup(record: dict) -> str:
    """The setup a record counts towards: a 2x run's is its 1x row's."""
    if is_budget_check(record):
        record = {**record, "config": unscaled(record["config"])}
    return setup_of(record)


def _interval(record: dict) -> tuple[float, float] | None:
    metrics, start = record.get("metrics") or {}, record["run"].get("created_at")
    seconds = metrics.get("wall_s", metrics.get("train_s"))
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
    """How the runs trained: bf16 autocast where the device has native bf16, fp32 where it has not
    (lorafit.train.bf16_supported), channels_last either way."""
    paths = set()
    for r in records:
        env = r.get("env") or {}
        device, bf16 = env.get("device") or "cpu", env.get("bf16")
        if bf16 is None:
            paths.add(f"{device}, precision not recorded")
        elif bf16:
            paths.add(f"{device} with native bf16: bf16 autocast + channels_last")
        else:
            paths.add(f"{device} without native bf16: fp32 + channels_last")
    return "; ".join(sorted(paths)) or "unknown"


def compute_line(records: list[dict], setup: str) -> str:
    """One setup's cost: per part, runs, worker time and wall time."""
    mine = [r for r in records if _setup(r) == setup]
    pieces = []
    for part in PARTS:
        spans = [s for r in mine if part_of(r) == part and (s := _interval(r)) is not None]
        if spans:
            worker_s = sum(end - start for start, end in spans)
            pieces.append(
                f"{part} {len(spans):,} run{'s' * (len(spans) != 1)}, {duration(worker_s)} of worker time, "
                f"{duration(union_seconds(spans))} wall"
            )
    reused = sum(part_of(r) is None for r in mine)
    if reused:
        one = reused == 1
        cells = f"{reused} seed-0 cell{'' if one else 's'}"
        pieces.append(f"{cells} reused {'its' if one else 'their'} tuning run")
    timed = [r for r in mine if part_of(r) is not None]
    return f"{'; '.join(pieces) or 'no timed runs'} ({execution_path(timed)})"
