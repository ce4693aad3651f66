"""The leaderboard's header (what was measured, on what, with how many seeds) and the legend."""

from __future__ import annotations

import pandas as pd
from scipy import stats

from bench.records import frame
from bench.reporting.aggregate import config_key, is_budget_check, median_halfwidth, setup_of
from bench.reporting.compute import compute_lines
from bench.reporting.fmt import fmt_p, values

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
    schedule = part["config.schedule"].fillna("cosine") if "config.schedule" in part else None
    if schedule is not None and schedule.eq("plateau").all():
        return (
            f"trained to a plateau (batch {batch}, patience {patience}, cap {values(part['config.epochs'])} "
            f"epochs)"
        )
    return f"{values(part['config.epochs'])} adaptation epochs (batch {batch}, patience {patience})"


def _precision(part: pd.DataFrame, rows: pd.DataFrame) -> str:
    per_config = part.groupby("key").size()
    lo, hi = per_config.min(), per_config.max()
    seeds = sorted(part["config.seed"].unique())
    half = median_halfwidth(rows)
    width = "n/a (no row has two seeds)" if pd.isna(half) else f"± {100 * half:.2f} points"
    return (
        f"{len(seeds)} seeds ({', '.join(str(s) for s in seeds)}; {lo if lo == hi else f'{lo}–{hi}'} per "
        f"configuration), paired across configurations; median 95% CI half-width of test accuracy over "
        f"the {len(rows)} rows: {width}"
    )


def _reuse_optimism(part: pd.DataFrame) -> str:
    """How far the seed cells that reuse their tuning run (the candidate the tuning stage selected on
    validation) sit from the same rows' freshly trained seeds: the selection's optimism, confounded
    with that seed's common effect on every row."""
    if "run.reused_from" not in part or "metrics.test_acc" not in part:
        return ""
    if not part["run.reused_from"].notna().any():
        return ""
    done = part[part["metrics.test_acc"].notna()]
    reused = done["run.reused_from"].notna()
    gaps = pd.concat(
        {
            kind: done[reused].groupby("key")[col].mean() - done[~reused].groupby("key")[col].mean()
            for kind, col in (("test", "metrics.test_acc"), ("val", "metrics.val_acc"))
        },
        axis=1,
    ).dropna()
    if len(gaps) < 2:
        return ""
    p = stats.ttest_1samp(gaps["test"], 0.0).pvalue
    return (
        f"; the seed cells that reuse their tuning run sit "
        f"{100 * gaps['test'].mean():+.2f} points from their rows' other seeds in test accuracy and "
        f"{100 * gaps['val'].mean():+.2f} in validation accuracy (mean over {len(gaps)} rows; "
        f"one-sample t-test of the test gaps, {fmt_p(p)}): the selection on validation pushes this "
        f"up, that seed's effect on every row moves it either way"
    )


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
        f"optuna {values(df['env.optuna'])}; git {values(df['run.git_sha'])}"
    )
    created = df["run.created_at"].dropna().sort_values()
    lines.append(
        f"- **When**: {created.iloc[0]} … {created.iloc[-1]}" if len(created) else "- **When**: unknown"
    )
    return lines
