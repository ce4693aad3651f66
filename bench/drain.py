"""Stopping a grid's workers between runs: `run grid ... --drain`.

Killing a worker loses the run it is in (a DoRA candidate on the convs trains for a quarter of an
hour). A drain asks every worker of the grid, on this machine or any other that shares the storage,
to finish the candidate or cell it is training and exit. The request is a counter on the grid's
study in the storage, so it reaches workers on every machine without comparing their clocks: a
worker reads it when it starts and stops once it has gone up. A worker started after the request
reads the new value, which is how the next session's workers resume without clearing anything.
"""

from __future__ import annotations

from collections.abc import Callable

from lorafit.errors import LorafitError

# optuna is imported where it is used: the command line imports Drained at start-up.
REQUESTS = "drain_requests"  # user attribute of the grid study: how many drains were requested
STATUS = 3  # the exit status of a drained worker (1: cells failed or gave up; 2: a user error)


class Drained(Exception):
    """A worker stopped between two runs because a drain was requested after it started."""


def _requests(study) -> int:
    return int(study.user_attrs.get(REQUESTS, 0))


def request(storage, grid_study: str) -> str:
    """Ask every worker of `grid_study` running now to exit after its current run; what was asked
    of whom, in a line. LorafitError when the storage holds nothing of this grid."""
    import optuna
    from optuna.trial import TrialState

    from bench.sensitivity import SUFFIX

    mine = [
        s.study_name
        for s in optuna.get_all_study_summaries(storage)
        if s.study_name in (grid_study, grid_study + SUFFIX) or s.study_name.startswith(f"{grid_study}-tune-")
    ]
    if not mine:
        raise LorafitError(
            f"--drain: this storage holds no study of grid {grid_study}; check --runs-dir/--storage "
            "and the grid's --profile"
        )
    running = sum(
        len(optuna.load_study(study_name=n, storage=storage).get_trials(states=(TrialState.RUNNING,)))
        for n in mine
    )
    # The same study the grid's workers create (the tuning stage may not have made it yet).
    study = optuna.create_study(
        study_name=grid_study, storage=storage, direction="maximize", load_if_exists=True
    )
    study.set_user_attr(REQUESTS, _requests(study) + 1)
    return (
        f"grid {grid_study}: drain requested; {running} run{'' if running == 1 else 's'} in progress "
        "will finish, then their workers exit (workers started from now on are not affected)"
    )


def requested(storage, grid_study: str) -> int:
    """How many drains of `grid_study` the storage holds (0 before its study exists)."""
    import optuna

    try:
        return _requests(optuna.load_study(study_name=grid_study, storage=storage))
    except KeyError:  # not created yet: nobody asked
        return 0


def watcher(storage, grid_study: str, start: int | None = None) -> Callable[[], None]:
    """A check to call between runs: raises Drained once more drains were requested than `start`
    (default: as many as now, i.e. when this worker starts)."""
    seen = requested(storage, grid_study) if start is None else start

    def check() -> None:
        if requested(storage, grid_study) > seen:
            raise Drained(grid_study)

    return check
