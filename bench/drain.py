"""Stopping a grid's workers between runs: `run grid ... --drain`.

Killing a worker loses the run it is in (a DoRA candidate on the convs trains for a quarter of an
hour). A drain asks every worker of the grid, on this machine or any other that shares the storage,
to finish the candidate or cell it is training and exit. The request is a timestamp on the grid's
study in the storage, so it reaches workers on every machine; a worker started after it ignores it,
which is how the next session's workers resume without clearing anything.
"""

from __future__ import annotations

import time
from collections.abc import Callable

# optuna is imported where it is used: the command line imports Drained at start-up.
REQUESTED_AT = "drain_requested_at"  # user attribute of the grid study: time.time() of the request


class Drained(Exception):
    """A worker stopped between two runs because a drain was requested after it started."""


def _grid_study(storage, grid_study: str):
    import optuna

    # The same study the grid's workers create (the tuning stage may not have made it yet).
    return optuna.create_study(
        study_name=grid_study, storage=storage, direction="maximize", load_if_exists=True
    )


def request(storage, grid_study: str) -> None:
    """Ask every worker of `grid_study` running now to exit after its current run."""
    _grid_study(storage, grid_study).set_user_attr(REQUESTED_AT, time.time())


def watcher(storage, grid_study: str, started: float | None = None) -> Callable[[], None]:
    """A check to call between runs: raises Drained once a drain was requested after `started`
    (default: now, i.e. when this worker starts)."""
    since = time.time() if started is None else started

    def check() -> None:
        import optuna

        try:
            study = optuna.load_study(study_name=grid_study, storage=storage)
        except KeyError:  # not created yet: nobody asked
            return
        if study.user_attrs.get(REQUESTED_AT, 0.0) > since:
            raise Drained(grid_study)

    return check
