"""`python -m bench reproduce`: rerun stored records at this checkout, and say for each whether
it reproduces bit for bit (the same validation curve, training losses and test accuracy).

What it is for: a record made from modified code (git sha ending "-dirty") cannot be rebuilt from
a commit; rerunning it at a clean one and getting the identical run shows which code made it.
Training is deterministic for a given machine, precision, thread count and library versions, so a
difference on a machine that differs in those is expected and said; on the same kind it is a
finding. The reruns' records go under OUTPUT/records (never under the runs directory's own
records, so no leaderboard reads them) with a summary.csv beside them.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pandas as pd
import torch

from bench.cli import add_data_dir, add_device, data_dir_of, positive
from bench.context import Context
from bench.provenance import git_sha
from bench.records import load_records, write_atomic
from bench.reporting.stats import paired
from bench.runner import run_cell
from lorafit.config import RunConfig
from lorafit.errors import LorafitError

# What decides the exact floating-point result of a run besides its RunConfig.
DETERMINING_ENV = ("device", "cpu", "bf16", "threads", "torch", "peft")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("ids", nargs="*", metavar="RUN_ID", help="records to rerun (id prefixes)")
    parser.add_argument("--runs-dir", default="runs", help="where the records are (default ./runs)")
    parser.add_argument("--study", default=None, help="only this study's records")
    parser.add_argument(
        "--dirty", action="store_true", help="only records made from modified code (sha ends -dirty)"
    )
    parser.add_argument("--output", default=None, help="where the reruns go (default RUNS/reproduced)")
    add_data_dir(parser)
    add_device(parser)
    parser.add_argument(
        "--threads",
        type=positive("--threads"),
        default=None,
        help="CPU threads (default: each record's own, since the thread count can change the result)",
    )


def selected(records: list[dict], ids: list[str], dirty: bool) -> list[dict]:
    chosen = [r for r in records if not ids or any(r["run"]["id"].startswith(i) for i in ids)]
    if dirty:
        chosen = [r for r in chosen if str(r["run"].get("git_sha", "")).endswith("-dirty")]
    return [r for r in chosen if r["run"]["status"] == "complete"]


def same_run(old: dict, new: dict) -> bool:
    """Bit for bit: every epoch's validation accuracy and training loss, and the test accuracy."""

    def trace(r: dict) -> list:
        return [(c["val_acc"], c["train_loss"]) for c in r["curve"]] + [r["metrics"].get("test_acc")]

    return new["run"]["status"] == "complete" and trace(old) == trace(new)


def env_differences(old: dict, new: dict) -> list[str]:
    return [
        f"{k} {old['env'].get(k)} -> {new['env'].get(k)}"
        for k in DETERMINING_ENV
        if old["env"].get(k) != new["env"].get(k)
    ]


def _kind(differences: str) -> str:
    """The environment change that can move a result; a field the original never recorded
    ("peft None -> 0.21.2") is not a change anyone can attribute."""
    return "; ".join(d for d in differences.split("; ") if d and " None -> " not in d)


def rerun_effects(rows: list[dict]) -> list[str]:
    """Per kind of environment change, over the reruns it made differ: rerun − original test
    accuracy, paired by record (same configuration, seed and data), in points: the mean with its
    95% t-interval and p, and the spread of single differences. Is the change systematic, or only
    the run-to-run divergence that any change of rounding starts?"""
    by_kind: dict[str, list[dict]] = {}
    for r in rows:
        if not r["bit_for_bit"] and r["test_acc"] is not None and r["test_acc_rerun"] is not None:
            by_kind.setdefault(_kind(r["env_differences"]) or "same environment", []).append(r)
    lines = []
    for kind, mine in sorted(by_kind.items()):
        new = {i: 100 * r["test_acc_rerun"] for i, r in enumerate(mine)}
        old = {i: 100 * r["test_acc"] for i, r in enumerate(mine)}
        d = paired(new, old)
        reruns = f"{d['n']} rerun" + ("" if d["n"] == 1 else "s")
        line = f"rerun - original test accuracy ({kind}; {reruns}): {d['diff']:+.2f} points"
        if d["n"] >= 2:
            spread = pd.Series(new) - pd.Series(old)
            line += (
                f" (95% CI {d['lo']:+.2f} to {d['hi']:+.2f}, paired t p {d['p']:.3f}; "
                f"single reruns {spread.min():+.2f} to {spread.max():+.2f}, sd {spread.std():.2f})"
            )
        lines.append(line)
    return lines


def _short(sha: str | None) -> str:
    if not sha:
        return "an unknown commit"  # made (or rerun) outside a git checkout
    return sha[:7] + ("-dirty" if sha.endswith("-dirty") else "")


def _copy_backbone(record: dict, runs: Path, ctx: Context) -> None:
    """The original pretrained backbone, so the rerun adapts the very same weights."""
    digest = (record.get("metrics") or {}).get("backbone")
    for suffix in (".pt", ".json"):
        source, target = runs / "backbones" / f"{digest}{suffix}", ctx.runs_dir / "backbones"
        if digest and source.is_file() and not (target / source.name).is_file():
            write_atomic(target / source.name, lambda tmp, source=source: shutil.copyfile(source, tmp))


def _earlier(summary: Path) -> pd.DataFrame:
    """The verdicts of earlier batches (read once per command)."""
    return pd.read_csv(summary) if summary.is_file() else pd.DataFrame(columns=["id"])


def _save(summary: Path, earlier: pd.DataFrame, rows: list[dict]) -> None:
    """Earlier batches' verdicts, then this batch's so far (a record rerun again keeps its latest)."""
    table = pd.DataFrame(rows)
    table = pd.concat([earlier[~earlier["id"].isin(table["id"])], table], ignore_index=True)
    write_atomic(summary, table.to_csv(index=False))


def main(args: argparse.Namespace) -> int:
    runs = Path(args.runs_dir)
    records = selected(load_records(runs, args.study), args.ids, args.dirty)
    if not records:
        raise LorafitError(
            f"no complete record under {runs / 'records'} matches; check the ids, --study, --dirty"
        )
    ctx = Context(
        Path(args.output) if args.output else runs / "reproduced",
        data_dir=data_dir_of(args.data_dir),
        device=args.device,
    )
    sha = git_sha()
    print(f"reproducing {len(records)} record{'' if len(records) == 1 else 's'} at {_short(sha)}")
    if sha is None:
        print("note: this code is not a git checkout, so a rerun here vouches for no commit")
    elif sha.endswith("-dirty"):
        print(
            "note: this checkout has uncommitted changes to lorafit/ or bench/, "
            "so a rerun here vouches for no commit"
        )
    rows, summary = [], ctx.runs_dir / "summary.csv"
    earlier = _earlier(summary)
    for old in records:
        _copy_backbone(old, runs, ctx)
        if args.threads is None and old["env"].get("threads"):
            torch.set_num_threads(old["env"]["threads"])
        cfg = ctx.resolve(RunConfig.from_dict(old["config"]))
        new = run_cell(cfg, ctx, old["run"]["study"], run_id=old["run"]["id"], with_ledger=False)
        same, differs = same_run(old, new), env_differences(old, new)
        verdict = "same" if same else "DIFFERENT" + (f" (expected: {', '.join(differs)})" if differs else "")
        print(f"  {old['run']['id']:<40} made at {_short(old['run']['git_sha'])}: {verdict}", flush=True)
        rows.append(
            {
                "id": old["run"]["id"],
                "study": old["run"]["study"],
                "git_sha": old["run"]["git_sha"],
                "reproduced_at": sha,
                "bit_for_bit": same,
                "env_differences": "; ".join(differs),
                "val_acc": old["metrics"].get("val_acc"),
                "val_acc_rerun": new["metrics"].get("val_acc"),
                "test_acc": old["metrics"].get("test_acc"),
                "test_acc_rerun": new["metrics"].get("test_acc"),
            }
        )
        _save(summary, earlier, rows)  # after every rerun, so an interrupted batch keeps its verdicts
    n_same = sum(r["bit_for_bit"] for r in rows)
    print(
        f"{n_same} of {len(rows)} reproduce bit for bit "
        f"(reruns in {ctx.runs_dir / 'records'}, verdicts in {summary})"
    )
    for line in rerun_effects(rows):
        print(line)
    return 0 if n_same == len(rows) else 1
