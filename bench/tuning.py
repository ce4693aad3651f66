"""The tuning stage of the grid: before a configuration's seeds run, its learning rates are chosen
on the validation split by one rule applied to every configuration alike (bench.protocol).

Each candidate is one Optuna trial of the configuration's study (enqueued with its fixed rates,
never sampled), trained exactly as the seed-`seed` cell at those rates would be: same images,
epochs, schedule and early stopping. Its value is that run's validation accuracy. Two rates are
tuned wherever both exist: `lr` for the adapter (or the backbone) and `head_lr` for the new head;
the linear probe has only `head_lr`. Every configuration that contains the probe is tuned after
the probe, so it can evaluate the probe's selected head rate with the rest at rest.

A tuning study is an ordinary Optuna study in the grid's storage: a killed stage resumes with the
candidates it has not finished, and several workers share the stage: each configuration is
claimed by one worker (creating its study is the claim) and tuned candidate after candidate, as
one worker would; the others tune the rest and, waiting for it, run the tuned ones' seed cells;
a crashed worker's configuration is taken over once its heartbeat stops. A configuration's seed cells
run as soon as it is tuned, before the next one's tuning, so a run cut short has whole rows. A finished
study (its selection stored on it) is never re-tuned. Trials record under records/<study>-tune/<config>/."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import TrialState
from tqdm import tqdm

from bench import protocol
from bench.context import Context
from bench.plan import Cell
from bench.protocol import Candidate, TuneSpec
from bench.runner import run_cell
from bench.storage import fail_stale_trials, grace_seconds
from bench.trials import RECORDED, RunFailed, done_trial, finish_trial
from lorafit.config import RunConfig
from lorafit.errors import LorafitError

POLL_S = 2.0
RATE_RANGE = (0.0, 100.0)  # the trials' parameter distribution: wide enough for any extension
WORKER = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"

__all__ = ["TuneSpec", "tune", "tune_cells", "tuned_rates", "probe_of"]


def tuned_rates(cfg: RunConfig) -> tuple[str, ...]:
    """The rates a configuration has: the probe trains only its head."""
    return ("head_lr",) if cfg.method == "head" else ("lr", "head_lr")


def probe_of(cfg: RunConfig) -> RunConfig:
    """The linear probe of cfg's setup (same data, budget and backbone)."""
    return cfg.replace(
        name="head",
        method="head",
        placement="none",
        shape="1x1",
        rank=0,
        alpha=1.0,
        policy="head",
        rslora=False,
    )


def _probe_key(cfg: RunConfig) -> str:
    """The tuning key of cfg's probe: the same for a grid's probe, whatever its name, and for
    every configuration whose probe it is."""
    return probe_of(cfg).tuning_key


def study_name(grid_study: str, cfg: RunConfig) -> str:
    return f"{grid_study}-tune-{cfg.label}-{cfg.tuning_key}"


def trial_config(cfg: RunConfig, spec: TuneSpec, cand: Candidate) -> RunConfig:
    """What a candidate trains: the configuration's seed-`spec.seed` cell at the candidate's rates
    (the seeds' own images, epochs, schedule and early stopping)."""
    return cfg.replace(seed=spec.seed, lr=cand.lr, head_lr=cand.head_lr)


def open_study(cfg: RunConfig, spec: TuneSpec, grid_study: str, storage) -> tuple[optuna.Study, bool]:
    """The configuration's tuning study, and whether this call created it (the claim)."""
    name = study_name(grid_study, cfg)
    try:
        optuna.create_study(study_name=name, storage=storage, direction="maximize")
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        created = False
    # Candidates are enqueued, never sampled: the cheap RandomSampler keeps Optuna from modelling.
    study = optuna.load_study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler(0))
    if created:
        study.set_user_attr("kind", "tuning")
        study.set_user_attr("tune", spec.to_dict())
        _claim(study)
    elif study.user_attrs.get("tune") != spec.to_dict() and "selection" not in study.user_attrs:
        raise LorafitError(
            f"tuning study {name} was started with another [tune] design ({study.user_attrs.get('tune')}); "
            f"use another --runs-dir or --storage, or restore the grid's [tune] section"
        )
    return study, created


def _claim(study: optuna.Study) -> None:
    study.set_user_attr("claimed_at", time.time())
    study.set_user_attr("owner", WORKER)


def _tuned_elsewhere(study: optuna.Study) -> bool:
    """Another worker is tuning this study: a trial of it runs, or another worker claimed it or
    finished a trial of it less than a grace period ago (a crashed worker's running trial is
    failed by the heartbeat check; its study is then taken over at once: the moment a trial was
    failed for its worker is no sign of that worker)."""
    if study.user_attrs.get("owner") == WORKER:
        return False
    trials = fail_stale_trials(study)
    if any(t.state == TrialState.RUNNING for t in trials):
        return True
    times = [study.user_attrs.get("claimed_at", 0.0)]
    times += [
        (t.datetime_complete or t.datetime_start).timestamp()
        for t in trials
        if t.datetime_start and (t.state != TrialState.FAIL or t.user_attrs.get(RECORDED))
    ]
    return time.time() - max(times) < grace_seconds()


def evaluated_candidates(study: optuna.Study) -> dict[str, optuna.trial.FrozenTrial]:
    """candidate id -> its finished trial: complete, diverged (recorded), or failed with an error
    twice (a run that raised is retried once, as a grid cell whose worker crashed is); the first
    one wins."""
    out: dict[str, optuna.trial.FrozenTrial] = {}
    errors: dict[str, int] = {}
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        cid = t.user_attrs.get("candidate")
        if cid is None or cid in out:
            continue
        if (
            t.state == TrialState.FAIL
            and t.user_attrs.get(RECORDED)
            and t.user_attrs.get("status") == "failed"
        ):
            errors[cid] = errors.get(cid, 0) + 1
            if errors[cid] >= 2:
                out[cid] = t
        elif done_trial(t):
            out[cid] = t
    return out


def _stored_candidates(study: optuna.Study) -> list[Candidate]:
    """The extension candidates earlier rounds added (from the storage, in order of creation)."""
    seen, out = set(), []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        c = t.user_attrs.get("candidate_spec")
        if c and c["role"] == "extension" and c["id"] not in seen:
            seen.add(c["id"])
            out.append(Candidate(**c))
    return out


def _value(trial: optuna.trial.FrozenTrial) -> float | None:
    """A candidate's validation accuracy; a diverged run counts at its best epoch before the
    divergence (as its seeds would), a failed one has none."""
    if trial.state == TrialState.COMPLETE:
        return trial.value
    return trial.user_attrs.get("val_acc")


class _Tuner:
    """Evaluates one configuration's candidates in its study."""

    def __init__(self, cfg: RunConfig, spec: TuneSpec, ctx: Context, grid_study: str, study) -> None:
        self.cfg, self.spec, self.ctx, self.study = cfg, spec, ctx, study
        self.rates = tuned_rates(cfg)
        self.folder = f"{grid_study}-tune/{study.study_name.removeprefix(grid_study + '-tune-')}"

    def evaluate(self, cands: list[Candidate]) -> dict[str, optuna.trial.FrozenTrial]:
        """Every candidate of `cands` that has no finished trial yet is trained; returns all. A
        waiting trial left by a crashed worker (the heartbeat check re-queues its candidate) is
        taken first, as Optuna pops the oldest."""
        done = evaluated_candidates(self.study)
        for cand in cands:
            while cand.id not in done:
                self.ctx.between_runs()
                waiting = self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
                if not any(t.user_attrs.get("candidate") == cand.id for t in waiting):
                    self.study.enqueue_trial(
                        cand.params(self.rates),
                        user_attrs={"candidate": cand.id, "candidate_spec": cand.to_dict()},
                        skip_if_exists=False,
                    )
                self.study.optimize(self._objective, n_trials=1, catch=(RunFailed,))
                done = evaluated_candidates(self.study)
        return done

    def _objective(self, trial: optuna.Trial) -> float:
        spec = trial.user_attrs.get("candidate_spec")
        if spec is None:  # a stray trial (none was waiting): nothing to evaluate
            trial.set_user_attr("skipped", "no queued candidate")
            raise optuna.TrialPruned()
        cand = Candidate(**spec)
        if cand.id in evaluated_candidates(self.study):  # a re-queued copy of a finished candidate
            trial.set_user_attr("skipped", f"candidate {cand.id} already finished")
            raise optuna.TrialPruned()
        for r in self.rates:  # the enqueued fixed values, stored as the trial's parameters
            trial.suggest_float(r, *RATE_RANGE)
        run = trial_config(self.cfg, self.spec, cand)
        trial.set_user_attr("config", run.to_dict())
        label = f"  tune {cand.id:<9} " + " ".join(f"{r}={getattr(cand, r):.2e}" for r in self.rates)
        run_id = f"t{trial.number:04d}-{run.cell_id}"
        record = run_cell(
            run,
            self.ctx,
            self.folder,
            trial.number,
            run_id=run_id,
            tuning={"mode": "trial", "candidate": cand.id, "role": cand.role},
            with_ledger=False,
        )
        trial.set_user_attr("record", f"{self.folder}/{run_id}")
        return finish_trial(trial, label, record, ("val_acc",), log=self.ctx.log)


def tune(
    cfg: RunConfig,
    spec: TuneSpec,
    ctx: Context,
    grid_study: str,
    storage,
    probe: dict | None = None,
) -> dict[str, Any] | None:
    """Run (or resume) cfg's tuning study to its selection and return it. `probe`: the probe's
    selection, for a configuration that contains the probe (needed for its fallback candidate).
    None: another worker is tuning it, or the probe's selection is not there yet (ask again later)."""
    study, created = open_study(cfg, spec, grid_study, storage)
    if "selection" in study.user_attrs:
        return study.user_attrs["selection"]
    if not created:
        if _tuned_elsewhere(study):
            return None
        _claim(study)  # resuming or taking over
    tuner = _Tuner(cfg, spec, ctx, grid_study, study)
    cands = protocol.design(spec, tuner.rates)
    tuner.evaluate(cands)
    if protocol.contains_probe(cfg.method):
        if probe is None:
            return None  # the design is done; the fallback waits for the probe's selection
        cands.append(protocol.fallback(probe["head_lr"]))
    cands += _stored_candidates(study)

    def values_of(pool: list[Candidate]) -> dict[str, float | None]:
        return {cid: _value(t) for cid, t in tuner.evaluate(pool).items()}

    best, values, capped = protocol.grow(values_of, cands, tuner.rates, spec.max_extensions, ctx.log)
    moves = 0
    if spec.refine:
        best, values, moves, capped_moves = protocol.climb(
            values_of, cands, best, tuner.rates, spec.max_moves, ctx.log
        )
        capped += capped_moves
    selection = _selection(tuner, cands, best, values, capped, moves)
    study.set_user_attr("selection", selection)
    return selection


def _sensitivity(tuner: _Tuner, cands: list[Candidate], best: Candidate) -> dict[str, dict]:
    """The selection's x/sqrt(10) and x*sqrt(10) neighbours (a tried candidate at the same point is
    reused), keyed by axis and side."""
    neighbours = [
        (nb, next((c for c in cands if c.eligible and protocol.same_point(c, nb, tuner.rates)), nb))
        for nb in protocol.neighbours(best, tuner.rates)
    ]
    done = tuner.evaluate([run for nb, run in neighbours if run is nb])
    return {
        nb.id.removeprefix("s"): {"lr": nb.lr, "head_lr": nb.head_lr, "val_acc": _value(done[run.id])}
        for nb, run in neighbours
    }


def _selection(
    tuner: _Tuner, cands: list[Candidate], best: Candidate, values: dict, capped: list[str], moves: int
) -> dict[str, Any]:
    """What every seed record of the configuration carries about how its rates were chosen."""
    eligible = [c.id for c in cands if c.eligible]
    best_trial = evaluated_candidates(tuner.study)[best.id]
    curve = protocol.expected_max([values[c.id] for c in cands if c.designed])
    made = {
        f"{axis}{'+' if side > 0 else '-'}": protocol.extensions_made(cands, axis, side)
        for axis in tuner.rates
        for side in (1, -1)
    }
    return {
        "mode": "tuned",
        "protocol": "design",
        "study": tuner.study.study_name,
        "trials": len(eligible),
        "complete": sum(values[c] is not None for c in eligible),
        "failed": sum(values[c] is None for c in eligible),
        "extensions": {k: n for k, n in made.items() if n},
        "edge": capped,  # sides where the edge rule's (or "moves": rule 4's) cap stopped it (should be empty)
        "moves": moves,  # rule 4: moves to a better neighbour
        "fallback": best.role == "fallback",
        "best_candidate": best.id,
        "best_trial": best_trial.number,
        "best_val_acc": values[best.id],
        "record": best_trial.user_attrs.get("record"),
        "lr": best.lr,
        "head_lr": best.head_lr,
        "curve": curve,
        "margin": protocol.margin(curve),
        "sensitivity": _sensitivity(tuner, cands, best) if tuner.spec.sensitivity else {},
        "spec": tuner.spec.to_dict(),
    }


def configurations(cells: list[RunConfig]) -> dict[str, RunConfig]:
    """tuning key -> the configuration the tuning stage tunes, probes first; a probe the grid lacks
    is added for the configurations that contain it (their fallback needs its selection)."""
    groups: dict[str, RunConfig] = {}
    for cfg in sorted(cells, key=lambda c: c.method != "head"):
        groups.setdefault(cfg.tuning_key, cfg)
    for cfg in list(groups.values()):
        if protocol.contains_probe(cfg.method) and not any(
            _probe_key(g) == _probe_key(cfg) for g in groups.values() if g.method == "head"
        ):
            extra = probe_of(cfg)
            groups = {extra.tuning_key: extra, **groups}
    return groups


def tune_cells(
    cells: list[RunConfig],
    spec: TuneSpec,
    ctx: Context,
    grid_study: str,
    storage,
    show_progress: bool = True,
    meanwhile: Callable[[list[Cell]], bool] | None = None,
) -> list[Cell]:
    """The tuning stage: every configuration of `cells` tuned (or its finished tuning reused); returns
    the cells at their selected rates, each with its selection. Probes come first: a configuration
    that contains the probe evaluates the probe's selection as its fallback (a probe the grid lacks
    is tuned too, and runs no seeds). `meanwhile(the cells of those tuned so far)` runs one of them
    and says whether it did: after each selection while one is left, and while others tune the rest."""

    def ran_one() -> bool:  # one cell of the configurations tuned so far, if one is waiting
        ctx.between_runs()  # a drain request stops the worker before the cell, as before a candidate
        ready = [Cell.at(c, chosen[c.tuning_key]) for c in cells if c.tuning_key in chosen]
        return bool(meanwhile and ready and meanwhile(ready))

    groups = configurations(cells)
    probes = {_probe_key(g): k for k, g in groups.items() if g.method == "head"}
    off = None if show_progress else True  # None: tqdm's own rule (bars on a terminal only)
    bar = tqdm(total=len(groups), desc="tuning", unit="config", dynamic_ncols=True, disable=off)
    chosen: dict[str, dict] = {}
    waiting_for: set[str] = set()
    try:
        while len(chosen) < len(groups):
            ctx.between_runs()  # once per pass (a storage read), not per configuration
            progressed = False
            for key, head in groups.items():
                if key in chosen:
                    continue
                probe = (
                    chosen.get(probes.get(_probe_key(head), ""))
                    if protocol.contains_probe(head.method)
                    else None
                )
                if key not in waiting_for:
                    ctx.log(
                        f"tuning {head.label}: {spec.candidates} designed candidates "
                        f"({', '.join(tuned_rates(head))})"
                    )
                selection = tune(head, spec, ctx, grid_study, storage, probe)
                if selection is None:
                    if key not in waiting_for:
                        ctx.log(f"tuning {head.label}: waiting (another worker tunes it, or its probe)")
                        waiting_for.add(key)
                    continue
                ext = ", ".join(f"{k} x{v}" for k, v in selection["extensions"].items()) or "none"
                ctx.log(
                    f"tuned  {head.label}: lr={selection['lr']:.3g} head_lr={selection['head_lr']:.3g} "
                    f"(val_acc {selection['best_val_acc']:.4f}, {selection['best_candidate']} of "
                    f"{selection['trials']}; edge extensions {ext}; margin {selection['margin']:+.4f}"
                    f"{f'; moved to a better neighbour x{n}' if (n := selection.get('moves')) else ''}"
                    f"{'; fell back to the probe' if selection['fallback'] else ''})"
                )
                chosen[key] = selection
                progressed = True
                bar.update(1)
                while ran_one():
                    continue
            if not progressed and len(chosen) < len(groups) and not ran_one():
                time.sleep(POLL_S)
    finally:
        bar.close()
    return [Cell.at(cfg, chosen[cfg.tuning_key]) for cfg in cells]
