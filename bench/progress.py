"""Where a resumable grid stands, read from its storage alone: `run grid ... --status`.

Per configuration: its tuning study's state (not started, how many candidates have a result, or
its selection) and how many of its seed cells are done; then one summary line, and what is left
in worker-hours, projected from each configuration's own run times in the storage. Nothing is
trained, created, claimed or downloaded, so it is safe to run beside the workers and on a machine
without the data (the cells' protocol then comes from the studies the storage holds)."""

from __future__ import annotations

from statistics import median

import optuna
from optuna.trial import TrialState

from bench import tuning
from bench.sensitivity import SUFFIX
from bench.trials import done_trial
from lorafit import data
from lorafit.config import RunConfig
from lorafit.errors import LorafitError

# What "auto" resolves to for real data: which one a run used depends on the files it found.
REAL_PROTOCOLS = ("official", "resplit")

STATES = ("tuned", "tuning", "not started", "rates fixed")


def _tuning_state(study: optuna.Study | None, head: RunConfig) -> tuple[str, str, RunConfig | None, int]:
    """(state, description, the configuration at its selected rates or None, candidates done)."""
    if study is None:
        return "not started", "not started", None, 0
    n = len(tuning.evaluated_candidates(study))
    selection = study.user_attrs.get("selection")
    if selection is None:
        return "tuning", f"tuning, {n} candidate{'' if n == 1 else 's'} done", None, n
    rates = head.replace(lr=selection["lr"], head_lr=selection["head_lr"])
    best = selection.get("best_val_acc")  # None when every candidate failed
    text = (
        f"tuned: lr {selection['lr']:.3g} / head {selection['head_lr']:.3g}, validation "
        f"{'—' if best is None else f'{100 * best:.2f}%'} ({n} candidates)"
    )
    return "tuned", text, rates, n


def _hours(trials: list[optuna.trial.FrozenTrial]) -> list[float]:
    """How long each finished run among `trials` took, in hours (a worker's time)."""
    return [
        t.duration.total_seconds() / 3600 for t in trials if t.state == TrialState.COMPLETE and t.duration
    ]


class _Left:
    """What a grid has left, in worker-hours, from each configuration's own runs: a tuned one's
    seed cells cost what its selected candidate took (the same run at another seed; the tuning
    seed's cell reuses it); one still tuning has as many candidates left as the grid's tuned
    configurations took (median; at least the one it is running), each at its own median so far,
    then its seeds at that cost."""

    def __init__(self) -> None:
        self.seeds = 0.0  # the tuned configurations' seed cells left
        self.tuning_now: list[tuple[optuna.Study, int, int]] = []  # (study, candidates done, cells)
        self.taken: list[int] = []  # how many candidates the tuned configurations took
        self.unmeasured = 0

    def tuned(self, study: optuna.Study, left: list[RunConfig]) -> None:
        selection = study.user_attrs["selection"]
        self.taken.append(selection["trials"])
        best = study.trials[selection["best_trial"]]
        seed = (best.user_attrs.get("config") or {}).get("seed")
        self.seeds += sum(c.seed != seed for c in left) * sum(_hours([best]))

    def line(self) -> str | None:
        tuning, seeds, unmeasured = 0.0, self.seeds, self.unmeasured
        for study, n, cells in self.tuning_now:
            hours = _hours(study.trials)
            if not (hours and self.taken):
                unmeasured += 1
                continue
            # past the tuned rows' median it still has the candidate it is running (at least)
            tuning += max(median(self.taken) - n, 1) * median(hours)
            seeds += max(cells - 1, 0) * median(hours)  # its tuning seed's cell reuses a candidate
        if not (tuning or seeds):
            return (
                f"left: {unmeasured} configurations, none with a run timed yet to project from"
                if unmeasured
                else None
            )
        rest = (
            f"; {unmeasured} configuration{'s' if unmeasured > 1 else ''} with no run timed yet not counted"
        )
        return (
            f"left, projected from each configuration's own run times: ~{tuning + seeds:.1f} "
            f"worker-hours (tuning ~{tuning:.1f}, seed cells ~{seeds:.1f}){rest if unmeasured else ''}"
        )


def grid_progress(cells: list[RunConfig], tuned: bool, grid_study: str, storage) -> list[str]:
    """How far the grid study `grid_study` (its cells `cells`) has come in `storage`. `tuned`:
    the cells' rates come from the grid's tuning stage (else they are fixed in the cells)."""
    names = {s.study_name for s in optuna.get_all_study_summaries(storage)}

    def load(name: str) -> optuna.Study | None:
        return optuna.load_study(study_name=name, storage=storage) if name in names else None

    grid = load(grid_study)
    trials = grid.get_trials(deepcopy=False) if grid else []
    done_ids = {t.user_attrs.get("cell_id") for t in trials if done_trial(t)}
    members_of: dict[str, list[RunConfig]] = {}
    for cfg in cells:
        members_of.setdefault(cfg.tuning_key, []).append(cfg)
    # With a tuning stage, its configurations (a probe the grid lacks is tuned too, runs no seeds).
    groups = tuning.configurations(cells) if tuned else {k: m[0] for k, m in members_of.items()}
    lines, states, candidates, cells_done, left = [], [], 0, 0, _Left()
    for key, head in groups.items():
        members = members_of.get(key, [])
        study = load(tuning.study_name(grid_study, head)) if tuned else None
        if tuned:
            state, text, rates, n = _tuning_state(study, head)
            candidates += n
        else:
            state, text, rates = "rates fixed", "rates fixed in the grid file", head
        states.append(state)
        ids = [(rates.replace(seed=c.seed) if tuned else c).cell_id for c in members] if rates else []
        done = sum(i in done_ids for i in ids)
        cells_done += done
        if state == "tuned":
            left.tuned(study, [c for c, i in zip(members, ids) if i not in done_ids])
        elif state == "tuning":
            left.tuning_now.append((study, n, len(members)))
        elif state == "not started" or done < len(members):  # fixed rates: not projected
            left.unmeasured += 1
        seeds = f"cells {done} of {len(members)} done" if members else "no cells (tuned for the fallback)"
        lines.append(f"  {head.label:<32} {text}; {seeds}")
    counts = ", ".join(f"{states.count(s)} {s}" for s in STATES if s in states)
    found = f"; {candidates} tuning candidates done" if tuned else ""
    lines.append(
        f"{grid_study}: {len(groups)} configurations ({counts}{found}); "
        f"cells {cells_done} of {len(cells)} done"
    )
    if projection := left.line():
        lines.append(projection)
    check = load(grid_study + SUFFIX)
    if check is not None:
        n = sum(done_trial(t) for t in check.get_trials(deepcopy=False))
        lines.append(f"{grid_study}{SUFFIX}: epoch-sensitivity check, {n} cells done")
    return lines


def existing_storage(args):
    """The grid's storage for reading: a server, or the SQLite file when there is one; else an empty
    in-memory storage, so that looking creates no file (not even the runs directory)."""
    from pathlib import Path

    from bench import storage

    url = args.storage or storage.default_url(Path(args.runs_dir))
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        return optuna.storages.InMemoryStorage()
    storage.quiet_optuna()
    return storage.open_storage(url, Path(args.runs_dir))


def _names_in(storage, grid_study: str) -> set[str]:
    """The storage's study names and the cell ids its grid study has seen."""
    names = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    if grid_study not in names:
        return names
    grid = optuna.load_study(study_name=grid_study, storage=storage)
    return names | {t.user_attrs.get("cell_id") for t in grid.get_trials(deepcopy=False)}


def _footprint(cells: list[RunConfig], grid_study: str, tuned: bool) -> set[str]:
    """The study names (tuned) or cell ids (fixed rates) these cells leave in the storage."""
    if tuned:
        return {tuning.study_name(grid_study, g) for g in tuning.configurations(cells).values()}
    return {c.cell_id for c in cells}


def status_cells(
    cells: list[RunConfig], data_dir, grid_study: str, storage, tuned: bool
) -> tuple[list[RunConfig], list[str]]:
    """The cells with their target's protocol resolved as the run resolved it, never downloading:
    from the data files when they are here, else, per target, the real-data protocol whose studies
    the storage holds; and a line per target whose protocol came from the storage."""
    out, missing = list(cells), {}  # target -> positions of its unresolved cells
    for i, cfg in enumerate(cells):
        if cfg.protocol != "auto":
            continue  # already part of the cell's identity
        try:
            out[i] = cfg.replace(protocol=data.resolve_protocol(cfg.target, "auto", data_dir, download=False))
        except LorafitError:
            missing.setdefault(cfg.target, []).append(i)
    seen = _names_in(storage, grid_study) if missing else set()
    notes = []
    for target, where in missing.items():
        tries = {p: [cells[i].replace(protocol=p) for i in where] for p in REAL_PROTOCOLS}
        found = {p: len(_footprint(c, grid_study, tuned) & seen) for p, c in tries.items()}
        best = max(found, key=found.get)
        if not found[best]:
            raise LorafitError(
                f"--status: the {target} files are not here and the storage holds none of this grid's "
                "studies; pass --data-dir DIR (nothing has run yet, or check --runs-dir/--storage)"
            )
        also = [f"{n} of protocol {p}" for p, n in found.items() if n and p != best]
        notes.append(
            f"{target}: the data files are not here; protocol {best}, from the storage's studies"
            + (f" (it also holds {', '.join(also)}: pass --data-dir to decide)" if also else "")
        )
        for i, cfg in zip(where, tries[best], strict=True):
            out[i] = cfg
    return out, notes
