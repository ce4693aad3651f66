"""The leaderboard's columns, declared once.

A `Column` says where its value comes from (`metric`: a record metric aggregated over seeds by
`agg` into the aggregate's `key`), how the markdown table shows it (`header`, `align`, `cell`),
what it writes to the CSV (`csv`: names that carry their units), and what the legend says about it.
The main table, the CSV, the legend and the metric aggregations are all generated from `COLUMNS`,
so adding a column is one entry. Columns without a header are CSV-only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from bench.provenance import paths_named
from bench.reporting import evidence
from bench.reporting.fmt import (
    cell,
    fmt_acc,
    fmt_diff,
    fmt_params,
    fmt_prob,
    fmt_rates,
    num,
    pct,
    shown_shape,
)
from bench.reporting.stats import BOOTSTRAP_REPLICATES


@dataclass(frozen=True)
class Column:
    key: str  # the aggregate row's field this column shows (computed there from `metric`, if set)
    header: str | None = None  # the markdown table's header; None: CSV only
    align: str = "--:"
    cell: Callable[[pd.Series], str] | None = None  # default: the field as text
    csv: Callable[[pd.Series], dict[str, str]] | None = None  # default: {key: the number}
    metric: str | None = None  # a record metric (metrics.<name>) aggregated over seeds into `key`
    agg: str = "mean"  # how the seeds' values combine: any pandas aggregation
    legend: str | Callable[[pd.DataFrame], str] | None = None

    def text(self, row: pd.Series) -> str:
        return self.cell(row) if self.cell else str(row[self.key])

    def fields(self, row: pd.Series) -> dict[str, str]:
        return self.csv(row) if self.csv else {self.key: num(row[self.key])}

    def explain(self, df: pd.DataFrame) -> str | None:
        return self.legend(df) if callable(self.legend) else self.legend


def _dash(x: str) -> str:
    return x if x and x != "none" else "—"


def _notes(row: pd.Series) -> str:
    notes = []
    if row["n_diverged"]:
        notes.append(f"{row['n_diverged']} of {row['n_runs']} diverged")
    if row["n_failed"]:
        notes.append(f"{row['n_failed']} of {row['n_runs']} failed")
    if notes and row["error"]:
        err = " ".join(str(row["error"]).split())  # the table escapes it
        notes.append(f"first error: {err[:100] + '…' if len(err) > 100 else err}")
    paths = row.get("paths") or ()
    if len(paths) > 1:  # bf16 and fp32 round differently: say so where a row's runs mixed them
        notes.append(f"runs on {len(paths)} paths: {paths_named(paths)}")
    if row["n"] == 0:
        notes.insert(0, "**no result**")
    if evidence.fell_back(row):
        notes.insert(0, "**= the probe**: its tuning fell back to the probe (lr 0)")
    return "; ".join(notes)


def _acc_csv(r: pd.Series) -> dict[str, str]:
    seeds = sorted(r["seed_acc"])
    return {
        "runs": str(r["n_runs"]),
        "seeds_with_result": str(r["n"]),
        "failed": str(int(r["n_failed"])),
        "diverged": str(int(r["n_diverged"])),
        "seeds": ";".join(str(s) for s in seeds),
        "test_acc_per_seed_fraction": ";".join(num(r["seed_acc"][s]) for s in seeds),
        "test_acc_mean_fraction": num(r["acc_mean"]),
        "test_acc_sd_fraction": num(r["acc_sd"]),
        "test_acc_ci95_halfwidth_fraction": num(r["acc_ci"]),
    }


def _paired_csv(prefix: str) -> Callable[[pd.Series], dict[str, str]]:
    def fields(r: pd.Series) -> dict[str, str]:
        out = {f"{prefix}_reference": r[f"{prefix}_ref"] or ""}
        for stat, name in (
            ("n", "paired_seeds"),
            ("diff", "diff_mean_fraction"),
            ("lo", "diff_ci95_lo_fraction"),
            ("hi", "diff_ci95_hi_fraction"),
            ("p", "paired_t_p"),
        ):
            out[f"{prefix}_{name}"] = num(r[f"{prefix}_{stat}"])
        return out

    return fields


def _ledger(key: str, name: str, metric: str, agg: str) -> Column:
    """A parameter-ledger field: CSV only (the ledger has its own table), blank for records from
    before the ledger."""
    return Column(key, metric=metric, agg=agg, csv=lambda r: {name: num(r[key]) if r["has_ledger"] else ""})


def _rates_legend(df: pd.DataFrame) -> str:
    tuned = (
        "new head; tuned: chosen by the grid's tuning stage on the validation split among the same "
        "designed candidates for every configuration, each trained at the seeds' budget (see Tuning "
        "evidence; the record names its Optuna study), n trials: the candidates it evaluated; fixed: set "
        "in the grid file. "
        if df["selection"].map(evidence.is_design).any()
        else "new head; tuned: chosen by the grid's tuning stage on the validation split with the same "
        "budget for every configuration (the record names its Optuna study), fixed: set in the grid file. "
    )
    return (
        "Rates: the AdamW learning rates of the adapter (or, with nothing adapted, the backbone) and of the "
        + tuned
        + "LoRA scaling: alpha/rank"
        + (", alpha/√rank for rsLoRA rows" if df["rslora"].any() else "")
        + "; alpha = rank (scale 1) unless the grid set it (the seed post's adapter: alpha 1)."
    )


def _acc_legend(df: pd.DataFrame) -> str:
    return (
        "Test accuracy: mean over seeds ± the half-width of a 95% t-interval, t(0.975, n−1)·sd/√n, "
        "n = seeds with a result"
        + ("; **± n/a: a single seed gives no interval**" if (df["n"] == 1).any() else "")
        + "."
    )


def _share_legend(df: pd.DataFrame) -> str:
    full = df["full_params"].iloc[0]
    return (
        "% full: trainable parameters relative to full fine-tuning"
        + (f" ({int(full):,})" if not pd.isna(full) else "")
        + "."
    )


MERGED_LEGEND = (
    "Case-merged: accuracy when the 15 letters EMNIST bymerge merges (c i j k l m o p s u v w x y z) "
    "count as one class in either case, from the stored confusion matrices; — for targets other than "
    "byclass."
)
PAIRED_LEGEND = (
    "Δ vs full / head: mean over the seeds both have of (this row − the reference) in points ± the "
    "half-width of the paired 95% t-interval (scipy ttest_rel); the reference is the configuration of "
    "that method with the best validation accuracy (ref); (n=k): only k seeds pair."
)
FRONT_LEGEND = (
    f"P(front): share of {BOOTSTRAP_REPLICATES:,} paired bootstrap replicates over seeds (one draw "
    "of seeds per replicate, shared by every configuration; fixed RNG seed) in which the configuration "
    "is on that front."
)

COLUMNS: list[Column] = [
    Column(
        "setup",
        csv=lambda r: {
            "setup": r["setup"],
            "profile": r["profile"],
            "source": r["source"],
            "target": r["target"],
            "backbone": r["backbone"],
        },
    ),
    Column("position", "#", "---", csv=lambda r: {"position": str(r["position"])}),
    Column(
        "label",
        "configuration",
        "---",
        cell=lambda r: f"**{r['label']}**" if r["baseline"] else r["label"],
        csv=lambda r: {"configuration": r["label"]},
        legend="Baselines in bold.",
    ),
    Column("method", "method", "---", csv=lambda r: {"method": r["method"]}),
    Column(
        "placement",
        "placement",
        ":-:",
        cell=lambda r: r["placement"] if r["placement"] != "none" else "—",
        csv=lambda r: {"placement": r["placement"]},
    ),
    Column("rank", "rank", ":-:", cell=lambda r: str(r["rank"]) if r["rank"] else "—"),
    Column(
        "shape", "shape", ":-:", cell=lambda r: _dash(shown_shape(r)), csv=lambda r: {"shape": shown_shape(r)}
    ),
    Column(
        "policy",
        "policy",
        ":-:",
        csv=lambda r: {"policy": r["policy"], "alpha": num(r["alpha"])},
    ),
    Column(
        "lr",
        "rates: lr / head (mode)",
        cell=fmt_rates,
        csv=lambda r: {
            "lr": num(r["lr"]),
            "head_lr": num(r["head_lr"]),
            "rate_mode": r["tuning_mode"],
            "tuning_trials": num(r["tune_trials"]),
            "rslora": str(int(bool(r["rslora"]))),
            "baseline": str(int(r["baseline"])),
        },
        legend=_rates_legend,
    ),
    Column(
        "trainable_params",
        "trainable params (% full)",
        cell=fmt_params,
        csv=lambda r: {
            "trainable_params": num(r["trainable_params"]),
            "total_params": num(r["total_params"]),
            "trainable_params_percent_of_full": num(r["pct_full"]),
        },
        legend=_share_legend,
    ),
    Column("acc_mean", "test acc % ± 95% CI (n)", cell=fmt_acc, csv=_acc_csv, legend=_acc_legend),
    Column(
        "merged_acc_mean",
        "case-merged acc %",
        cell=lambda r: pct(r["merged_acc_mean"]),
        csv=lambda r: {"case_merged_acc_mean_fraction": num(r["merged_acc_mean"])},
        legend=MERGED_LEGEND,
    ),
    Column(
        "vs_full_diff",
        "Δ vs full, points (paired)",
        cell=lambda r: fmt_diff(r, "vs_full"),
        csv=_paired_csv("vs_full"),
        legend=PAIRED_LEGEND,
    ),
    Column(
        "vs_head_diff",
        "Δ vs head, points (paired)",
        cell=lambda r: fmt_diff(r, "vs_head"),
        csv=_paired_csv("vs_head"),
    ),
    Column(
        "bal_acc_mean",
        "balanced acc %",
        cell=lambda r: pct(r["bal_acc_mean"]),
        csv=lambda r: {"balanced_acc_mean_fraction": num(r["bal_acc_mean"])},
        metric="test_balanced_acc",
    ),
    Column(
        "source_before_mean",
        metric="source_acc_before",
        csv=lambda r: {"source_acc_before_mean_fraction": num(r["source_before_mean"])},
    ),
    Column(
        "source_after_mean",
        "source acc after %",
        cell=lambda r: pct(r["source_after_mean"]),
        csv=lambda r: {"source_acc_after_mean_fraction": num(r["source_after_mean"])},
        metric="source_acc_after",
        legend="Source acc after: the adapted network under the original source head (forgetting).",
    ),
    Column(
        "acc_per_1k",
        "acc %-pts / 1k params",
        cell=lambda r: "—" if pd.isna(r["acc_per_1k"]) else f"{100 * r['acc_per_1k']:.3f}",
        csv=lambda r: {"acc_points_per_1k_params": num(100 * r["acc_per_1k"])},
    ),
    Column(
        "train_s_mean",
        "train s",
        cell=lambda r: "—" if pd.isna(r["train_s_mean"]) else f"{r['train_s_mean']:.2f}",
        csv=lambda r: {"train_s_mean": num(r["train_s_mean"])},
        metric="train_s",
    ),
    _ledger("adapter_file_bytes", "adapter_file_bytes", "adapter_file_bytes", "max"),
    _ledger("trained_bytes", "trained_tensor_bytes", "adapter_bytes", "max"),
    _ledger("images_per_s_median", "train_images_per_s_median", "images_per_s", "median"),
    _ledger("peak_mem_mb_max", "peak_train_mem_mib_max", "peak_mem_mb", "max"),
    _ledger(
        "infer_unmerged_rel_median", "inference_unmerged_over_base_median", "infer_unmerged_rel", "median"
    ),
    _ledger("infer_merged_rel_median", "inference_merged_over_base_median", "infer_merged_rel", "median"),
    _ledger("ledger_images", "inference_timed_on_images", "ledger_images", "max"),
    # Time to accuracy (records from before it have none): medians over seeds.
    Column("epochs_trained_median", metric="epochs_trained", agg="median"),
    Column("epochs_to_99_median", metric="epochs_to_99", agg="median"),
    Column("images_to_99_median", metric="images_to_99", agg="median"),
    Column("seconds_to_99_median", metric="seconds_to_99", agg="median"),
    Column("selection", csv=evidence.csv_fields),
    Column(
        "pareto",
        "Pareto",
        ":-:",
        cell=lambda r: "✓" if r["pareto"] else "",
        csv=lambda r: {"pareto": str(int(r["pareto"]))},
        legend="Pareto ✓: no other configuration has at least its mean accuracy with at most its trainable "
        "parameters.",
    ),
    Column(
        "p_front",
        "P(front)",
        cell=lambda r: fmt_prob(r["p_front"]),
        csv=lambda r: {"p_front_probability": num(r["p_front"])},
        legend=FRONT_LEGEND,
    ),
    Column(
        "notes",
        "notes",
        "---",
        cell=_notes,
        csv=lambda r: {"error": " ".join(str(r["error"]).split()) if r["error"] else ""},
        legend="Diverged seeds count in the means (their best epoch before divergence is restored); failed "
        "seeds have no metrics.",
    ),
]


def metric_aggregations(columns: list[Column] | None = None) -> dict[str, tuple[str, str]]:
    """The aggregate's named aggregations the columns declare: key -> (metrics.<metric>, agg)."""
    return {c.key: (f"metrics.{c.metric}", c.agg) for c in (columns or COLUMNS) if c.metric}


def table(df: pd.DataFrame, columns: list[Column] | None = None) -> str:
    shown = [c for c in (columns or COLUMNS) if c.header]
    lines = ["| " + " | ".join(c.header for c in shown) + " |", "|" + "|".join(c.align for c in shown) + "|"]
    for i, (_, r) in enumerate(df.iterrows(), start=1):
        row = r.copy()
        row["position"] = i
        lines.append("| " + " | ".join(cell(c.text(row)) for c in shown) + " |")
    return "\n".join(lines)


def csv_rows(agg: pd.DataFrame, columns: list[Column] | None = None) -> list[dict]:
    """One dict per configuration and setup, in the markdown's order (column names carry the units)."""
    rows = []
    for _, part in agg.groupby("setup", sort=True):
        for i, (_, r) in enumerate(part.iterrows(), start=1):
            row = r.copy()
            row["position"] = i
            out: dict[str, str] = {}
            for c in columns or COLUMNS:
                out.update(c.fields(row))
            rows.append(out)
    return rows


def legend(df: pd.DataFrame, columns: list[Column] | None = None) -> list[str]:
    """The table's legend: each shown column's sentence, in the table's order."""
    texts = [c.explain(df) for c in (columns or COLUMNS) if c.header]
    return ["_" + " ".join(t for t in texts if t) + "_"]
