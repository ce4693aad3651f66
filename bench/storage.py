"""Where trials live: Optuna's RDB storage (an existing engine, no home-made coordinator).

Default: an embedded SQLite file under the runs directory (no server; `optuna-dashboard
sqlite:///runs/optuna.db` opens it). For many machines: `--storage postgresql://user@host/db`.
Heartbeats mark the trials of crashed workers as failed; each is then retried once.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import optuna
from filelock import FileLock
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from lorafit.errors import LorafitError


def _heartbeat_settings() -> tuple[int, int]:
    """Seconds between heartbeats, and how long without one before a running trial counts as
    crashed: $LORAFIT_HEARTBEAT_S (default 10) and $LORAFIT_GRACE_S (default 3 heartbeats)."""
    try:
        beat = int(os.environ.get("LORAFIT_HEARTBEAT_S", "10"))
        grace = int(os.environ.get("LORAFIT_GRACE_S", str(3 * beat)))
    except ValueError:
        raise LorafitError("LORAFIT_HEARTBEAT_S and LORAFIT_GRACE_S must be whole seconds") from None
    if beat < 1 or grace <= beat:
        raise LorafitError(f"need LORAFIT_HEARTBEAT_S >= 1 and LORAFIT_GRACE_S > it (got {beat}, {grace})")
    return beat, grace


def grace_seconds() -> int:
    """How long a running trial may go without a heartbeat before it counts as crashed."""
    return _heartbeat_settings()[1]


# (study, trial number, claimed at) -> when this worker first saw the trial running; None once it
# gave it a heartbeat. Not keyed by storage object: every load_study wraps the storage anew.
_running_since: dict[tuple, float | None] = {}


def fail_stale_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Optuna's heartbeat check, closing the one gap it leaves by design, then the study's trials
    as they stand after it. A worker killed after it claimed a trial but before its heartbeat
    thread first wrote leaves a RUNNING trial with no heartbeat, which Optuna never counts as
    stale, so its cell would wait forever.

    A running trial this worker has watched for a grace period gets one heartbeat from it. A live
    trial's own thread wrote its row within milliseconds of the claim, so this only refreshes it
    once; a headless trial now goes stale after another grace period and is retried like any
    crashed worker's. Timed on this worker's monotonic clock: machines' clocks do not matter."""
    optuna.storages.fail_stale_trials(study)
    storage = study._storage  # what Optuna's own check reads; record_heartbeat is public on it
    now = time.monotonic()
    trials = study.get_trials(deepcopy=False)
    for trial in trials:
        if trial.state != TrialState.RUNNING:
            continue
        key = (study.study_name, trial.number, trial.datetime_start)
        since = _running_since.setdefault(key, now)
        if since is not None and now - since > grace_seconds():
            storage.record_heartbeat(trial._trial_id)
            _running_since[key] = None  # once: a dead worker's heartbeat is not kept fresh
    return trials


def default_url(runs_dir: Path) -> str:
    return f"sqlite:///{(runs_dir / 'optuna.db').resolve()}"


def open_storage(url: str | None, runs_dir: Path) -> RDBStorage:
    """The storage for `url` (default: SQLite under runs_dir). Unreachable -> one-line error."""
    url = url or default_url(runs_dir)
    if not url.startswith(("sqlite:///", "postgresql", "mysql")):
        raise LorafitError(
            f"unsupported storage URL {url!r}; use sqlite:///PATH or postgresql://USER@HOST/DB"
        )
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    if url.startswith("postgresql"):
        engine_kwargs["connect_args"] = {"connect_timeout": 10}
    beat, grace = _heartbeat_settings()

    def connect() -> RDBStorage:
        with warnings.catch_warnings():  # heartbeats are marked experimental; they are what we need
            warnings.simplefilter("ignore", ExperimentalWarning)
            return RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=beat,
                grace_period=grace,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
            )

    try:
        if url.startswith("sqlite:///"):
            # Workers starting together would race to create the schema: one at a time.
            with FileLock(url[len("sqlite:///") :] + ".lock"):
                return connect()
        for attempt in range(3):  # a server: another worker may be creating the schema right now
            try:
                return connect()
            except Exception as e:
                if attempt == 2 or "UNIQUE" not in str(e).upper() and "duplicate" not in str(e).lower():
                    raise
                time.sleep(1 + attempt)
    except ImportError as e:
        raise LorafitError(
            f"storage {redact(url)}: missing driver ({e}); pip install 'lorafit[postgres]'"
        ) from None
    except Exception as e:  # sqlalchemy's OperationalError and friends: say what and where, in one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LorafitError(f"cannot open storage {redact(url)}: {first}") from None


def redact(url: str) -> str:
    """Hide a password in user:password@host."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://{creds.split(':')[0]}@{host}"
    return url


def quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=ExperimentalWarning)
