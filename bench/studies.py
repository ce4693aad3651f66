"""Study files (studies/NAME.toml) -> an Optuna study whose trials are RunConfigs.

    [study]       description, objectives (record metrics: val_acc, trainable_params, ...),
                  directions (maximize|minimize each), sampler (tpe|nsgaii|random), pruner
                  (median|successive_halving|none), seed, profile, trials
    [fixed]       RunConfig fields for every trial; "{param}" in a string is filled from the trial
    [[param]]     name, and either choices = [...] or low/high (+ log, step); optional
                  when = {other_param = value | [values]} makes it conditional (file order matters)
    [[override]]  when = {...}, set = {field = value}: fields fixed for some parameter values

The objective reads like the experiment: sample a configuration, run it with the shared runner
(per-epoch validation accuracy feeds the pruner), return the objectives. Every completed trial
writes the same record as a grid cell; a trial whose configuration an earlier trial already
completed reuses that result (user attribute `reused_from`) instead of training it again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from bench.context import Context
from bench.grid import read_toml
from bench.profiles import config_defaults
from bench.profiles import profile as profile_table
from bench.runner import run_cell
from bench.trials import finish_trial
from lorafit.config import CELL_FIELDS, RunConfig, cell_config
from lorafit.errors import LorafitError

STUDY_DIR = Path(__file__).resolve().parent.parent / "studies"
STUDY_KEYS = {"description", "objectives", "directions", "sampler", "pruner", "seed", "profile", "trials"}
PARAM_KEYS = {"name", "choices", "low", "high", "log", "step", "when"}
OBJECTIVES = ("val_acc", "test_acc", "trainable_params", "train_s", "source_acc_after")
SAMPLERS = ("tpe", "nsgaii", "random")
PRUNERS = ("median", "successive_halving", "none")


def study_files() -> dict[str, Path]:
    return {p.stem: p for p in sorted(STUDY_DIR.glob("*.toml")) if p.stem != "grid"}


def load_study_file(name_or_path: str) -> tuple[str, dict]:
    """(name, validated spec) for a study name in studies/ or a path to a .toml file."""
    files = study_files()
    if name_or_path in files:
        path = files[name_or_path]
    elif name_or_path.endswith(".toml"):
        path = Path(name_or_path)
    else:
        raise LorafitError(
            f"unknown study {name_or_path!r}; known: {', '.join(files) or 'none'} "
            f"(python -m bench study --list)"
        )
    spec = read_toml(path)
    _validate(path, spec)
    return path.stem, spec


def _validate(path: Path, spec: dict) -> None:
    bad = sorted(set(spec) - {"study", "fixed", "param", "override"})
    if bad:
        raise LorafitError(
            f"{path}: unknown section(s) {', '.join(bad)}; expected [study], [fixed], [[param]], [[override]]"
        )
    study = spec.get("study", {})
    bad = sorted(set(study) - STUDY_KEYS)
    if bad:
        raise LorafitError(f"{path}: unknown key(s) in [study]: {', '.join(bad)}")
    objectives, directions = study.get("objectives", ["val_acc"]), study.get("directions", ["maximize"])
    if len(objectives) != len(directions) or not objectives:
        raise LorafitError(f"{path}: objectives and directions must be non-empty lists of equal length")
    for o in objectives:
        if o not in OBJECTIVES:
            raise LorafitError(f"{path}: unknown objective {o!r}; choose from {', '.join(OBJECTIVES)}")
    for d in directions:
        if d not in ("maximize", "minimize"):
            raise LorafitError(f"{path}: direction must be maximize or minimize, got {d!r}")
    if study.get("sampler", "tpe") not in SAMPLERS:
        raise LorafitError(
            f"{path}: unknown sampler {study.get('sampler')!r}; choose from {', '.join(SAMPLERS)}"
        )
    if study.get("pruner", "none") not in PRUNERS:
        raise LorafitError(
            f"{path}: unknown pruner {study.get('pruner')!r}; choose from {', '.join(PRUNERS)}"
        )
    if len(objectives) > 1 and study.get("pruner", "none") != "none":
        raise LorafitError(f'{path}: pruning needs a single objective; set pruner = "none"')
    profile_table(study.get("profile", "smoke"))
    names = set()
    for p in spec.get("param", []):
        bad = sorted(set(p) - PARAM_KEYS)
        if bad or "name" not in p:
            raise LorafitError(
                f"{path}: [[param]] {p.get('name')!r} has unknown key(s) {', '.join(bad) or '(missing name)'}"
            )
        if ("choices" in p) == ("low" in p or "high" in p):
            raise LorafitError(f"{path}: param {p['name']!r} needs either choices or low/high")
        if "low" in p and not ("high" in p and p["low"] < p["high"]):
            raise LorafitError(f"{path}: param {p['name']!r} needs low < high")
        for other in p.get("when", {}):
            if other not in names:
                raise LorafitError(
                    f"{path}: param {p['name']!r} depends on {other!r}, which is not declared before it"
                )
        names.add(p["name"])
    for o in spec.get("override", []):
        if set(o) != {"when", "set"}:
            raise LorafitError(f"{path}: each [[override]] needs exactly 'when' and 'set'")
    # A dry run of the space: the first choices must make a valid RunConfig.
    config_for(spec, first_values(spec), study.get("profile", "smoke"))


def first_values(spec: dict) -> dict[str, Any]:
    """Each parameter's first choice (or its low end), honouring the `when` conditions."""
    values: dict[str, Any] = {}
    for p in spec.get("param", []):
        if _matches(p.get("when", {}), values):
            values[p["name"]] = p["choices"][0] if "choices" in p else p["low"]
    return values


def _matches(when: dict, values: dict) -> bool:
    for key, want in when.items():
        allowed = want if isinstance(want, list) else [want]
        if values.get(key) not in allowed:
            return False
    return True


def suggest(trial: optuna.Trial, params: list[dict]) -> dict[str, Any]:
    """Sample the declared parameters; conditional ones only when their condition holds."""
    values: dict[str, Any] = {}
    for p in params:
        if not _matches(p.get("when", {}), values):
            continue
        name = p["name"]
        if "choices" in p:
            values[name] = trial.suggest_categorical(name, p["choices"])
        elif isinstance(p["low"], float) or isinstance(p["high"], float):
            values[name] = trial.suggest_float(
                name, p["low"], p["high"], log=p.get("log", False), step=p.get("step")
            )
        else:
            values[name] = trial.suggest_int(
                name, p["low"], p["high"], log=p.get("log", False), step=p.get("step", 1)
            )
    return values


def config_for(spec: dict, values: dict[str, Any], profile: str, base: dict | None = None) -> RunConfig:
    """The RunConfig of one trial, by the grid's rules (lorafit.config.cell_config): profile
    defaults < `base` (e.g. --target) < [fixed] (templates filled from the trial's values) <
    sampled values < [[override]]s."""
    fixed = spec.get("fixed", {})
    bad = sorted(set(fixed) - set(CELL_FIELDS))
    if bad:
        raise LorafitError(
            f"[fixed] has unknown setting(s) {', '.join(bad)}; allowed: {', '.join(CELL_FIELDS)}"
        )
    fields = {**fixed, **values}
    for o in spec.get("override", []):
        if _matches(o["when"], fields):
            fields.update(o["set"])
    fields.setdefault("name", "trial")
    return cell_config(fields, {**config_defaults(profile), **(base or {})})


def _sampler(study_spec: dict) -> optuna.samplers.BaseSampler:
    seed = study_spec.get("seed", 0)
    return {
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True),
        "nsgaii": lambda: optuna.samplers.NSGAIISampler(seed=seed),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
    }[study_spec.get("sampler", "tpe")]()


def _pruner(study_spec: dict) -> optuna.pruners.BasePruner:
    return {
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1),
        "successive_halving": lambda: optuna.pruners.SuccessiveHalvingPruner(),
        "none": lambda: optuna.pruners.NopPruner(),
    }[study_spec.get("pruner", "none")]()


def create(name: str, spec: dict, profile: str, storage) -> optuna.Study:
    s = spec.get("study", {})
    study = optuna.create_study(
        study_name=f"{name}-{profile}",
        storage=storage,
        directions=s.get("directions", ["maximize"]),
        sampler=_sampler(s),
        pruner=_pruner(s),
        load_if_exists=True,
    )
    # A resumed study must not replay the same random draws: offset the file's seed by the
    # trials already there (still reproducible for a given history).
    done = len(study.get_trials(deepcopy=False))
    if done:
        study.sampler = _sampler({**s, "seed": s.get("seed", 0) + done})
    study.set_user_attr("kind", "study")
    study.set_user_attr("objectives", s.get("objectives", ["val_acc"]))
    return study


def objective_for(study: optuna.Study, spec: dict, profile: str, ctx: Context, base: dict | None = None):
    objectives = tuple(spec.get("study", {}).get("objectives", ["val_acc"]))
    prunable = len(objectives) == 1

    def objective(trial: optuna.Trial):
        values = suggest(trial, spec.get("param", []))
        try:
            cfg = ctx.resolve(config_for(spec, values, profile, base))
        except LorafitError as e:
            # A sampled combination the registry refuses (e.g. a rank above a layer's bound): the
            # trial ends pruned with the reason, the study goes on.
            trial.set_user_attr("refused", str(e))
            ctx.log(f"trial {trial.number:>3} refused: {e}")
            raise optuna.TrialPruned(str(e)) from None
        trial.set_user_attr("config", cfg.to_dict())
        label = f"trial {trial.number:>3} {cfg.cell_id}"
        # Samplers repeat configurations (head and full have nothing else to sample), and a run is
        # deterministic for its config: reuse a completed twin instead of training it again.
        for twin in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if twin.user_attrs.get("config") == cfg.to_dict():
                trial.set_user_attr("reused_from", twin.number)
                for key, value in twin.user_attrs.items():
                    if key not in ("config", "reused_from"):
                        trial.set_user_attr(key, value)
                ctx.log(f"{label:<40} same configuration as trial {twin.number}: reused")
                return twin.values[0] if len(twin.values) == 1 else twin.values

        def on_epoch(epoch: int, val_acc: float) -> None:
            if prunable:
                trial.report(val_acc, epoch)
                if trial.should_prune():
                    trial.set_user_attr(
                        "pruned", f"epoch {epoch}: val_acc {val_acc:.4f} below the pruner's bar"
                    )
                    raise optuna.TrialPruned(f"epoch {epoch}")

        record = run_cell(
            cfg,
            ctx,
            study.study_name,
            trial.number,
            on_epoch=on_epoch,
            run_id=f"t{trial.number:04d}-{cfg.cell_id}",
        )
        return finish_trial(trial, label, record, objectives, log=ctx.log)

    return objective


def finished(study: optuna.Study) -> int:
    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.get_trials(deepcopy=False))


def best_as_grid(name: str, spec: dict, study: optuna.Study, profile: str) -> str:
    """The best trial(s), ready to paste into studies/grid.toml."""
    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not done:
        raise LorafitError(
            f"study {study.study_name} has no completed trial yet; run `python -m bench study {name}` first"
        )
    trials = study.best_trials if len(study.directions) > 1 else [study.best_trial]
    objectives = spec.get("study", {}).get("objectives", ["val_acc"])
    lines = [
        f"# from study {study.study_name} ({len(done)} completed trials), best by {', '.join(objectives)}"
    ]
    seen = set()
    for t in sorted(trials, key=lambda t: t.number):
        cfg = RunConfig.from_dict(t.user_attrs["config"])
        if cfg.digest() in seen:  # samplers may repeat a configuration; list it once
            continue
        seen.add(cfg.digest())
        scores = ", ".join(f"{o} {v:.4g}" for o, v in zip(objectives, t.values))
        if set(t.params) == {"lr"}:
            lines += [f"# trial {t.number}: {scores}", "[lr]", f"{cfg.method} = {cfg.lr:.3g}"]
            continue
        lines += [
            "",
            f"[[cell]]  # trial {t.number}: {scores}",
            f'name = "{name}-t{t.number}"',
            f'method = "{cfg.method}"',
            f'placement = "{cfg.placement}"',
            f'shape = "{cfg.shape}"',
            f"rank = {cfg.rank}",
            f"alpha = {cfg.alpha:g}",
            f'policy = "{cfg.policy}"',
            f"lr = {cfg.lr:.3g}",
        ]
    return "\n".join(lines)
