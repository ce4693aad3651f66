"""lorafit's command line: `python -m bench SUBCOMMAND` (or `lorafit-bench SUBCOMMAND`).

    run grid      the fixed ablation grid (studies/grid.toml) as an Optuna study
    study NAME    an Optuna study declared in studies/NAME.toml
    leaderboard   leaderboard.md (and charts) from the stored records
    charts        the charts alone
    report ID     the seed post's per-run analysis for one record
    perf          throughput ratios, suite vs the seed post's pipeline
    reproduce     rerun stored records here; does each reproduce bit for bit?

Errors a user can cause print one line on stderr and exit with status 2; a worker stopped by
`run grid --drain` exits with status 3, `run grid` with cells that failed or gave up with 1.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import shlex
import sys
from pathlib import Path

from bench.cli import common, data_dir_of, positive, resolved, runs_and_storage, target_of
from bench.drain import STATUS as DRAINED
from bench.drain import Drained
from lorafit.errors import LorafitError
from lorafit.train import pick_device

ROOT = Path(__file__).resolve().parent.parent
# The subcommands whose module brings its own arguments and main(args).
COMMANDS = {
    "leaderboard": ("bench.reporting.leaderboard", "leaderboard.md (and the charts) from the records"),
    "charts": ("bench.reporting.charts", "the charts alone (offline HTML, and PNG)"),
    "report": (
        "bench.reporting.run_report",
        "per-run analysis: classification report, confusion matrix, top confusions",
    ),
    "perf": ("bench.perf", "throughput: the suite vs the seed post's pipeline, ratios from one run"),
    "reproduce": ("bench.reproduce", "rerun stored records at this checkout: bit for bit or not"),
}
DEFAULT_GRID = ROOT / "studies" / "grid.toml"


class _Parser(argparse.ArgumentParser):
    """Bad command lines get one line on stderr (and status 2), like every other user error."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run the fixed ablation grid")
    run.add_argument("what", choices=("grid",), help="what to run (the grid)")
    run.add_argument("--profile", default="smoke", help="smoke | local | paper (default smoke)")
    run.add_argument("--grid", default=str(DEFAULT_GRID), help="grid file (default studies/grid.toml)")
    run.add_argument(
        "--seeds",
        type=positive("--seeds"),
        default=None,
        help="seeds per configuration (default: the profile's; smoke 1, local 5, paper 3); "
        "a later run with more seeds adds the missing ones",
    )
    run.add_argument(
        "--no-tune",
        action="store_true",
        help="fixed-rate mode: skip the grid's tuning stage and use its [lr] rates",
    )
    run.add_argument("--only", default=None, help="run only cells whose name contains this text")
    run.add_argument(
        "--backbone",
        default=None,
        help="run only the cells of these backbones (comma-separated, e.g. seed-cnn,residual-cnn)",
    )
    run.add_argument(
        "--tune-only",
        action="store_true",
        help="run the tuning stage and stop (the seeds run next time, here or on other machines)",
    )
    run.add_argument(
        "--budget-check",
        action="store_true",
        help="the epoch-sensitivity check: train the representative rows again at 2x the training "
        "budget, at the 1x selected rates (bench/sensitivity.py); run after the grid itself",
    )
    run.add_argument(
        "--drain",
        action="store_true",
        help="ask this grid's running workers (here or on any machine sharing the storage) to finish "
        "their current run and exit, then exit; workers started later are not affected",
    )
    run.add_argument(
        "--status",
        action="store_true",
        help="print how far this grid has come (tuning and cells, read from the storage) and exit; "
        "safe beside running workers",
    )
    common(run)

    study = sub.add_parser("study", help="run an Optuna study declared in studies/NAME.toml")
    study.add_argument("name", nargs="?", help="study name (a file in studies/) or a path to a .toml file")
    study.add_argument("--list", action="store_true", help="list the study files")
    study.add_argument("--best", action="store_true", help="print the best trial(s) as grid entries")
    study.add_argument(
        "--trials",
        type=positive("--trials"),
        default=None,
        help="total finished trials wanted (default: the file's)",
    )
    study.add_argument("--timeout", type=float, default=None, help="stop starting new trials after S seconds")
    study.add_argument("--profile", default=None, help="smoke | local | paper (default: the file's)")
    common(study)

    for command, (module, text) in COMMANDS.items():
        importlib.import_module(module).add_arguments(sub.add_parser(command, help=text))
    return parser


def grid_study(store, name: str):
    """The grid's own study (created on first use): one enqueued trial per cell."""
    import optuna

    # Cells are enqueued, never sampled: the cheap RandomSampler keeps Optuna from modelling them.
    study = optuna.create_study(
        study_name=name,
        storage=store,
        direction="maximize",
        load_if_exists=True,
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    study.set_user_attr("kind", "grid")
    return study


def cmd_run_grid(args) -> int:
    from bench import drain, driver, grid, profiles, storage, tuning
    from bench.context import Context
    from bench.plan import Cell

    profiles.profile(args.profile)
    watching = args.status or args.drain  # reads (or flags) the storage: no device, no data needed
    if not watching:
        pick_device(args.device)
    data_dir = Path(args.data_dir) if watching and args.data_dir else data_dir_of(args.data_dir)
    ctx = Context(Path(args.runs_dir), data_dir, args.device, args.cache_mb)
    spec = None if args.no_tune else grid.load_tuning(args.grid, args.profile)
    if args.tune_only and spec is None:
        raise LorafitError(f"--tune-only: the {args.profile} profile of this grid has no tuning stage")
    cells = grid.load_grid(args.grid, args.profile, args.seeds, target_of(args), tuned=spec is not None)
    if args.only:
        cells = [c for c in cells if args.only in c.name]
        if not cells:
            raise LorafitError(f"--only {args.only!r} matches no cell")
    if args.backbone:
        wanted = [b.strip() for b in args.backbone.split(",") if b.strip()]
        present = {c.backbone for c in cells}
        missing = [b for b in wanted if b not in present]
        if missing:
            raise LorafitError(
                f"--backbone: no cell of this grid uses {', '.join(missing)} on profile {args.profile}; "
                f"its backbones there: {', '.join(sorted(present))}"
            )
        cells = [c for c in cells if c.backbone in wanted]
    name = f"{Path(args.grid).stem}-{args.profile}"
    from bench.progress import existing_storage, grid_progress, status_cells

    store = existing_storage(args)
    if watching:  # never trains, claims, downloads or creates a file
        if args.drain:
            print(drain.request(store, name))
            return 0
        cells, notes = status_cells(cells, data_dir, name, store, spec is not None)
        print("\n".join([*notes, *grid_progress(cells, spec is not None, name, store)]))
        return 0
    drains = drain.requested(store, name)  # read before resolving: that may download for minutes
    cells = resolved(cells, ctx, args.profile)  # before anything is written
    runs, store = runs_and_storage(args)
    ctx.between_runs = drain.watcher(store, name, start=drains)
    n_configs = len({c.digest() for c in cells if c.seed == 0}) or len(cells)
    targets = ", ".join(sorted({f"{c.source} -> {c.target} ({c.protocol})" for c in cells}))
    print(
        f"grid {name}: {len(cells)} cells ({n_configs} configurations x "
        f"{len({c.seed for c in cells})} seeds), "
        f"profile {args.profile}, {targets}, device {ctx.torch_device}, "
        f"storage {storage.redact(args.storage or storage.default_url(runs))}",
        flush=True,
    )
    from bench import sensitivity
    from bench.provenance import path_note
    from bench.records import load_records

    # this grid's cells, its tuning stage's candidates and its epoch-sensitivity check
    earlier = [r for suffix in ("", "-tune", sensitivity.SUFFIX) for r in load_records(runs, name + suffix)]
    if note := path_note(earlier, {c.backbone for c in cells}, ctx.torch_device):
        print(note, flush=True)
    if spec is not None:
        print(
            f"tuning stage: {spec.candidates} designed candidates per configuration at the seeds' budget "
            f"(+ the probe's fallback, edge extensions, the neighbour rule), then the seeds at the "
            f"selected rates",
            flush=True,
        )
        # while other workers tune the rows it waits for, this worker runs the tuned rows' cells
        # (the grid's study opened once, not once per cell)
        opened = functools.cache(lambda: grid_study(store, name))
        meanwhile = None if args.tune_only else lambda ready: driver.run_one(opened(), ready, ctx)
        plan = tuning.tune_cells(
            cells,
            spec,
            ctx,
            name,
            store,
            show_progress=not args.no_progress,
            meanwhile=meanwhile,
        )
        if args.tune_only:
            print(f"grid {name}: tuning stage done; the seeds run with the same command without --tune-only")
            return 0
    else:
        plan = [Cell(c) for c in cells]
    if args.budget_check:
        plan = sensitivity.plan(plan, load_records(runs, name), name)
        name += sensitivity.SUFFIX
        print(
            f"epoch-sensitivity check {name}: {len(plan)} cells at {sensitivity.SCALE}x the budget",
            flush=True,
        )
    try:
        status = driver.run_grid(grid_study(store, name), plan, ctx, show_progress=not args.no_progress)
    except Drained as e:  # the request is counted on the 1x grid; name the study this ran
        raise Drained(name) from e
    counts = {s: list(status.values()).count(s) for s in sorted(set(status.values()))}
    print(
        f"grid {name}: "
        + ", ".join(f"{n} {s}" for s, n in counts.items())
        + f"; records in {runs / 'records' / name}"
    )
    # The leaderboard of the 1x study reads its check's records (<study>-2x) beside it.
    one_x = name.removesuffix(sensitivity.SUFFIX) if args.budget_check else name
    print(f"next: python -m bench leaderboard --runs-dir {shlex.quote(args.runs_dir)} --study {one_x}")
    return 0 if set(status.values()) <= {"done"} else 1


def _list_studies(store) -> int:
    """One line per study file, and the runs of it that the storage holds (by profile)."""
    import optuna

    from bench import studies

    stored = {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(store)} if store else {}
    for name in studies.study_files():
        try:
            _, spec = studies.load_study_file(name)
            line = spec.get("study", {}).get("description", "")
        except LorafitError as e:
            line = f"INVALID: {e}"
        runs = [f"{s} ({n} trials)" for s, n in sorted(stored.items()) if s.rsplit("-", 1)[0] == name]
        print(f"{name:<14} {line}" + (f"\n{'':<14} in storage: {', '.join(runs)}" if runs else ""))
    return 0


def _best_profile(name: str, spec: dict, args, store) -> str:
    """--best: the profile asked for, else the only profile this study has run under in the storage,
    else the file's default if it has run under it; otherwise a one-line error naming what exists."""
    import optuna

    if args.profile:
        return args.profile
    ran = sorted(
        s.study_name.rsplit("-", 1)[1]
        for s in optuna.get_all_study_summaries(store)
        if s.study_name.rsplit("-", 1)[0] == name and s.n_trials > 0
    )
    default = spec.get("study", {}).get("profile", "smoke")
    if default in ran or not ran:
        if not ran:
            raise LorafitError(
                f"study {name} has no trials in this storage yet; run `python -m bench study {name}` "
                f"(add --profile smoke to run it offline)"
            )
        return default
    if len(ran) == 1:
        return ran[0]
    raise LorafitError(f"study {name} has runs under profiles {', '.join(ran)}; pass --profile to pick one")


def cmd_study(args) -> int:
    import optuna

    from bench import profiles, studies
    from bench.context import Context
    from bench.trials import RunFailed

    if args.list:
        runs_db = Path(args.runs_dir) / "optuna.db"
        store = runs_and_storage(args)[1] if args.storage or runs_db.exists() else None
        return _list_studies(store)
    if not args.name:
        raise LorafitError("name a study (python -m bench study --list shows them)")
    name, spec = studies.load_study_file(args.name)
    s = spec.get("study", {})
    if args.best:
        runs, store = runs_and_storage(args)
        profile = _best_profile(name, spec, args, store)
        study = studies.create(name, spec, profile, store)
        print(studies.best_as_grid(name, spec, study, profile))
        return 0
    profile = args.profile or s.get("profile", "smoke")
    profiles.profile(profile)
    pick_device(args.device)
    ctx = Context(Path(args.runs_dir), data_dir_of(args.data_dir), args.device, args.cache_mb)
    base = target_of(args)
    resolved([studies.config_for(spec, studies.first_values(spec), profile, base)], ctx, profile)
    runs, store = runs_and_storage(args)
    study = studies.create(name, spec, profile, store)
    total = args.trials or s.get("trials", 20)
    already = studies.finished(study)
    print(
        f"study {study.study_name}: {already}/{total} trials finished; profile {profile}, "
        f"objectives {', '.join(s.get('objectives', ['val_acc']))}, sampler {s.get('sampler', 'tpe')}, "
        f"pruner {s.get('pruner', 'none')}",
        flush=True,
    )
    if already < total:
        objective = studies.objective_for(study, spec, profile, ctx, base=base)
        study.optimize(
            objective,
            n_trials=total - already,
            timeout=args.timeout,
            catch=(RunFailed,),
            show_progress_bar=not args.no_progress and sys.stderr.isatty(),
            callbacks=[
                optuna.study.MaxTrialsCallback(
                    total, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
                )
            ],
        )
    states = [t.state.name for t in study.get_trials(deepcopy=False)]
    print(
        f"study {study.study_name}: "
        + ", ".join(f"{states.count(k)} {k.lower()}" for k in sorted(set(states)))
    )
    if any(t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        print(studies.best_as_grid(name, spec, study, profile))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "threads", None):
            import torch

            torch.set_num_threads(args.threads)
        if args.command == "run":
            return cmd_run_grid(args)
        if args.command == "study":
            return cmd_study(args)
        if args.command in COMMANDS:
            return importlib.import_module(COMMANDS[args.command][0]).main(args)
    except LorafitError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Drained as e:
        print(
            f"grid {e}: stopped on request (--drain) between two runs; the same command resumes",
            file=sys.stderr,
        )
        return DRAINED
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
