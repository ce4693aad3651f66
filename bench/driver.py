"""The grid as an Optuna study: each cell is one enqueued trial; workers pop them.

Any number of processes (on one machine with the SQLite file, on many with PostgreSQL) run
`run_grid` on the same study: Optuna hands each waiting trial to exactly one of them. A cell counts
as done when it has a COMPLETE trial or a FAIL trial whose failure was recorded (a failed or
diverged run: not retried). A worker that dies leaves a RUNNING trial whose heartbeat stops;
Optuna then fails it and re-enqueues it once (RetryFailedTrialCallback).

If two workers enqueue the same missing cell at once, the trial with the lower number is the
cell's; the other is skipped when popped (state PRUNED, user attribute `skipped`).
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Callable

import optuna
from optuna.trial import TrialState
from tqdm import tqdm

from lorafit.config import RunConfig
from lorafit.errors import LorafitError

from bench.runner import Context, RunFailed, run_cell

RECORDED = "recorded"   # user attribute: the trial's outcome is in a record (failed/diverged)
ABORTED = "aborted"     # user attribute: stopped by the user (Ctrl-C) or by a user error
POLL_S = 2.0


def _cell_trials(study: optuna.Study) -> dict[str, list[optuna.trial.FrozenTrial]]:
    by_cell = defaultdict(list)
    for t in study.get_trials(deepcopy=False):
        if "cell_id" in t.user_attrs and not t.user_attrs.get("skipped"):
            by_cell[t.user_attrs["cell_id"]].append(t)
    return by_cell


def _done(trials) -> bool:
    return any(t.state == TrialState.COMPLETE or (t.state == TrialState.FAIL and t.user_attrs.get(RECORDED))
               for t in trials)


def _live(trials) -> bool:
    return any(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in trials)


def grid_status(study: optuna.Study, cells: list[RunConfig]) -> dict[str, str]:
    """cell id -> done | pending | missing | gave-up (its worker crashed twice)."""
    by_cell = _cell_trials(study)
    status = {}
    for cfg in cells:
        trials = by_cell.get(cfg.cell_id, [])
        if _done(trials):
            status[cfg.cell_id] = "done"
        elif _live(trials):
            status[cfg.cell_id] = "pending"
        elif sum(t.state == TrialState.FAIL and not t.user_attrs.get(ABORTED) for t in trials) >= 2:
            status[cfg.cell_id] = "gave-up"
        else:
            status[cfg.cell_id] = "missing"
    return status


def enqueue_missing(study: optuna.Study, cells: list[RunConfig]) -> int:
    status = grid_status(study, cells)
    n = 0
    for cfg in cells:
        if status[cfg.cell_id] == "missing":
            study.enqueue_trial({}, user_attrs={"cell_id": cfg.cell_id, "config": cfg.to_dict()})
            n += 1
    return n


def _owner(study: optuna.Study, cell_id: str, number: int) -> int | None:
    """The trial number that owns cell_id among live/finished non-crashed trials."""
    candidates = [t.number for t in _cell_trials(study).get(cell_id, [])
                  if t.number != number and (t.state in (TrialState.WAITING, TrialState.RUNNING,
                                                         TrialState.COMPLETE)
                                             or t.user_attrs.get(RECORDED))]
    lower = [c for c in candidates if c < number]
    return min(lower) if lower else None


def run_grid(study: optuna.Study, cells: list[RunConfig], ctx: Context,
             log: Callable[[str], None] = print, show_progress: bool = True) -> dict[str, str]:
    """Work on the grid until every cell is done (or gave up); return the final status per cell."""
    enqueue_missing(study, cells)
    by_id = {c.cell_id: c for c in cells}
    status = grid_status(study, cells)
    bar = tqdm(total=len(cells), initial=sum(s == "done" for s in status.values()), desc="cells",
               unit="cell", disable=not show_progress, dynamic_ncols=True)
    if show_progress:
        ctx.log = bar.write  # keep log lines above the bars

    def objective(trial: optuna.Trial) -> float:
        cell_id = trial.user_attrs.get("cell_id")
        if cell_id is None:
            trial.set_user_attr("skipped", "no queued cell was left when this trial started")
            raise optuna.TrialPruned()
        owner = _owner(study, cell_id, trial.number)
        if owner is not None:
            trial.set_user_attr("skipped", f"duplicate of trial {owner}")
            raise optuna.TrialPruned()
        cfg = by_id.get(cell_id) or RunConfig.from_dict(trial.user_attrs["config"])
        epochs = tqdm(total=cfg.epochs, desc=f"  {cfg.cell_id}", unit="ep", leave=False,
                      disable=not show_progress, dynamic_ncols=True)

        def on_epoch(epoch: int, val_acc: float) -> None:
            epochs.update(1)
            epochs.set_postfix(val_acc=f"{val_acc:.4f}")

        try:
            record = run_cell(cfg, ctx, study.study_name, trial.number, on_epoch=on_epoch)
        except (KeyboardInterrupt, LorafitError) as e:
            # Not the cell's fault: the next run re-queues it without counting a crash.
            trial.set_user_attr(ABORTED, type(e).__name__)
            raise
        finally:
            epochs.close()
        m, run = record["metrics"], record["run"]
        for key in ("test_acc", "test_balanced_acc", "test_macro_f1", "val_acc", "source_acc_after",
                    "trainable_params", "train_s", "images_per_s"):
            if m.get(key) is not None:
                trial.set_user_attr(key, m[key])
        trial.set_user_attr("status", run["status"])
        bar.update(1)
        line = (f"{cfg.cell_id:<34} {run['status']:<9} test_acc={m.get('test_acc', float('nan')):.4f} "
                f"trainable={m.get('trainable_params', 0):>8,} train_s={m.get('train_s', 0):6.1f}")
        (bar.write if show_progress else log)(line)
        if run["status"] != "complete":
            trial.set_user_attr(RECORDED, True)
            trial.set_user_attr("error", run["error"])
            raise RunFailed(run["error"])
        return m["test_acc"]

    try:
        while True:
            waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
            if waiting:
                study.optimize(objective, n_trials=1, catch=(RunFailed,))
                continue
            status = grid_status(study, cells)
            if "pending" in status.values():
                # Another worker runs it, or a dead one held it: wait for the heartbeat check.
                optuna.storages.fail_stale_trials(study)
                time.sleep(POLL_S)
                continue
            if "missing" in status.values():
                enqueue_missing(study, cells)
                continue
            return status
    finally:
        bar.close()
