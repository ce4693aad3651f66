"""The leaderboard's header: what was measured, on what, with how many seeds (the legend is
columns.legend)."""

from __future__ import annotations

import pandas as pd

from bench.records import frame
from bench.reporting.aggregate import config_key, is_budget_check, median_halfwidth, setup_of
from bench.reporting.compute import compute_lines
from bench.reporting.fmt import values

PROTOCOL_NOTES = {
    "resplit": "EMNIST byclass test split re-partitioned 70/10/20 — "
    "not comparable to published byclass-test numbers",
    "official": "official EMNIST byclass train/test splits (validation carved from train)",
    "synthetic": "synthetic offline glyphs — a smoke test of the pipeline; "
    "the numbers say nothing about MNIST/EMNIST",
}


def _sizes(part: pd.DataFrame) -> str:
    cols = ["metrics.train_images", "metrics.val_images", "metrics.test_images"]
    triples = sorted({tuple(int(v) for v in t) for t in part[cols].dropna().itertuples(index=False)})
    return (
        ", ".join(f"{a:,} train / {b:,} validation / {c:,} test images" for a, b, c in triples)
        or "unknown sizes"
    )


def _what(part: pd.DataFrame) -> str:
    protocol = values(part["env.protocol"].fillna(part["config.protocol"]))
    notes = "".join(f" ({PROTOCOL_NOTES[p]})" for p in protocol.split(", ") if p in PROTOCOL_NOTES)
    return (
        f"profile {values(part['config.profile'])}; {values(part['config.source'])} → "
        f"{values(part['config.target'])}; protocol **{protocol}**{notes}; adapt on {_sizes(part)}; "
        f"{_budget(part)}, backbone pretrained "
        f"{values(part['config.pretrain_epochs'])} "
        f"epochs"
    )


def _budget(part: pd.DataFrame) -> str:
    """How long runs trained: a fixed cosine budget, or to a plateau (lorafit.budget)."""
    batch, patience = values(part["config.batch_size"]), values(part["config.patience"])
    # Only records that name their schedule are described by it (older ones: "N adaptation epochs").
    schedule = part.get("config.schedule", pd.Series(index=part.index, dtype=object))
    if schedule.eq("plateau").all():
        return (
            f"trained to a plateau (batch {batch}, patience {patience}, cap {values(part['config.epochs'])} "
            f"epochs{_stops(part)})"
        )
    if schedule.eq("cosine").all():
        stop = (
            "no early stopping"
            if part["config.patience"].fillna(0).eq(0).all()
            else f"early stopping after {patience} epochs without a better validation accuracy"
        )
        return (
            f"a {values(part['config.epochs'])}-epoch cosine schedule (batch {batch}, {stop}, the best "
            f"epoch's weights kept{_stops(part)})"
        )
    return f"{values(part['config.epochs'])} adaptation epochs (batch {batch}, patience {patience})"


def _stops(part: pd.DataFrame) -> str:
    """Why the runs stopped (their records' metrics.stop_reason), e.g. "; stopped: 135 on a plateau"."""
    if "metrics.stop_reason" not in part:
        return ""
    reasons = part["metrics.stop_reason"].dropna().value_counts().sort_index()
    if reasons.empty:
        return ""
    said = {
        "plateau": "on a plateau",
        "cap": "at the cap",
        "diverged": "diverged",
        "budget": "at the schedule's end",
        "patience": "early",
    }
    return "; stopped: " + ", ".join(f"{n} {said.get(r, r)}" for r, n in reasons.items())


# A half-width above this says a row needs more seeds before its differences are cited (the
# third edition's target for its main rows).
WIDE = 0.005


def _precision(part: pd.DataFrame, rows: pd.DataFrame) -> str:
    per_config = part.groupby("key").size()
    lo, hi = per_config.min(), per_config.max()
    seeds = sorted(part["config.seed"].unique())
    half = median_halfwidth(rows)
    width = "n/a (no row has two seeds)" if pd.isna(half) else f"± {100 * half:.2f} points"
    wide = rows[rows["acc_ci"].gt(WIDE)].sort_values("acc_ci", ascending=False)
    widest = ", ".join(f"{label} ± {100 * w:.2f}" for label, w in zip(wide["label"], wide["acc_ci"]))
    return (
        f"{len(seeds)} seeds ({', '.join(str(s) for s in seeds)}; {lo if lo == hi else f'{lo}–{hi}'} per "
        f"configuration), paired across configurations; median 95% CI half-width of test accuracy over "
        f"the {len(rows)} rows: {width}"
        + (f"; wider than ± {100 * WIDE:.2f} points: {widest}" if len(wide) else "")
    )


def _reuse_optimism(part: pd.DataFrame) -> str:
    """Where the seed whose cells reuse their tuning run (the candidate the tuning stage selected on
    validation) sits against the other seeds: each seed's mean gap over the rows to the same rows'
    other seeds. A seed's common effect on every row moves every seed's gap; the selection's
    optimism only the reusing seed's."""
    cols = ("run.reused_from", "metrics.test_acc", "metrics.val_acc")
    if any(c not in part for c in cols) or not part["run.reused_from"].notna().any():
        return ""
    done = part[part["metrics.test_acc"].notna()]
    cells = done.groupby(["key", "config.seed"])[["metrics.test_acc", "metrics.val_acc"]].mean()
    per_row = cells.groupby(level="key")
    n = per_row["metrics.test_acc"].transform("size")
    others = (per_row.transform("sum") - cells).div(n - 1, axis=0)
    gaps = (cells - others)[n.gt(1)].groupby(level="config.seed").mean() * 100
    reusing = sorted(done.loc[done["run.reused_from"].notna(), "config.seed"].unique())
    if len(reusing) != 1 or len(gaps) < 2 or reusing[0] not in gaps.index:
        return ""
    own, rest = gaps.loc[reusing[0]], gaps.drop(index=reusing[0])

    def spread(col: str) -> str:
        return f"{rest[col].min():+.2f} to {rest[col].max():+.2f}"

    return (
        f"; seed {reusing[0]}'s cells reuse their tuning run (selected on validation): against the "
        f"same rows' other seeds they sit {own['metrics.test_acc']:+.2f} points in test and "
        f"{own['metrics.val_acc']:+.2f} in validation accuracy; the other seeds' same gaps span "
        f"{spread('metrics.test_acc')} (test) and {spread('metrics.val_acc')} (validation)"
    )


def _peft(df: pd.DataFrame) -> str:
    """PEFT's versions, where the records say (older records did not; those count as unknown)."""
    if df["env.peft"].isna().all():
        return ""
    return f", peft {values(df['env.peft'].fillna('unknown'))}"


def header(records: list[dict], command: str, agg: pd.DataFrame, trials: list[dict] = ()) -> list[str]:
    """Title, regeneration command and "What, where, when"; `trials` (the tuning stage's records)
    count towards the compute line only."""
    df = frame(records)
    for col in (
        "env.device",
        "env.cpu",
        "env.gpu",
        "env.threads",
        "env.python",
        "env.torch",
        "env.torchvision",
        "env.optuna",
        "env.peft",
        "env.protocol",
        "run.git_sha",
        "run.created_at",
        "config.pretrain_epochs",
        "metrics.train_images",
        "metrics.val_images",
        "metrics.test_images",
    ):
        if col not in df:
            df[col] = None
    df["setup"] = [setup_of(r) for r in records]
    df["key"] = [config_key(r) for r in records]
    statuses = df["run.status"].value_counts().sort_index()
    checked = [is_budget_check(r) for r in records]
    rows = df[[not c for c in checked]].groupby(["setup", "key"]).ngroups
    again = f" (+ {sum(checked)} epoch-sensitivity runs at 2× the budget)" if any(checked) else ""
    lines = [
        "# Leaderboard",
        "",
        f"Generated from {len(records)} run records ({', '.join(f'{n} {s}' for s, n in statuses.items())}) "
        f"of {rows} configurations{again}; studies: {values(df['run.study'])}. "
        "Never edit by hand; regenerate with:",
        "",
        "```bash",
        command,
        "```",
        "",
        "## What, where, when",
        "",
    ]
    # The 2x runs train under another budget, so their setup differs: they are described by the
    # epoch-sensitivity table, and their cost by their 1x row's compute line.
    cost = compute_lines([*records, *trials])
    for setup, part in df[[not c for c in checked]].groupby("setup", sort=True):
        lines.append(f"- **What**: {_what(part)}")
        lines.append(f"- **Seeds**: {_precision(part, agg[agg['setup'].eq(setup)])}{_reuse_optimism(part)}")
        lines.append(f"- **Compute**: {cost.get(setup, 'no runs')}")
    gpu = values(df["env.gpu"]) if df["env.gpu"].notna().any() else "none"
    lines.append(
        f"- **Where**: device {values(df['env.device'])}; CPU {values(df['env.cpu'])} "
        f"({values(df['env.threads'])} thread{'' if values(df['env.threads']) == '1' else 's'} per run); "
        f"GPU {gpu}; Python {values(df['env.python'])}, "
        f"torch {values(df['env.torch'])}, torchvision {values(df['env.torchvision'])}, "
        f"optuna {values(df['env.optuna'])}{_peft(df)}; git {values(df['run.git_sha'])}"
    )
    created = df["run.created_at"].dropna().sort_values()
    lines.append(
        f"- **When**: {created.iloc[0]} … {created.iloc[-1]}" if len(created) else "- **When**: unknown"
    )
    return lines
