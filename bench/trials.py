"""Finishing an Optuna trial from a run's record: the one path shared by the grid and the studies.

The record's status and metrics become user attributes (the same keys for both), one summary line
is printed, and a failed or diverged run raises RunFailed so Optuna keeps the trial as FAIL with
its reason (marked `recorded`: its outcome is in a record, so the grid does not retry it).
"""

from __future__ import annotations

from collections.abc import Callable

import optuna

RECORDED = "recorded"  # user attribute: the trial's outcome is in a record (failed/diverged)
TRIAL_METRICS = (
    "test_acc",
    "test_balanced_acc",
    "test_macro_f1",
    "val_acc",
    "source_acc_after",
    "trainable_params",
    "train_s",
    "images_per_s",
    "best_epoch",
)


def done_trial(t: optuna.trial.FrozenTrial) -> bool:
    """A trial with a result: complete, or failed with a record that says why (not retried)."""
    return t.state == optuna.trial.TrialState.COMPLETE or (
        t.state == optuna.trial.TrialState.FAIL and bool(t.user_attrs.get(RECORDED))
    )


class RunFailed(Exception):
    """A run ended failed or diverged; its record says why."""


def summary_line(label: str, record: dict, objectives: tuple[str, ...] = ("test_acc",)) -> str:
    m, status = record["metrics"], record["run"]["status"]
    scores = " ".join(f"{o}={m[o]:.4g}" if m.get(o) is not None else f"{o}=—" for o in objectives)
    return (
        f"{label:<40} {status:<9} {scores} trainable={m.get('trainable_params') or 0:>8,} "
        f"train_s={m.get('train_s') or 0:6.1f}"
    )


def finish_trial(
    trial: optuna.Trial,
    label: str,
    record: dict,
    objectives: tuple[str, ...] = ("test_acc",),
    log: Callable[[str], None] = print,
) -> float | list[float]:
    """Copy the record into the trial, print its line, and return the objective value(s)."""
    m, run = record["metrics"], record["run"]
    for key in TRIAL_METRICS:
        if m.get(key) is not None:
            trial.set_user_attr(key, m[key])
    trial.set_user_attr("status", run["status"])
    log(summary_line(label, record, objectives))
    if run["status"] != "complete":
        trial.set_user_attr(RECORDED, True)
        trial.set_user_attr("error", run["error"])
        raise RunFailed(run["error"])
    values = [float(m[o]) for o in objectives]
    return values[0] if len(values) == 1 else values
