"""leaderboard.md and leaderboard.csv from the stored records alone: `python -m bench leaderboard`.

One row per configuration (the RunConfig minus its seed): test accuracy as a mean with a 95%
t-interval over seeds, paired differences to full fine-tuning and the linear probe, trainable
parameters against full fine-tuning, the Pareto flag and its bootstrap probability, a generated
summary with Holm-adjusted paired tests, and links to the charts. The statistics come from
`bench.aggregate`; this module only renders them. Deterministic: the same records give
byte-identical files (nothing from the clock or the filesystem order goes in; every table is
sorted explicitly).
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import shlex
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from bench import charts, evidence
from bench.aggregate import (
    BOOTSTRAP_REPLICATES,
    CONV_PLACEMENTS,
    aggregate,
    comparisons,
    config_key,
    is_tuning_trial,
    median_halfwidth,
    setup_of,
)
from bench.records import frame, load_records, write_atomic
from lorafit.errors import LorafitError

PROTOCOL_NOTES = {
    "resplit": "EMNIST byclass test split re-partitioned 70/10/20 — "
    "not comparable to published byclass-test numbers",
    "official": "official EMNIST byclass train/test splits (validation carved from train)",
    "synthetic": "synthetic offline glyphs — a smoke test of the pipeline; "
    "the numbers say nothing about MNIST/EMNIST",
}
COMMAND_PREFIX = "python -m bench leaderboard"


# ------------------------------------------------------------------------------- formatting
def pct(x: float, digits: int = 2) -> str:
    return "—" if pd.isna(x) else f"{100 * x:.{digits}f}"


def fmt_acc(row: pd.Series, unit: str = "") -> str:
    """'41.25 ± 3.10 (n=3)' in percent (unit '%': '41.25 ± 3.10% (n=3)'); one seed has no
    interval ('± n/a')."""
    if pd.isna(row["acc_mean"]):
        return "—"
    if pd.isna(row["acc_ci"]):
        return f"{100 * row['acc_mean']:.2f}{unit} ± n/a (n={row['n']})"
    return f"{100 * row['acc_mean']:.2f} ± {100 * row['acc_ci']:.2f}{unit} (n={row['n']})"


def fmt_diff(row: pd.Series, prefix: str) -> str:
    """A paired difference in points: '+1.23 ± 0.45'; '(n=2)' when fewer seeds pair than the row has."""
    if row[f"{prefix}_ref"] is None or pd.isna(row["acc_mean"]):
        return "—"
    if row["label"] == row[f"{prefix}_ref"]:
        return "ref"
    n = int(row[f"{prefix}_n"])
    if n == 0:
        return "— (no common seed)"
    text = f"{100 * row[f'{prefix}_diff']:+.2f}"
    text += (
        " ± n/a"
        if pd.isna(row[f"{prefix}_lo"])
        else f" ± {50 * (row[f'{prefix}_hi'] - row[f'{prefix}_lo']):.2f}"
    )
    return text + (f" (n={n})" if n < row["n"] else "")


def fmt_num(x: float, spec: str = ".2f") -> str:
    """A number in `spec`, or — when missing."""
    return "—" if pd.isna(x) else format(x, spec)


def fmt_prob(p: float) -> str:
    return fmt_num(p)


def fmt_p(p: float, name: str = "p") -> str:
    """'p = 0.012', 'p < 0.001', 'p n/a'."""
    return f"{name} n/a" if pd.isna(p) else f"{name} < 0.001" if p < 0.001 else f"{name} = {p:.3f}"


def fmt_share(p: float) -> str:
    if pd.isna(p):
        return "—"
    return f"{p:.1f}%" if p >= 10 else f"{p:.2f}%" if p >= 0.1 else f"{p:.3f}%"


def _count(x: float) -> str:
    return "?" if pd.isna(x) else f"{int(x):,}"


def fmt_params(row: pd.Series) -> str:
    if pd.isna(row["trainable_params"]):
        return "—"
    return f"{_count(row['trainable_params'])} ({fmt_share(row['pct_full'])})"


def _cell(text) -> str:
    """Markdown-table-safe text (errors can hold pipes and newlines)."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _notes(row: pd.Series) -> str:
    notes = []
    if row["n_diverged"]:
        notes.append(f"{row['n_diverged']} of {row['n_runs']} diverged")
    if row["n_failed"]:
        notes.append(f"{row['n_failed']} of {row['n_runs']} failed")
    if notes and row["error"]:
        err = " ".join(str(row["error"]).split())  # table() escapes it
        notes.append(f"first error: {err[:100] + '…' if len(err) > 100 else err}")
    if row["n"] == 0:
        notes.insert(0, "**no result**")
    if evidence.fell_back(row):
        notes.insert(0, "**= the probe**: its tuning fell back to the probe (lr 0)")
    return "; ".join(notes)


def shown_shape(row: pd.Series) -> str:
    """The adapter shape, only where it means something (conv placements)."""
    return row["shape"] if row["placement"] in CONV_PLACEMENTS else ""


TABLE_HEAD = [
    "#",
    "configuration",
    "method",
    "placement",
    "rank",
    "shape",
    "policy",
    "rates: lr / head (mode)",
    "trainable params (% full)",
    "test acc % ± 95% CI (n)",
    "case-merged acc %",
    "Δ vs full, points (paired)",
    "Δ vs head, points (paired)",
    "balanced acc %",
    "source acc after %",
    "acc %-pts / 1k params",
    "train s",
    "Pareto",
    "P(front)",
    "notes",
]
TABLE_ALIGN = ["---"] * 3 + [":-:"] * 4 + ["--:"] * 10 + [":-:", "--:", "---"]


def fmt_rates(row: pd.Series) -> str:
    """'3.2e-03 / 1.1e-02 (tuned, 8 trials)': the adapter's (or backbone's) rate and the head's.
    The probe trains only its head: one rate."""
    head = row["head_lr"] if not pd.isna(row["head_lr"]) else row["lr"]
    rates = f"{head:.2g}" if row["method"] == "head" else f"{row['lr']:.2g} / {head:.2g}"
    if row["tuning_mode"] == "tuned":
        trials = "" if pd.isna(row["tune_trials"]) else f", {int(row['tune_trials'])} trials"
        return f"{rates} (tuned{trials})"
    return f"{rates} (fixed)"


def table(df: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(TABLE_HEAD) + " |", "|" + "|".join(TABLE_ALIGN) + "|"]
    for i, row in enumerate(df.itertuples(index=False), start=1):
        r = pd.Series(row._asdict())
        label = f"**{r['label']}**" if r["baseline"] else r["label"]
        cells = [
            str(i),
            label,
            r["method"],
            r["placement"] if r["placement"] != "none" else "—",
            str(r["rank"]) if r["rank"] else "—",
            shown_shape(r) or "—",
            r["policy"],
            fmt_rates(r),
            fmt_params(r),
            fmt_acc(r),
            pct(r["merged_acc_mean"]),
            fmt_diff(r, "vs_full"),
            fmt_diff(r, "vs_head"),
            pct(r["bal_acc_mean"]),
            pct(r["source_after_mean"]),
            "—" if pd.isna(r["acc_per_1k"]) else f"{100 * r['acc_per_1k']:.3f}",
            "—" if pd.isna(r["train_s_mean"]) else f"{r['train_s_mean']:.2f}",
            "✓" if r["pareto"] else "",
            fmt_prob(r["p_front"]),
            _notes(r),
        ]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- CSV
def _num(x) -> str:
    """Plain, locale-free numbers; empty for missing. 12 significant digits (deterministic)."""
    if x is None or pd.isna(x):
        return ""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else format(float(x), ".12g")


def csv_rows(agg: pd.DataFrame) -> list[dict]:
    """One dict per configuration and setup, in the markdown's order (column names carry the units)."""
    rows = []
    for setup, part in agg.groupby("setup", sort=True):
        for i, (_, r) in enumerate(part.iterrows(), start=1):
            seeds = sorted(r["seed_acc"])
            row = {
                "setup": setup,
                "profile": r["profile"],
                "source": r["source"],
                "target": r["target"],
                "position": i,
                "configuration": r["label"],
                "method": r["method"],
                "placement": r["placement"],
                "rank": r["rank"],
                "shape": shown_shape(r),
                "policy": r["policy"],
                "alpha": _num(r["alpha"]),
                "lr": _num(r["lr"]),
                "head_lr": _num(r["head_lr"]),
                "rate_mode": r["tuning_mode"],
                "tuning_trials": _num(r["tune_trials"]),
                "rslora": int(bool(r["rslora"])),
                "baseline": int(r["baseline"]),
                "trainable_params": _num(r["trainable_params"]),
                "total_params": _num(r["total_params"]),
                "trainable_params_percent_of_full": _num(r["pct_full"]),
                "runs": r["n_runs"],
                "seeds_with_result": r["n"],
                "failed": int(r["n_failed"]),
                "diverged": int(r["n_diverged"]),
                "seeds": ";".join(str(s) for s in seeds),
                "test_acc_per_seed_fraction": ";".join(_num(r["seed_acc"][s]) for s in seeds),
                "test_acc_mean_fraction": _num(r["acc_mean"]),
                "test_acc_sd_fraction": _num(r["acc_sd"]),
                "test_acc_ci95_halfwidth_fraction": _num(r["acc_ci"]),
                "case_merged_acc_mean_fraction": _num(r["merged_acc_mean"]),
                "balanced_acc_mean_fraction": _num(r["bal_acc_mean"]),
                "source_acc_before_mean_fraction": _num(r["source_before_mean"]),
                "source_acc_after_mean_fraction": _num(r["source_after_mean"]),
                "acc_points_per_1k_params": _num(100 * r["acc_per_1k"]),
                "train_s_mean": _num(r["train_s_mean"]),
            }
            ledger = {  # blank for records from before the ledger
                "adapter_file_bytes": r["adapter_file_bytes"],
                "trained_tensor_bytes": r["trained_bytes"],
                "train_images_per_s_median": r["images_per_s_median"],
                "peak_train_mem_mib_max": r["peak_mem_mb_max"],
                "inference_unmerged_over_base_median": r["infer_unmerged_rel_median"],
                "inference_merged_over_base_median": r["infer_merged_rel_median"],
            }
            row.update({k: _num(v) if r["has_ledger"] else "" for k, v in ledger.items()})
            for prefix in ("vs_full", "vs_head"):
                row[f"{prefix}_reference"] = r[f"{prefix}_ref"] or ""
                for stat, name in (
                    ("n", "paired_seeds"),
                    ("diff", "diff_mean_fraction"),
                    ("lo", "diff_ci95_lo_fraction"),
                    ("hi", "diff_ci95_hi_fraction"),
                    ("p", "paired_t_p"),
                ):
                    row[f"{prefix}_{name}"] = _num(r[f"{prefix}_{stat}"])
            row.update(evidence.csv_fields(r))
            row.update(
                {
                    "pareto": int(r["pareto"]),
                    "p_front_probability": _num(r["p_front"]),
                    "error": " ".join(str(r["error"]).split()) if r["error"] else "",
                }
            )
            rows.append(row)
    return rows


def render_csv(agg: pd.DataFrame) -> str:
    rows = csv_rows(agg)
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


# --------------------------------------------------------------------------------- summary
def _describe(row: pd.Series) -> str:
    return (
        f"**{row['label']}** at {fmt_acc(row, '%')} test accuracy with {_count(row['trainable_params'])} "
        f"trainable parameters ({fmt_share(row['pct_full'])} of full fine-tuning's)"
    )


def _ci(c: pd.Series) -> str:
    """'+1.10 to +4.86': a comparison row's 95% interval of the difference, in points."""
    return f"{100 * c['lo']:+.2f} to {100 * c['hi']:+.2f}"


def _versus(c: pd.Series) -> str:
    """'+2.98 points (95% CI +1.10 to +4.86; p = 0.012, Holm p = 0.048)' for one comparison row."""
    text = f"{100 * c['diff']:+.2f} points"
    if c["n"] < 2:
        return text + f" on {c['n']} common seed, no test"
    return f"{text} (95% CI {_ci(c)}; {fmt_p(c['p'])}, {fmt_p(c['p_holm'], 'Holm p')})"


def _test_note(comp: pd.DataFrame) -> str:
    tested = comp[comp["p"].notna()]
    if tested.empty:
        return "No comparison below has two common seeds, so none is tested."
    lo, hi = int(tested["n"].min()), int(tested["n"].max())
    seeds = f"{lo}" if lo == hi else f"{lo}–{hi}"
    return (
        f"Comparisons: differences are means of per-seed differences (pairs share the seed), "
        f"paired t-test over {seeds} seeds, Holm-adjusted over {len(tested)} comparisons; "
        f"the 95% CIs are not adjusted."
    )


def summary(df: pd.DataFrame, comp: pd.DataFrame | None = None) -> list[str]:
    """One sentence per question, for the configurations of one setup."""
    done = df[df["acc_mean"].notna()]
    if done.empty:
        return ["No configuration produced a test accuracy (every seed failed)."]
    lines = [f"Best configuration overall: {_describe(done.iloc[0])}."]  # df is sorted by accuracy
    full_n = df["full_params"].iloc[0]
    for share in (1, 10):
        under = done[done["pct_full"] < share]
        if pd.isna(full_n):
            continue
        if under.empty:
            lines.append(
                f"Best under {share}% of the full model's trainable parameters "
                f"(< {full_n * share / 100:,.0f}): "
                f"none of the configurations is that small."
            )
        else:
            lines.append(
                f"Best under {share}% of the full model's trainable parameters: {_describe(under.iloc[0])}."
            )

    comp = comparisons(df) if comp is None else comp
    if len(comp):
        lines.append(_test_note(comp))
    rows = done.set_index("label")
    seed = done[done["method"].eq("seed")]
    seed_comp = comp[comp["kind"].eq("seed")]
    if not seed.empty and seed_comp.empty:
        s = seed.iloc[0]
        lines.append(
            f"The seed post's setup, {_describe(s)}, has no LoRA configuration with at most "
            f"its {_count(s['trainable_params'])} trainable parameters to compare with."
        )
    for _, c in seed_comp.iterrows():
        b, s = rows.loc[c["a"]], rows.loc[c["b"]]
        lines.append(
            f"The seed post's setup (**{s.name}**) reaches {fmt_acc(s, '%')} with "
            f"{_count(s['trainable_params'])} trainable parameters; the best LoRA configuration with at "
            f"most that many, **{b.name}** ({_count(b['trainable_params'])}), reaches "
            f"{fmt_acc(b, '%')}: {_versus(c)}."
        )
    for _, c in comp[comp["kind"].eq("pretraining")].iterrows():
        f, s = rows.loc[c["a"]], rows.loc[c["b"]]
        lines.append(
            f"Full fine-tuning of the pretrained model reaches {fmt_acc(f, '%')} against {fmt_acc(s, '%')} "
            f"for the same network trained from scratch: {_versus(c)}."
        )

    # Forgetting: how much of the source task each family keeps (adapted network, source head).
    kept = done[done["source_after_mean"].notna()]
    if not kept.empty:
        before = kept["source_before_mean"].dropna()
        parts = []
        for method, group in kept.groupby("method", sort=True):
            lo, hi = group["source_after_mean"].min(), group["source_after_mean"].max()
            parts.append(
                f"{method} {100 * lo:.2f}%" if lo == hi else f"{method} {100 * lo:.2f}–{100 * hi:.2f}%"
            )
        start = f" (the pretrained backbone: {100 * before.mean():.2f}%)" if not before.empty else ""
        lines.append(
            f"Source-task accuracy kept after adaptation{start}, range over configurations: "
            f"{'; '.join(parts)}. Frozen-backbone methods keep it by construction except for "
            f"what their adapters change; scratch has no source head."
        )

    # Conv placements against proj at the same rank and freeze policy.
    placed = comp[comp["kind"].eq("placement")]
    for group, cs in placed.groupby("group", sort=True):
        placement, shape, policy = group.split(" ")
        parts = "; ".join(
            f"r{rows.loc[c['a'], 'rank']} {pct(rows.loc[c['a'], 'acc_mean'])} vs "
            f"{pct(rows.loc[c['b'], 'acc_mean'])}%: {_versus(c)}"
            for _, c in cs.iterrows()
        )
        ahead = int((cs["diff"] > 0).sum())
        what = f"LoRA on {placement} ({shape}" + (f", policy {policy})" if policy != "lora" else ")")
        lines.append(
            f"{what} vs LoRA on proj at equal rank: {parts} — {placement} ahead at {ahead} of "
            f"{len(cs)} rank{'s' if len(cs) > 1 else ''}."
        )
    # Other adapter methods against LoRA at the nearest budget, per placement.
    for placement, cs in comp[comp["kind"].eq("budget")].groupby("group", sort=True):
        ahead = cs[(cs["lo"] > 0)]["a"].tolist()
        behind = cs[(cs["hi"] < 0)]["a"].tolist()
        lines.append(
            f"Methods vs LoRA at the nearest budget on {placement} ({len(cs)} comparisons, table "
            f"below): ahead with a 95% CI above zero: {', '.join(ahead) or 'none'}; behind with one "
            f"below zero: {', '.join(behind) or 'none'}."
        )
    lines.append(evidence.containment_line(evidence.containment(df)))
    return lines


BUDGET_HEAD = (
    "placement",
    "method configuration",
    "trainable params",
    "test acc %",
    "LoRA at the nearest budget",
    "its trainable params",
    "its test acc %",
    "Δ points (paired, 95% CI)",
    "p (Holm)",
)


def budget_table(part: pd.DataFrame, comp: pd.DataFrame) -> list[str]:
    """Each non-LoRA adapter configuration against LoRA at its budget (`comp`: the setup's
    aggregate.comparisons, as the summary prints them)."""
    comp = comp[comp["kind"].eq("budget")]
    if comp.empty:
        return []
    rows = part.set_index("label")
    order = comp.assign(_p=[rows.loc[a, "trainable_params"] for a in comp["a"]])
    order = order.sort_values(["group", "_p", "a"], kind="mergesort")
    lines = ["| " + " | ".join(BUDGET_HEAD) + " |", "|---|---|--:|--:|---|--:|--:|--:|--:|"]
    for _, c in order.iterrows():
        a, b = rows.loc[c["a"]], rows.loc[c["b"]]
        diff = f"{100 * c['diff']:+.2f}"
        if c["n"] >= 2:
            diff += f" ({_ci(c)})"
        cells = [
            c["group"],
            c["a"],
            _count(a["trainable_params"]),
            fmt_acc(a),
            c["b"],
            _count(b["trainable_params"]),
            fmt_acc(b),
            diff,
            fmt_num(c["p_holm"], ".3g"),
        ]
        lines.append("| " + " | ".join(_cell(x) for x in cells) + " |")
    return [
        "## Methods at matched budgets",
        "",
        "Each adapter method against native LoRA on the same placement and freeze policy with the nearest "
        "number of trainable parameters (log scale; the counts include the new head's). Differences "
        "are per seed (paired); Holm over every comparison of the summary.",
        "",
        *lines,
        "",
    ]


LEDGER_HEAD = (
    "configuration",
    "trainable params",
    "adapter file KiB",
    "trained tensors KiB",
    "train images/s",
    "peak train MiB",
    "inference unmerged / base",
    "merged / base",
)


def ledger_table(part: pd.DataFrame) -> list[str]:
    """What each configuration costs to store, train and run (medians over seeds)."""
    part = part[part["has_ledger"]]
    if part.empty:  # records from before the ledger
        return []
    lines = ["| " + " | ".join(LEDGER_HEAD) + " |", "|---|--:|--:|--:|--:|--:|--:|--:|"]
    for _, r in part.sort_values(["trainable_params", "label"], kind="mergesort").iterrows():
        cells = [
            r["label"],
            _count(r["trainable_params"]),
            fmt_num(r["adapter_file_bytes"] / 1024, ",.1f"),
            fmt_num(r["trained_bytes"] / 1024, ",.1f"),
            fmt_num(r["images_per_s_median"], ",.0f"),
            fmt_num(r["peak_mem_mb_max"], ",.0f"),
            fmt_num(r["infer_unmerged_rel_median"]),
            fmt_num(r["infer_merged_rel_median"]),
        ]
        lines.append("| " + " | ".join(_cell(x) for x in cells) + " |")
    return [
        "## Parameter ledger",
        "",
        "Adapter file: `torch.save` of the adapter's tensors alone; trained tensors: every tensor the run"
        " trained (adapter, new head, unfrozen layers), what a task stores beside the shared backbone. "
        "Train images/s: median over seeds, with the frozen prefix's features cached where the backbone "
        "is frozen (so proj adapters train fastest). Peak train MiB: on CUDA the allocator's peak; on CPU"
        " how far the process's anonymous resident memory rose while training (a lower bound: memory an "
        "earlier run freed is reused), both including the frozen prefix's cached features (e.g. conv1's "
        "outputs when conv2 is the first adapted layer). Inference: images/s of the adapted model "
        "unmerged and merged over the same model without its adapter, 1,024 test images, best of 3 "
        "interleaved rounds, median over seeds (— where there is no adapter, or it cannot merge). Timings"
        " come from the run's own worker, so other work on the machine adds noise to them.",
        "",
        *lines,
        "",
    ]


# --------------------------------------------------------------------------------- markdown
def _values(s: pd.Series) -> str:
    vals = sorted({str(v) for v in s.dropna() if str(v) not in ("", "None")})
    return ", ".join(vals) if vals else "unknown"


def _sizes(part: pd.DataFrame) -> str:
    cols = ["metrics.train_images", "metrics.val_images", "metrics.test_images"]
    triples = sorted({tuple(int(v) for v in t) for t in part[cols].dropna().itertuples(index=False)})
    return (
        ", ".join(f"{a:,} train / {b:,} validation / {c:,} test images" for a, b, c in triples)
        or "unknown sizes"
    )


def _what(part: pd.DataFrame) -> str:
    protocol = _values(part["env.protocol"].fillna(part["config.protocol"]))
    notes = "".join(f" ({PROTOCOL_NOTES[p]})" for p in protocol.split(", ") if p in PROTOCOL_NOTES)
    return (
        f"profile {_values(part['config.profile'])}; {_values(part['config.source'])} → "
        f"{_values(part['config.target'])}; protocol **{protocol}**{notes}; adapt on {_sizes(part)}; "
        f"{_values(part['config.epochs'])} adaptation epochs (batch {_values(part['config.batch_size'])}, "
        f"patience {_values(part['config.patience'])}), backbone pretrained "
        f"{_values(part['config.pretrain_epochs'])} "
        f"epochs"
    )


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


def header(records: list[dict], command: str, agg: pd.DataFrame) -> list[str]:
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
    lines = [
        "# Leaderboard",
        "",
        f"Generated from {len(records)} run records ({', '.join(f'{n} {s}' for s, n in statuses.items())}) "
        f"of {df.groupby(['setup', 'key']).ngroups} configurations; studies: {_values(df['run.study'])}. "
        "Never edit by hand; regenerate with:",
        "",
        "```bash",
        command,
        "```",
        "",
        "## What, where, when",
        "",
    ]
    for setup, part in df.groupby("setup", sort=True):
        lines.append(f"- **What**: {_what(part)}")
        lines.append(f"- **Seeds**: {_precision(part, agg[agg['setup'].eq(setup)])}")
    gpu = _values(df["env.gpu"]) if df["env.gpu"].notna().any() else "none"
    lines.append(
        f"- **Where**: device {_values(df['env.device'])}; CPU {_values(df['env.cpu'])} "
        f"({_values(df['env.threads'])} thread{'' if _values(df['env.threads']) == '1' else 's'} per run); "
        f"GPU {gpu}; Python {_values(df['env.python'])}, "
        f"torch {_values(df['env.torch'])}, torchvision {_values(df['env.torchvision'])}, "
        f"optuna {_values(df['env.optuna'])}; git {_values(df['run.git_sha'])}"
    )
    created = df["run.created_at"].dropna().sort_values()
    lines.append(
        f"- **When**: {created.iloc[0]} … {created.iloc[-1]}" if len(created) else "- **When**: unknown"
    )
    return lines


RATES_DESIGN = (
    "new head; tuned: chosen by the grid's tuning stage on the validation split among the same "
    "designed candidates for every configuration, each trained at the seeds' budget (see Tuning "
    "evidence; the record names its Optuna study), n trials: the candidates it evaluated; fixed: set "
    "in the grid file. "
)
RATES_FIRST = (  # records of the first tuning protocol (pruned TPE trials on a subset)
    "new head; tuned: chosen by the grid's tuning stage on the validation split with the same budget "
    "for every configuration (the record names its Optuna study), fixed: set in the grid file. "
)


def legend(df: pd.DataFrame) -> list[str]:
    lines = [
        "Test accuracy: mean over seeds ± the half-width of a 95% t-interval, t(0.975, n−1)·sd/√n, "
        "n = seeds with a result"
        + ("; **± n/a: a single seed gives no interval**" if (df["n"] == 1).any() else "")
        + ".",
        "Case-merged: accuracy when the 15 letters EMNIST bymerge merges (c i j k l m o p s u v w x y z) "
        "count as one class in either case, from the stored confusion matrices; — for targets other than "
        "byclass.",
        "Δ vs full / head: mean over the seeds both have of (this row − the reference) in points ± the "
        "half-width of the paired 95% t-interval (scipy ttest_rel); the reference is the most accurate "
        "configuration of that method (ref); (n=k): only k seeds pair.",
        "% full: trainable parameters relative to full fine-tuning"
        + (f" ({_count(df['full_params'].iloc[0])})" if not pd.isna(df["full_params"].iloc[0]) else "")
        + ".",
        "Pareto ✓: no other configuration has at least its mean accuracy with at most its trainable "
        "parameters.",
        f"P(front): share of {BOOTSTRAP_REPLICATES:,} paired bootstrap replicates over seeds (one draw of "
        "seeds per replicate, shared by every configuration; fixed RNG seed) in which the configuration is "
        "on that front.",
        "Rates: the AdamW learning rates of the adapter (or, with nothing adapted, the backbone) and of the "
        + (RATES_DESIGN if df["selection"].map(evidence.is_design).any() else RATES_FIRST)
        + "LoRA scaling: alpha/rank"
        + (", alpha/√rank for rsLoRA rows" if df["rslora"].any() else "")
        + "; alpha = rank (scale 1) unless the grid set it (the seed post's adapter: alpha 1).",
        "Baselines in bold. Source acc after: the adapted network under the original source head "
        "(forgetting). Diverged seeds count in the means (their best epoch before divergence is restored); "
        "failed seeds have no metrics.",
    ]
    return ["_" + " ".join(lines) + "_"]


def chart_section(chart_links: Iterable[str | Path], csv_link: str | None = None) -> list[str]:
    """One line per chart (its files grouped by name), then the accuracy-vs-parameters PNG inline."""
    by_stem: dict[str, list[str]] = {}
    for link in chart_links:
        by_stem.setdefault(Path(link).stem, []).append(Path(link).as_posix())
    lines = (
        ["", "## Data and charts", "", f"- Every column of every table, machine-readable: [CSV]({csv_link})"]
        if csv_link
        else ([] if not by_stem else ["", "## Charts", ""])
    )
    if not by_stem:
        return lines
    for stem, links in by_stem.items():
        files = " · ".join(f"[{Path(link).suffix.lstrip('.').upper()}]({link})" for link in links)
        lines.append(f"- {charts.TITLES.get(stem, stem)}: {files}")
    missing = [t for stem, t in charts.TITLES.items() if stem not in by_stem]
    if missing:
        lines.append(f"- Not drawn (the records lack what they need): {'; '.join(missing)}")
    png = [link for link in by_stem.get("acc_vs_params", []) if link.endswith(".png")]
    if png:
        lines += ["", f"![{charts.TITLES['acc_vs_params']}]({png[0]})"]
    return lines


def render_markdown(
    records: list[dict],
    command: str,
    chart_links: Iterable[str | Path] = (),
    csv_link: str | None = None,
    agg: pd.DataFrame | None = None,
) -> str:
    """The whole leaderboard. chart_links: chart file paths relative to the output file, in display order;
    csv_link: the CSV's path relative to it; agg: aggregate(records), if already computed."""
    if not records:
        raise LorafitError("no records to put on a leaderboard; run `python -m bench run grid` first")
    records = sorted(records, key=lambda r: (r["run"]["id"], r["run"].get("study") or ""))
    agg = aggregate(records) if agg is None else agg
    lines = header(records, command, agg)
    setups = list(agg["setup"].unique())
    for setup in setups:
        part = agg[agg["setup"].eq(setup)]
        comp = comparisons(part)  # the summary and the matched-budget table print the same ones
        suffix = f" — {setup}" if len(setups) > 1 else ""
        lines += [
            "",
            f"## Results{suffix}",
            "",
            table(part),
            "",
            *legend(part),
            "",
            f"## Summary{suffix}",
            "",
        ] + [f"- {s}" for s in summary(part, comp)]
        extra = (
            budget_table(part, comp)
            + evidence.tuning_table(part)
            + evidence.containment_table(evidence.containment(part))
            + ledger_table(part)
        )
        if extra:
            lines += ["", *extra[:-1]]
    lines += chart_section(chart_links, csv_link)
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs-dir", default="runs", help="where the records are (default ./runs)")
    parser.add_argument(
        "--output",
        default=None,
        help="markdown file to write (default RUNS/leaderboard.md); the CSV goes beside it",
    )
    parser.add_argument("--study", default=None, help="only this study's records (default: every study)")
    parser.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="only seeds 0..N-1 (whole paired seeds, e.g. while a longer run is still adding seeds)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="overwrite an output file generated from other records (another --runs-dir/--study)",
    )


def output_path(args: argparse.Namespace) -> Path:
    return Path(args.output) if args.output else Path(args.runs_dir) / "leaderboard.md"


def command_line(args: argparse.Namespace) -> str:
    """The command that regenerates the file, paths exactly as given."""
    parts = [
        "python",
        "-m",
        "bench",
        "leaderboard",
        "--runs-dir",
        args.runs_dir,
        "--output",
        str(output_path(args)),
    ]
    if args.study:
        parts += ["--study", args.study]
    if args.seeds is not None:
        parts += ["--seeds", str(args.seeds)]
    return shlex.join(parts)


def generated_from(text: str) -> tuple[str, str | None] | None:
    """(runs dir, study) named by a leaderboard's regeneration command; None if the text has none."""
    if not text.startswith("# Leaderboard"):
        return None
    line = next((line for line in text.splitlines() if line.startswith(COMMAND_PREFIX)), None)
    if line is None:
        return None
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    try:
        known, _ = parser.parse_known_args(shlex.split(line)[len(COMMAND_PREFIX.split()) :])
    except (SystemExit, ValueError):
        return None
    return known.runs_dir, known.study


def check_overwrite(output: Path, args: argparse.Namespace) -> None:
    """Refuse (one line) to replace a leaderboard generated from other records, unless --force."""
    if args.force or not output.exists():
        return
    origin = generated_from(output.read_text(errors="replace"))
    if origin is None:
        raise LorafitError(
            f"{output} exists and is not a leaderboard this command wrote; "
            "pass another --output, or --force to overwrite it"
        )
    runs, study = origin
    same_runs = (
        os.path.normpath(runs) == os.path.normpath(args.runs_dir)
        or Path(runs).resolve() == Path(args.runs_dir).resolve()
    )
    if not same_runs or study != args.study:
        was = f"--runs-dir {runs}" + (f" --study {study}" if study else "")
        now = f"--runs-dir {args.runs_dir}" + (f" --study {args.study}" if args.study else "")
        raise LorafitError(
            f"{output} was generated from other records ({was}, not {now}); "
            "pass another --output, or --force to replace it"
        )


def main(args: argparse.Namespace) -> int:
    runs = Path(args.runs_dir)
    records = load_records(runs, args.study)
    if not records:
        where = runs / "records" / args.study if args.study else runs / "records"
        raise LorafitError(
            f"no records under {where}; run `python -m bench run grid` first"
            + (" (or check --study)" if args.study else "")
        )
    output = output_path(args)
    csv_path = output.with_suffix(".csv")
    check_overwrite(output, args)
    chart_dir = charts.default_out(runs, args.study)
    records = sorted(records, key=lambda r: (r["run"]["id"], r["run"].get("study") or ""))
    # The tuning stage's trials feed the sensitivity chart, never the table.
    trials = load_records(runs, f"{args.study}-tune") if args.study else []
    records, trials = (
        [r for r in records if not is_tuning_trial(r)],
        trials + [r for r in records if is_tuning_trial(r)],
    )
    if args.seeds is not None:
        if args.seeds < 1:
            raise LorafitError(f"--seeds must be >= 1, got {args.seeds}")
        kept = [r for r in records if r["config"].get("seed", 0) < args.seeds]
        if len(kept) < len(records):
            left = len(records) - len(kept)
            print(f"leaderboard: {left} records of seeds >= {args.seeds} left out (--seeds)")
        records = kept
    if not records:
        raise LorafitError(
            f"only tuning-stage records under {runs / 'records'}; the grid's cells have not run yet"
        )
    agg = aggregate(records)
    try:
        chart_paths = charts.render(records + trials, chart_dir, agg)
        links = [os.path.relpath(p, output.parent) for p in chart_paths]
        md = render_markdown(
            records, command_line(args), links, os.path.relpath(csv_path, output.parent), agg
        )
        write_atomic(csv_path, render_csv(agg))
        write_atomic(output, md)
    except OSError as e:
        raise LorafitError(
            f"cannot write {e.filename or output} ({e.strerror}); pass a writable --output / --runs-dir"
        ) from None
    print(
        f"leaderboard: {len(agg)} configurations from {len(records)} records -> {output}, {csv_path}; "
        f"{len(chart_paths)} chart files in {chart_dir}"
    )
    return 0
