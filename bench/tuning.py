"""The tuning stage of the grid: before a configuration's seeds run, an Optuna study tunes its
learning rates on the validation split, with the same budget for every configuration.

Every configuration gets the same number of finished trials (completed or pruned), the same
sampler with the same seed, the same pruner, the same training subset, epochs and training seed.
Two rates are tuned wherever both exist: `lr` for the adapter (or the backbone, for full
fine-tuning and scratch) and `head_lr` for the new head; the linear probe has only `head_lr`.
The seeds then run at the selected values, which every record and the leaderboard carry.
Trials record under records/<grid study>-tune/. A tuning study is an ordinary Optuna study in
the grid's storage, so it resumes after a crash and several workers can share the stage: each
configuration is claimed and tuned by one worker (its trials in sequence, as with one worker),
the others tune the rest and wait for it; a crashed worker's configuration is taken over once its
heartbeat stops. A finished study is never re-tuned.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from typing import Any

import optuna
from optuna.trial import TrialState
from tqdm import tqdm

from bench.context import Context
from bench.records import record_path, write_json
from bench.runner import run_cell
from bench.storage import grace_seconds
from bench.trials import RunFailed, finish_trial
from lorafit.config import RunConfig
from lorafit.errors import LorafitError

SAMPLERS = ("tpe", "qmc", "random")
PRUNERS = ("successive_halving", "median", "none")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
POLL_S = 2.0


@dataclass(frozen=True)
class TuneSpec:
    """The tuning budget, the same for every configuration of a grid ([tune] in the grid file)."""

    trials: int = 12
    sampler: str = "tpe"
    pruner: str = "successive_halving"
    seed: int = 0  # the sampler's seed and the training seed of every tuning trial
    train_size: int = 0  # images of the train split the trials train on (0: the profile's)
    epochs: int = 0  # epochs per trial (0: the profile's)
    lr: tuple[float, float] = (1e-5, 3e-2)  # log-uniform range of the adapter's / backbone's rate
    head_lr: tuple[float, float] = (1e-4, 5e-2)  # log-uniform range of the new head's rate

    def __post_init__(self) -> None:
        if not isinstance(self.trials, int) or self.trials < 1:
            raise LorafitError(f"[tune] trials must be an integer >= 1, got {self.trials!r}")
        if self.sampler not in SAMPLERS:
            raise LorafitError(
                f"[tune] unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}"
            )
        if self.pruner not in PRUNERS:
            raise LorafitError(f"[tune] unknown pruner {self.pruner!r}; choose one of {', '.join(PRUNERS)}")
        for key in ("lr", "head_lr"):
            low, high = getattr(self, key)
            if not 0 < low < high:
                raise LorafitError(f"[tune] {key} must be [low, high] with 0 < low < high, got {[low, high]}")
        for key in ("seed", "train_size", "epochs"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) < 0:
                raise LorafitError(f"[tune] {key} must be an integer >= 0, got {getattr(self, key)!r}")

    @classmethod
    def from_table(cls, table: dict) -> TuneSpec:
        known = set(cls.__dataclass_fields__)
        bad = sorted(set(table) - known)
        if bad:
            raise LorafitError(
                f"[tune] has unknown key(s) {', '.join(bad)}; allowed: {', '.join(sorted(known))}"
            )
        values = dict(table)
        for key in ("lr", "head_lr"):
            if key in values:
                pair = values[key]
                if not (
                    isinstance(pair, list)
                    and len(pair) == 2
                    and all(isinstance(v, int | float) for v in pair)
                ):
                    raise LorafitError(f"[tune] {key} must be a [low, high] pair of numbers, got {pair!r}")
                values[key] = (float(pair[0]), float(pair[1]))
        return cls(**values)


def tuned_rates(cfg: RunConfig) -> tuple[str, ...]:
    """The rates a configuration has: the probe trains only its head."""
    return ("head_lr",) if cfg.method == "head" else ("lr", "head_lr")


def tuning_key(cfg: RunConfig) -> str:
    """A configuration's identity for tuning: its RunConfig minus the seed and the rates."""
    d = {k: v for k, v in cfg.to_dict().items() if k not in ("seed", "lr", "head_lr")}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]


def study_name(grid_study: str, cfg: RunConfig) -> str:
    rank = f"-r{cfg.rank}" if cfg.rank else ""
    return f"{grid_study}-tune-{cfg.name}{rank}-{tuning_key(cfg)}"


def trial_config(cfg: RunConfig, spec: TuneSpec, rates: dict[str, float]) -> RunConfig:
    """What one tuning trial runs: the configuration on the tuning subset, epochs and seed."""
    lr = rates.get("lr", rates["head_lr"])  # the probe: lr is unused, recorded as its head rate
    return cfg.replace(
        seed=spec.seed,
        train_size=spec.train_size or cfg.train_size,
        epochs=spec.epochs or cfg.epochs,
        patience=0,
        lr=lr,
        head_lr=rates["head_lr"],
    )


def _sampler(spec: TuneSpec, offset: int) -> optuna.samplers.BaseSampler:
    seed = spec.seed + offset
    if spec.sampler == "qmc":
        return optuna.samplers.QMCSampler(qmc_type="sobol", scramble=True, seed=seed)
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # Half the budget explores (seeded: the same draws for every configuration), then TPE.
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, spec.trials // 2), multivariate=True)


def _pruner(spec: TuneSpec) -> optuna.pruners.BasePruner:
    if spec.pruner == "successive_halving":  # ASHA-style: a third goes on at each rung
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    return optuna.pruners.NopPruner()


def open_study(cfg: RunConfig, spec: TuneSpec, grid_study: str, storage) -> tuple[optuna.Study, bool]:
    """The configuration's tuning study, and whether this call created it: creating it is how a
    worker claims a configuration (the storage refuses a second study of the same name), so with
    several workers each configuration is tuned by one of them, trial after trial, as by one."""
    name = study_name(grid_study, cfg)
    try:
        optuna.create_study(study_name=name, storage=storage, direction="maximize")
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        created = False
    study = optuna.load_study(
        study_name=name, storage=storage, sampler=_sampler(spec, 0), pruner=_pruner(spec)
    )
    existing = len(study.get_trials(deepcopy=False))
    if existing:  # a resumed study draws new values rather than replaying the seeded ones
        study.sampler = _sampler(spec, existing)
    if created:
        study.set_user_attr("claimed_at", time.time())
        study.set_user_attr("kind", "tuning")
        budget = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(spec).items()}
        study.set_user_attr("tune", budget)
    return study, created


def _tuned_elsewhere(study: optuna.Study) -> bool:
    """Another worker is tuning this study: a trial of it runs, or it was claimed, or a trial
    started or ended, less than a grace period ago (a crashed worker's trial is failed by the
    heartbeat check; its study is then taken over)."""
    optuna.storages.fail_stale_trials(study)
    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.RUNNING for t in trials):
        return True
    times = [study.user_attrs.get("claimed_at", 0.0)]
    times += [(t.datetime_complete or t.datetime_start).timestamp() for t in trials if t.datetime_start]
    return time.time() - max(times) < grace_seconds()


def finished(study: optuna.Study) -> int:
    return sum(t.state in FINISHED for t in study.get_trials(deepcopy=False))


def tune(cfg: RunConfig, spec: TuneSpec, ctx: Context, grid_study: str, storage) -> dict[str, Any] | None:
    """Run (or resume) cfg's tuning study until it has spec.trials finished trials; return the
    selection: the best trial's rates with what it took to find them. None: another worker is
    tuning it (ask again later)."""
    study, created = open_study(cfg, spec, grid_study, storage)
    if finished(study) < spec.trials and not created:
        if _tuned_elsewhere(study):
            return None
        study.set_user_attr("claimed_at", time.time())  # resuming or taking over: claim it again
    rates = tuned_rates(cfg)
    folder = f"{grid_study}-tune/{study.study_name.removeprefix(grid_study + '-tune-')}"

    def objective(trial: optuna.Trial) -> float:
        values = {r: trial.suggest_float(r, *getattr(spec, r), log=True) for r in rates}

        def label(values: dict) -> str:
            return f"  tune {trial.number:>2} " + " ".join(f"{r}={values[r]:.2e}" for r in rates)

        run = trial_config(cfg, spec, values)
        trial.set_user_attr("config", run.to_dict())

        def on_epoch(epoch: int, val_acc: float) -> None:
            trial.report(val_acc, epoch)
            if trial.should_prune():
                trial.set_user_attr("pruned", f"epoch {epoch}: val_acc {val_acc:.4f} below the pruner's bar")
                ctx.log(f"{label(values):<40} pruned    at epoch {epoch}: val_acc={val_acc:.4g}")
                # A small record, so the sensitivity chart shows where pruned rates stood too.
                write_json(
                    record_path(ctx.runs_dir, folder, f"t{trial.number:04d}-{run.cell_id}"),
                    {
                        "run": {
                            "id": f"t{trial.number:04d}-{run.cell_id}",
                            "study": folder,
                            "trial": trial.number,
                            "status": "pruned",
                            "error": None,
                        },
                        "config": run.to_dict(),
                        "metrics": {"val_acc": val_acc, "pruned_epoch": epoch},
                        "tuning": {"mode": "trial"},
                    },
                )
                raise optuna.TrialPruned(f"epoch {epoch}")

        record = run_cell(
            run,
            ctx,
            folder,
            trial.number,
            on_epoch=on_epoch,
            run_id=f"t{trial.number:04d}-{run.cell_id}",
            with_ledger=False,
        )
        return finish_trial(trial, label(values), record, ("val_acc",), log=ctx.log)

    todo = spec.trials - finished(study)
    if todo > 0:
        study.optimize(
            objective,
            n_trials=todo,
            catch=(RunFailed,),
            callbacks=[optuna.study.MaxTrialsCallback(spec.trials, states=FINISHED)],
        )
    # A worker that took over a study another was still finishing can leave a trial beyond the
    # budget: wait for it, then choose among the first spec.trials finished trials only.
    while any(t.state == TrialState.RUNNING for t in study.get_trials(deepcopy=False)):
        optuna.storages.fail_stale_trials(study)
        time.sleep(POLL_S)
    budget = sorted(
        (t for t in study.get_trials(deepcopy=False) if t.state in FINISHED), key=lambda t: t.number
    )[: spec.trials]
    complete = [t for t in budget if t.state == TrialState.COMPLETE]
    if not complete:
        raise LorafitError(
            f"tuning study {study.study_name} has no completed trial (all pruned or failed); "
            f"widen the [tune] ranges or raise trials"
        )
    best = max(complete, key=lambda t: (t.value, -t.number))
    states = [t.state for t in study.get_trials(deepcopy=False) if t.state not in FINISHED] + [
        t.state for t in budget
    ]
    return {
        "mode": "tuned",
        "study": study.study_name,
        "trials": sum(s in FINISHED for s in states),
        "complete": states.count(TrialState.COMPLETE),
        "pruned": states.count(TrialState.PRUNED),
        "failed": states.count(TrialState.FAIL),
        "best_trial": best.number,
        "best_val_acc": best.value,
        "lr": best.params.get("lr", best.params["head_lr"]),
        "head_lr": best.params["head_lr"],
        "spec": study.user_attrs["tune"],
    }


def tune_cells(
    cells: list[RunConfig], spec: TuneSpec, ctx: Context, grid_study: str, storage, show_progress: bool = True
) -> tuple[list[RunConfig], dict[str, dict]]:
    """The tuning stage: every configuration of `cells` tuned (or its finished tuning reused), its
    cells set to the selected rates. Returns the tuned cells and, per cell id, its selection."""
    groups: dict[str, list[RunConfig]] = {}
    for cfg in cells:
        groups.setdefault(tuning_key(cfg), []).append(cfg)
    bar = tqdm(
        total=len(groups),
        desc="tuning",
        unit="config",
        dynamic_ncols=True,
        disable=None if show_progress else True,
    )
    chosen: dict[str, dict] = {}
    waiting_for: set[str] = set()
    try:
        while len(chosen) < len(groups):
            progressed = False
            for key, members in groups.items():
                if key in chosen:
                    continue
                head = members[0]
                label = f"{head.name}{f'-r{head.rank}' if head.rank else ''}"
                if key not in waiting_for:
                    ctx.log(f"tuning {label}: {spec.trials} trials ({', '.join(tuned_rates(head))})")
                selection = tune(head, spec, ctx, grid_study, storage)
                if selection is None:
                    if key not in waiting_for:
                        ctx.log(f"tuning {label}: another worker is tuning it; going on, back later")
                        waiting_for.add(key)
                    continue
                ctx.log(
                    f"tuned  {label}: lr={selection['lr']:.3g} head_lr={selection['head_lr']:.3g} "
                    f"(val_acc {selection['best_val_acc']:.4f}, trial {selection['best_trial']} of "
                    f"{selection['trials']})"
                )
                chosen[key] = selection
                progressed = True
                bar.update(1)
            if not progressed and len(chosen) < len(groups):
                time.sleep(POLL_S)
    finally:
        bar.close()
    tuned, selections = [], {}
    for cfg in cells:
        selection = chosen[tuning_key(cfg)]
        final = cfg.replace(lr=selection["lr"], head_lr=selection["head_lr"])
        tuned.append(final)
        selections[final.cell_id] = selection
    return tuned, selections
