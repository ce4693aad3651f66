"""Records -> one row per (setup, configuration), from the stored records alone (pandas).

Each row: seeds, means, 95% t-intervals, trainable parameters, the Pareto flag and the
probability of being on the front under a paired bootstrap over seeds, paired differences to
full fine-tuning and to the linear probe, case-merged accuracy, and the tuning selection. The
statistics are bench.reporting.stats'; the summary's comparisons bench.reporting.comparisons'. No
markdown and no charts here: the leaderboard and the charts render what this module computes.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable

import numpy as np
import pandas as pd

from bench.provenance import path_of
from bench.records import frame
from bench.reporting.columns import metric_aggregations
from bench.reporting.stats import (
    BOOTSTRAP_REPLICATES,
    paired,
    pareto_front,
    pareto_probability,
    t_halfwidth,
)
from lorafit import adapters, metrics
from lorafit.backbones import DEFAULT as DEFAULT_BACKBONE
from lorafit.backbones import is_conv_placement
from lorafit.config import head_rate, identity, label
from lorafit.names import modernize

BASELINES = ("scratch", "full", "head", "residual")  # bold in the table: the reference points
# Metric columns every record may lack (failed runs): reindexed so aggregation never KeyErrors.
METRICS = (
    "test_acc",
    "val_acc",
    "test_balanced_acc",
    "source_acc_before",
    "source_acc_after",
    "trainable_params",
    "total_params",
    "train_s",
    "images_per_s",
    "peak_mem_mb",
    "adapter_file_bytes",
    "adapter_bytes",
    "infer_unmerged_rel",
    "infer_merged_rel",
    "train_images",
    "val_images",
    "test_images",
)
# The two references every row is compared with (paired, per seed): method -> column prefix.
REFERENCES = {"full": "vs_full", "head": "vs_head"}


# ---------------------------------------------------------------------------- identities
def config_key(record: dict) -> str:
    """A configuration's identity: its whole RunConfig except the seed (old spellings modernised)."""
    config = identity(modernize(record["config"]))
    return json.dumps({k: v for k, v in config.items() if k != "seed"}, sort_keys=True)


def setup_of(record: dict) -> str:
    """The data a record was measured on; configurations are only compared within one setup."""
    c = record["config"]
    protocol = record.get("env", {}).get("protocol") or c.get("protocol")
    # Sizes and epochs too: a study's shrunken trials are not ranked against grid cells.
    budget = f"{c.get('train_size') or 'all'} train images, {c.get('epochs')} epochs"
    network = c.get("backbone") or DEFAULT_BACKBONE
    return f"{c.get('profile')}: {c.get('source')} → {c.get('target')}, {network} ({protocol}; {budget})"


def family(method: str, placement: str, shape: str, policy: str, backbone: str = DEFAULT_BACKBONE) -> str:
    """The colour group in charts: the baseline's name, the seed post, or an adapter method by
    placement (with its conv shape and freeze policy when they differ from the default)."""
    if method in adapters.BASELINES:
        return method
    if method == "residual":
        return "seed post"
    name = f"{method} {placement}"
    if is_conv_placement(backbone, placement) and shape != "1x1":
        name += f" {shape}"
    if policy != "lora":
        name += f" ({policy})"
    return name


def method_family(method: str) -> str:
    """The colour of the accuracy-vs-parameters charts: the method itself (baselines by name, the
    seed post's residual adapter as "seed post"), whatever its placement, rank or policy."""
    return "seed post" if method == "residual" else method


def labels(out: pd.DataFrame) -> list[str]:
    """name-rN like the cell ids; configurations that still collide get their differing settings."""
    plain = [label(n, r) for n, r in zip(out["name"], out["rank"])]
    configs = [json.loads(k) for k in out["key"]]
    setups = list(out["setup"])
    result = list(plain)
    for i, name in enumerate(plain):
        twins = [j for j, (lab, s) in enumerate(zip(plain, setups)) if lab == name and s == setups[i]]
        if len(twins) > 1:
            differing = sorted(
                k for k in configs[i] if len({json.dumps(configs[j].get(k)) for j in twins}) > 1
            )
            result[i] = name + " " + " ".join(f"{k}={configs[i].get(k)}" for k in differing)
    return result


# ---------------------------------------------------------------------------- aggregation
def _first_valid(s: pd.Series):
    s = s.dropna()
    return s.iloc[0] if len(s) else None


def _merged_acc(record: dict) -> float:
    """Case-merged accuracy from the stored confusion matrix; NaN when the classes are not byclass."""
    analysis = record.get("analysis") or {}
    if not analysis.get("confusion") or not metrics.is_byclass(analysis.get("classes", ())):
        return np.nan
    return metrics.merged_accuracy(analysis["confusion"], analysis["classes"])


def is_tuning_trial(record: dict) -> bool:
    """Records of the tuning stage's trials (records/<grid>-tune/...): inputs to the sensitivity
    chart, never leaderboard rows."""
    return "-tune/" in (record["run"].get("study") or "")


def is_budget_check(record: dict) -> bool:
    """Records of the epoch-sensitivity check (bench.sensitivity): its own table, never rows."""
    return bool((record.get("tuning") or {}).get("budget_scale"))


def aggregate(records: Iterable[dict], replicates: int = BOOTSTRAP_REPLICATES) -> pd.DataFrame:
    """One row per (setup, configuration): seeds, status counts, means, CI, params, Pareto flag and
    probability, paired differences to the references, case-merged accuracy.

    Accuracies are fractions. Diverged seeds that still produced metrics (the best epoch before
    the divergence is restored) count in the means; failed seeds have no metrics and do not.
    `seed_acc` maps seed -> test accuracy (the mean if one seed has several records).
    Row order: setup, then test accuracy descending (configurations without any accuracy last),
    then trainable parameters, then label.
    """
    rows = (r for r in records if not (is_tuning_trial(r) or is_budget_check(r)))
    records = sorted(
        ({**r, "config": modernize(r["config"])} for r in rows),
        key=lambda r: (setup_of(r), config_key(r), r["config"].get("seed", 0), r["run"]["id"]),
    )
    if not records:
        return pd.DataFrame()
    df = frame(records)
    for m in dict.fromkeys(
        METRICS + tuple(v[0].removeprefix("metrics.") for v in metric_aggregations().values())
    ):  # numeric even when a column is all None (e.g. source accuracy of scratch runs)
        col = f"metrics.{m}"
        df[col] = pd.to_numeric(df[col], errors="coerce") if col in df else np.nan
    if "run.error" not in df:
        df["run.error"] = None
    df["key"] = [config_key(r) for r in records]
    df["setup"] = [setup_of(r) for r in records]
    df["failed"] = df["run.status"].eq("failed")
    df["diverged"] = df["run.status"].eq("diverged")
    df["acc"] = df["metrics.test_acc"]
    df["merged_acc"] = [_merged_acc(r) for r in records]
    # How the rates were chosen: records before the tuning stage carry no `tuning` (fixed rates).
    df["rslora"] = [bool(r["config"].get("rslora", False)) for r in records]
    df["tuning_mode"] = [(r.get("tuning") or {}).get("mode", "fixed") for r in records]
    df["tune_trials"] = [(r.get("tuning") or {}).get("trials", np.nan) for r in records]
    df["selection"] = [r.get("tuning") or {} for r in records]  # the same for every seed of a row
    df["head_lr"] = [head_rate(r["config"].get("lr"), r["config"].get("head_lr")) for r in records]
    # Records written before the parameter ledger have none of its fields (and another peak_mem_mb).
    df["config.backbone"] = [r["config"].get("backbone") or DEFAULT_BACKBONE for r in records]
    df["has_ledger"] = ["adapter_file_bytes" in (r.get("metrics") or {}) for r in records]
    df["path"] = [path_of(r) for r in records]

    g = df.groupby(["setup", "key"], sort=True)
    out = g.agg(
        name=("config.name", "first"),
        method=("config.method", "first"),
        placement=("config.placement", "first"),
        shape=("config.shape", "first"),
        rank=("config.rank", "first"),
        alpha=("config.alpha", "first"),
        policy=("config.policy", "first"),
        lr=("config.lr", "first"),
        head_lr=("head_lr", "first"),
        tuning_mode=("tuning_mode", "first"),
        tune_trials=("tune_trials", "first"),
        selection=("selection", "first"),
        rslora=("rslora", "first"),
        profile=("config.profile", "first"),
        source=("config.source", "first"),
        target=("config.target", "first"),
        backbone=("config.backbone", "first"),
        n_runs=("run.id", "size"),
        paths=("path", lambda s: tuple(sorted(Counter(s).items()))),
        n_failed=("failed", "sum"),
        n_diverged=("diverged", "sum"),
        error=("run.error", _first_valid),
        merged_acc_mean=("merged_acc", "mean"),
        trainable_params=("metrics.trainable_params", "max"),
        total_params=("metrics.total_params", "max"),
        has_ledger=("has_ledger", "all"),
        # Every column's own metric (bench.reporting.columns): the ledger's timings vary with the
        # machine's load, so they take the median over seeds.
        **metric_aggregations(),
    ).reset_index()
    out["seeds"] = g["config.seed"].agg(lambda s: tuple(sorted(s))).to_numpy()
    # A seed is one observation: n, the mean and the interval count seeds, not records (two grid
    # files sharing a configuration give one seed two records; the paired tests use their mean too).
    done = df[df["acc"].notna()]
    per_seed = done.groupby(["setup", "key", "config.seed"], sort=True)[["acc", "metrics.val_acc"]].mean()
    over_seeds = per_seed.groupby(level=["setup", "key"]).agg(
        n=("acc", "count"),
        acc_mean=("acc", "mean"),
        acc_sd=("acc", "std"),
        # validation accuracy (a split the test never sees): what comparisons choose a reference by
        val_mean=("metrics.val_acc", "mean"),
    )
    out = out.join(over_seeds, on=["setup", "key"])
    out["n"] = out["n"].fillna(0).astype(int)
    # seed -> test (and validation) accuracy: what paired differences pair
    for column, name in (("acc", "seed_acc"), ("metrics.val_acc", "seed_val")):
        by_seed = {k: {} for k in zip(out["setup"], out["key"])}
        for (setup, key, s), a in per_seed[column].dropna().items():
            by_seed[(setup, key)][int(s)] = float(a)
        out[name] = [by_seed[k] for k in zip(out["setup"], out["key"])]
    out["accs"] = [tuple(a[s] for s in sorted(a)) for a in out["seed_acc"]]  # seed order
    out["rank"] = out["rank"].fillna(0).astype(int)
    out["acc_ci"] = t_halfwidth(out["acc_sd"], out["n"])
    out["acc_lo"], out["acc_hi"] = out["acc_mean"] - out["acc_ci"], out["acc_mean"] + out["acc_ci"]
    out["label"] = labels(out)
    out["family"] = [
        family(*r)
        for r in out[["method", "placement", "shape", "policy", "backbone"]].itertuples(index=False)
    ]
    out["method_family"] = out["method"].map(method_family)
    out["baseline"] = out["method"].isin(BASELINES)
    out = out.sort_values(
        ["setup", "acc_mean", "trainable_params", "label"],
        ascending=[True, False, True, True],
        na_position="last",
        kind="mergesort",
    )
    out = out.reset_index(drop=True)

    # Relative size, the front and the paired differences only make sense within one setup.
    out["full_params"] = np.nan
    out["pareto"] = False
    out["p_front"] = np.nan
    for prefix in REFERENCES.values():
        out[f"{prefix}_ref"] = None
        for stat in ("n", "diff", "lo", "hi", "p"):
            out[f"{prefix}_{stat}"] = np.nan
    for idx in out.groupby("setup", sort=True).groups.values():
        part = out.loc[idx]
        out.loc[idx, "full_params"] = full_reference(part)
        out.loc[idx, "pareto"] = pareto_front(part, "trainable_params", "acc_mean")
        out.loc[idx, "p_front"] = pareto_probability(part, replicates)
        for method, prefix in REFERENCES.items():
            ref = reference(part, method)
            if ref is None:
                continue
            out.loc[idx, f"{prefix}_ref"] = ref["label"]
            for i in idx:
                if out.at[i, "label"] == ref["label"] or not out.at[i, "seed_acc"]:
                    continue
                for stat, v in paired(out.at[i, "seed_acc"], ref["seed_acc"]).items():
                    out.at[i, f"{prefix}_{stat}"] = v
    out["pareto"] = out["pareto"].astype(bool)
    out["pct_full"] = 100 * out["trainable_params"] / out["full_params"]
    out["acc_per_1k"] = out["acc_mean"] / (out["trainable_params"] / 1000)
    return out


def chosen_on_validation(rows: pd.DataFrame) -> pd.Series:
    """The row a comparison tests the others against: the highest mean validation accuracy. The
    test accuracies it is then compared on played no part in the choice, so picking the winner
    does not bias its tests; rows without a validation accuracy (older records) fall back to test."""
    score = rows["val_mean"].fillna(rows["acc_mean"])
    return rows.loc[score.sort_values(ascending=False, kind="mergesort").index[0]]


def reference(part: pd.DataFrame, method: str) -> pd.Series | None:
    """The row a method's comparisons use within one setup: its configuration with the best
    validation accuracy, or None when no configuration of that method has a result."""
    rows = part[part["method"].eq(method) & part["acc_mean"].notna()]
    return chosen_on_validation(rows) if len(rows) else None


def full_reference(df: pd.DataFrame) -> float:
    """100% for the relative-size column: full fine-tuning's trainable parameters, else the model size."""
    full = df.loc[df["method"].eq("full"), "trainable_params"].dropna()
    if len(full):
        return float(full.max())
    total = df["total_params"].dropna()
    return float(total.max()) if len(total) else np.nan


def median_halfwidth(part: pd.DataFrame) -> float:
    """The median over rows of the 95% CI half-width of test accuracy (rows with an interval)."""
    ci = part["acc_ci"].dropna()
    return float(ci.median()) if len(ci) else np.nan
