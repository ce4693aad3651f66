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

import optuna
from optuna.trial import TrialState
from tqdm import tqdm

from bench.backbone import pretrained_backbone
from bench.context import Context
from bench.plan import Cell
from bench.runner import reuse_tuning_run, run_cell
from bench.storage import fail_stale_trials
from bench.trials import RECORDED, RunFailed, done_trial, finish_trial
from lorafit.config import RunConfig
from lorafit.errors import LorafitError

ABORTED = "aborted"  # user attribute: stopped by the user (Ctrl-C) or by a user error
POLL_S = 2.0


def _cell_trials(study: optuna.Study) -> dict[str, list[optuna.trial.FrozenTrial]]:
    by_cell = defaultdict(list)
    for t in study.get_trials(deepcopy=False):
        if "cell_id" in t.user_attrs and not t.user_attrs.get("skipped"):
            by_cell[t.user_attrs["cell_id"]].append(t)
    return by_cell


def _done(trials) -> bool:
    return any(done_trial(t) for t in trials)


def _live(trials) -> bool:
    return any(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in trials)


def grid_status(study: optuna.Study, cells: list[Cell]) -> dict[str, str]:
    """cell id -> done | pending | missing | gave-up (its worker crashed twice)."""
    by_cell = _cell_trials(study)
    status = {}
    for cell in cells:
        trials = by_cell.get(cell.id, [])
        if _done(trials):
            status[cell.id] = "done"
        elif _live(trials):
            status[cell.id] = "pending"
        elif sum(t.state == TrialState.FAIL and not t.user_attrs.get(ABORTED) for t in trials) >= 2:
            status[cell.id] = "gave-up"
        else:
            status[cell.id] = "missing"
    return status


def enqueue_missing(study: optuna.Study, cells: list[Cell]) -> int:
    """Queue a trial for every cell that has none; it carries the cell's config and how its rates
    were chosen."""
    status = grid_status(study, cells)
    n = 0
    # Seed by seed (workers take waiting trials oldest first): a grid stopped part way has whole
    # seeds of every configuration, so its rows stay paired.
    for cell in sorted(cells, key=lambda c: c.seed):
        if status[cell.id] == "missing":
            attrs = {"cell_id": cell.id, "config": cell.config.to_dict(), "tuning": cell.tuning}
            study.enqueue_trial({}, user_attrs=attrs)
            n += 1
    return n


def _owner(study: optuna.Study, cell_id: str, number: int) -> int | None:
    """The trial number that owns cell_id among live/finished non-crashed trials."""
    candidates = [
        t.number
        for t in _cell_trials(study).get(cell_id, [])
        if t.number != number
        and (
            t.state in (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE)
            or t.user_attrs.get(RECORDED)
        )
    ]
    lower = [c for c in candidates if c < number]
    return min(lower) if lower else None


def _objective(study: optuna.Study, cells: list[Cell], ctx: Context, bar: tqdm, bars_off: bool | None):
    """The grid's objective: run the cell a waiting trial carries (or skip it as a duplicate)."""
    by_id = {c.id: c.config for c in cells}

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
        try:
            if cfg.method != "scratch":
                # its own bar, so its time stays out of the cell's epochs
                pretrained_backbone(cfg, ctx, show_progress=None if bars_off is None else False)
            epochs = tqdm(
                total=cfg.epochs,
                desc=f"  {cfg.cell_id}",
                unit="ep",
                leave=False,
                disable=bars_off,
                dynamic_ncols=True,
            )

            def on_epoch(epoch: int, val_acc: float) -> None:
                epochs.update(1)
                epochs.set_postfix(val_acc=f"{val_acc:.4f}")

            selection = trial.user_attrs.get("tuning")
            try:
                # The tuning seed's cell at the selected rates is the tuning run itself.
                record = reuse_tuning_run(cfg, ctx, study.study_name, trial.number, selection)
                if record is None:
                    record = run_cell(
                        cfg, ctx, study.study_name, trial.number, on_epoch=on_epoch, tuning=selection
                    )
            finally:
                epochs.close()
        except (KeyboardInterrupt, LorafitError) as e:
            # Not the cell's fault: the next run re-queues it without counting a crash.
            trial.set_user_attr(ABORTED, type(e).__name__)
            raise
        bar.update(1)
        return finish_trial(trial, cfg.cell_id, record, log=ctx.log)

    return objective


def _run_waiting(study: optuna.Study, objective, ctx: Context) -> bool:
    """Run the oldest waiting trial, if there is one; whether there was."""
    if not study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        return False
    try:
        study.optimize(objective, n_trials=1, catch=(RunFailed,))
    except ValueError as e:
        # SQLite has no row locks: two workers can claim the same waiting trial. Whoever
        # finishes second cannot tell Optuna; the first result stands (the record is the
        # same cell's, rewritten atomically).
        if "Cannot tell a" not in str(e):
            raise
        ctx.log(f"a cell this worker ran was finished by another worker first ({e}); going on")
    return True


def run_one(study: optuna.Study, cells: list[Cell], ctx: Context) -> bool:
    """Queue what `cells` lacks and run one waiting cell (no progress bars); whether one ran. What a
    worker does while other workers tune the configurations it waits for."""
    enqueue_missing(study, cells)
    return _run_waiting(study, _objective(study, cells, ctx, tqdm(disable=True), True), ctx)


def run_grid(
    study: optuna.Study,
    cells: list[Cell],
    ctx: Context,
    show_progress: bool = True,
) -> dict[str, str]:
    """Work on the grid until every cell is done (or gave up); return the final status per cell.

    Progress bars go to a terminal only (tqdm's own rule, disable=None); in a file or CI log only
    the one-line cell summaries appear. `show_progress=False` turns the bars off everywhere."""
    enqueue_missing(study, cells)
    status = grid_status(study, cells)
    bars_off = None if show_progress else True
    bar = tqdm(
        total=len(cells),
        initial=sum(s == "done" for s in status.values()),
        desc="cells",
        unit="cell",
        disable=bars_off,
        dynamic_ncols=True,
    )
    objective = _objective(study, cells, ctx, bar, bars_off)
    try:
        while True:
            ctx.between_runs()
            if _run_waiting(study, objective, ctx):
                continue
            status = grid_status(study, cells)
            if "pending" in status.values():
                # Another worker runs it, or a dead one held it: wait for the heartbeat check.
                fail_stale_trials(study)
                time.sleep(POLL_S)
                continue
            if "missing" in status.values():
                enqueue_missing(study, cells)
                continue
            return status
    finally:
        bar.close()
