"""What a leaderboard cost to compute, split by part (the tuning stage, the seeds, the
epoch-sensitivity check), from the records' own timings: runs, worker time (the sum of the runs'
wall times) and wall time (the union of the runs' intervals, so gaps between sessions and idle
workers do not count, and parallel workers count once), with the machine and execution path that
ran: once when every run took the same, else each part's runs and worker time per machine."""

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


def machine_of(record: dict) -> str:
    """Where and how one run trained: "AMD EPYC, cpu with native bf16: bf16 autocast + channels_last"
    (the GPU's name on CUDA): the same CPU name can differ in native bf16, which decides the path."""
    env = record.get("env") or {}
    where = env.get("gpu") if (env.get("device") or "cpu") != "cpu" else env.get("cpu")
    return f"{where}, {described(path_of(record))}" if where else described(path_of(record))


def _per_machine(ran: list[dict], intervals: list[tuple[float, float] | None]) -> str:
    """ "12 runs, 1.5 h of worker time on A, ...; 3 runs on B, ..." (worker time where timed)."""
    by_machine: dict[str, list[tuple[float, float] | None]] = {}
    for r, span in zip(ran, intervals):
        by_machine.setdefault(machine_of(r), []).append(span)
    pieces = []
    for machine, spans in sorted(by_machine.items()):
        seconds = [end - start for start, end in filter(None, spans)]
        worker = f", {duration(math.fsum(seconds))} of worker time" if seconds else ""
        pieces.append(f"{len(spans):,} run{'' if len(spans) == 1 else 's'}{worker} on {machine}")
    return "; ".join(pieces)


def compute_lines(records: list[dict]) -> dict[str, str]:
    """setup -> its cost: per part, runs, worker time and wall time, and the execution path."""
    by_setup: dict[str, list[dict]] = {}
    for r, setup in zip(records, setups(records)):
        by_setup.setdefault(setup, []).append(r)
    return {setup: _line(mine) for setup, mine in by_setup.items()}


def _line(mine: list[dict]) -> str:
    timed = [r for r in mine if part_of(r) is not None]
    one_machine = len({machine_of(r) for r in timed}) <= 1
    pieces = []
    for part in PARTS:
        ran = [r for r in mine if part_of(r) == part]
        if not ran:
            continue
        intervals = [_interval(r) for r in ran]
        spans = [s for s in intervals if s is not None]
        piece = f"{part} {len(ran):,} run{'' if len(ran) == 1 else 's'}"
        if spans:  # fsum, and union_seconds sorts: the same figures in any record order
            worker_s = math.fsum(end - start for start, end in spans)
            piece += f", {duration(worker_s)} of worker time, {duration(union_seconds(spans))} wall"
        notes = [] if one_machine else [_per_machine(ran, intervals)]
        if len(spans) < len(ran):
            notes.append(f"{len(ran) - len(spans)} without timings")
        pieces.append(piece + (f" ({'; '.join(notes)})" if notes else ""))
    reused = sum(part_of(r) is None for r in mine)
    if reused:
        one = reused == 1
        pieces.append(f"{reused} seed cell{'' if one else 's'} reused {'its' if one else 'their'} tuning run")
    line = "; ".join(pieces) or "no runs"
    return f"{line} (all on {machine_of(timed[0])})" if timed and one_machine else line
