"""leaderboard.md from the stored records alone: `python -m bench leaderboard`.

One row per configuration (the RunConfig minus its seed), test accuracy as a mean with a 95%
t-interval over seeds, trainable parameters against full fine-tuning, a Pareto flag, a generated
summary, and links to the charts. Deterministic: the same records give a byte-identical file
(nothing from the clock or the filesystem order goes in; every table is sorted explicitly).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
from scipy import stats

from lorafit.errors import LorafitError

from bench.records import frame, load_records, write_atomic

BASELINES = ("scratch", "full", "head", "seed")
CONV_PLACEMENTS = ("conv1", "conv2", "conv3", "convs", "all")  # where an adapter shape means something
PROTOCOL_NOTES = {
    "resplit": "EMNIST byclass test split re-partitioned 70/10/20 — not comparable to published byclass-test numbers",
    "official": "official EMNIST byclass train/test splits (validation carved from train)",
    "synthetic": "synthetic offline glyphs — a smoke test of the pipeline; the numbers say nothing about MNIST/EMNIST",
}
CHART_TITLES = {
    "acc_vs_params": "Test accuracy vs trainable parameters",
    "acc_per_param": "Test accuracy per 1k trainable parameters",
    "rank_sweep": "LoRA rank sweep: test accuracy vs rank per placement",
    "per_class": "Per-class test accuracy: best LoRA vs full fine-tuning",
}
# Metric columns every record may lack (failed runs): reindexed so aggregation never KeyErrors.
METRICS = ("test_acc", "test_balanced_acc", "source_acc_before", "source_acc_after", "trainable_params",
           "total_params", "train_s", "train_images", "val_images", "test_images")


# ------------------------------------------------------------------------------- aggregation
def config_key(record: dict) -> str:
    """A configuration's identity: its whole RunConfig except the seed."""
    return json.dumps({k: v for k, v in record["config"].items() if k != "seed"}, sort_keys=True)


def setup_of(record: dict) -> str:
    """The data a record was measured on; configurations are only compared within one setup."""
    c = record["config"]
    protocol = record.get("env", {}).get("protocol") or c.get("protocol")
    # Sizes and epochs too: a study's shrunken trials are not ranked against grid cells.
    budget = f"{c.get('train_size') or 'all'} train images, {c.get('epochs')} epochs"
    return f"{c.get('profile')}: {c.get('source')} → {c.get('target')} ({protocol}; {budget})"


def family(method: str, placement: str, shape: str, policy: str) -> str:
    """The colour group in charts: the baseline's name, or LoRA by placement (shape, policy)."""
    if method != "lora":
        return "seed post" if method == "seed" else method
    name = f"lora {placement}"
    if placement in CONV_PLACEMENTS and shape != "1x1":
        name += f" {shape}"
    if policy != "lora":
        name += f" ({policy})"
    return name


def t_halfwidth(sd: pd.Series | float, n: pd.Series | int, level: float = 0.95) -> pd.Series | float:
    """Half-width of the t-interval for a mean: t(1-(1-level)/2, n-1) * sd / sqrt(n); NaN when n < 2."""
    n_arr = np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        q = stats.t.ppf(0.5 + level / 2, np.where(n_arr >= 2, n_arr - 1, np.nan))
        half = q * np.asarray(sd, dtype=float) / np.sqrt(n_arr)
    return pd.Series(half, index=n.index) if isinstance(n, pd.Series) else float(half)


def pareto_front(df: pd.DataFrame, x: str, y: str) -> pd.Series:
    """True for rows no other row dominates (x no larger and y no smaller, one strictly).

    Minimises x (trainable parameters) and maximises y (accuracy); rows with a missing x or y
    are never on the front. Equal points are all kept.
    """
    valid = df[x].notna() & df[y].notna()
    xs, ys = df.loc[valid, x].to_numpy(float), df.loc[valid, y].to_numpy(float)
    dominated = ((xs[None, :] <= xs[:, None]) & (ys[None, :] >= ys[:, None])
                 & ((xs[None, :] < xs[:, None]) | (ys[None, :] > ys[:, None]))).any(axis=1)
    front = pd.Series(False, index=df.index)
    front[valid] = ~dominated
    return front


def _first_valid(s: pd.Series):
    s = s.dropna()
    return s.iloc[0] if len(s) else None


def aggregate(records: Iterable[dict]) -> pd.DataFrame:
    """One row per (setup, configuration): seeds, status counts, means, CI, params, Pareto flag.

    Accuracies are fractions. Diverged seeds that still produced metrics (the best epoch before
    the divergence is restored) count in the means; failed seeds have no metrics and do not.
    Row order: setup, then test accuracy descending (configurations without any accuracy last),
    then trainable parameters, then label.
    """
    records = sorted(records, key=lambda r: (setup_of(r), config_key(r), r["config"].get("seed", 0), r["run"]["id"]))
    if not records:
        return pd.DataFrame()
    df = frame(records)
    for m in METRICS:  # numeric even when a column is all None (e.g. source accuracy of scratch runs)
        col = f"metrics.{m}"
        df[col] = pd.to_numeric(df[col], errors="coerce") if col in df else np.nan
    if "run.error" not in df:
        df["run.error"] = None
    df["key"] = [config_key(r) for r in records]
    df["setup"] = [setup_of(r) for r in records]
    df["failed"] = df["run.status"].eq("failed")
    df["diverged"] = df["run.status"].eq("diverged")
    df["acc"] = df["metrics.test_acc"]

    g = df.groupby(["setup", "key"], sort=True)
    out = g.agg(
        name=("config.name", "first"), method=("config.method", "first"),
        placement=("config.placement", "first"), shape=("config.shape", "first"),
        rank=("config.rank", "first"), alpha=("config.alpha", "first"), policy=("config.policy", "first"),
        lr=("config.lr", "first"), profile=("config.profile", "first"),
        n_runs=("run.id", "size"), n=("acc", "count"),
        n_failed=("failed", "sum"), n_diverged=("diverged", "sum"), error=("run.error", _first_valid),
        acc_mean=("acc", "mean"), acc_sd=("acc", "std"),
        bal_acc_mean=("metrics.test_balanced_acc", "mean"),
        source_before_mean=("metrics.source_acc_before", "mean"),
        source_after_mean=("metrics.source_acc_after", "mean"),
        trainable_params=("metrics.trainable_params", "max"), total_params=("metrics.total_params", "max"),
        train_s_mean=("metrics.train_s", "mean"),
    ).reset_index()
    out["seeds"] = g["config.seed"].agg(lambda s: tuple(sorted(s))).to_numpy()
    out["accs"] = g["acc"].agg(lambda s: tuple(s.dropna())).to_numpy()  # per seed, seed order
    out["rank"] = out["rank"].fillna(0).astype(int)
    out["acc_ci"] = t_halfwidth(out["acc_sd"], out["n"])
    out["acc_lo"], out["acc_hi"] = out["acc_mean"] - out["acc_ci"], out["acc_mean"] + out["acc_ci"]
    out["label"] = _labels(out)
    out["family"] = [family(*r) for r in out[["method", "placement", "shape", "policy"]].itertuples(index=False)]
    out["baseline"] = out["method"].isin(BASELINES)

    # Relative size and the Pareto front only make sense within one setup.
    out["full_params"] = np.nan
    out["pareto"] = False
    for setup, idx in out.groupby("setup", sort=True).groups.items():
        part = out.loc[idx]
        out.loc[idx, "full_params"] = full_reference(part)
        out.loc[idx, "pareto"] = pareto_front(part, "trainable_params", "acc_mean")
    out["pareto"] = out["pareto"].astype(bool)
    out["pct_full"] = 100 * out["trainable_params"] / out["full_params"]
    out["acc_per_1k"] = out["acc_mean"] / (out["trainable_params"] / 1000)
    out = out.sort_values(["setup", "acc_mean", "trainable_params", "label"],
                          ascending=[True, False, True, True], na_position="last", kind="mergesort")
    return out.reset_index(drop=True)


def full_reference(df: pd.DataFrame) -> float:
    """100% for the relative-size column: full fine-tuning's trainable parameters, else the model size."""
    full = df.loc[df["method"].eq("full"), "trainable_params"].dropna()
    if len(full):
        return float(full.max())
    total = df["total_params"].dropna()
    return float(total.max()) if len(total) else np.nan


def _labels(out: pd.DataFrame) -> list[str]:
    """name-rN like the cell ids; configurations that still collide get their differing settings."""
    labels = [f"{n}-r{r}" if r else str(n) for n, r in zip(out["name"], out["rank"])]
    configs = [json.loads(k) for k in out["key"]]
    result = list(labels)
    for i, label in enumerate(labels):
        twins = [j for j, (l, s) in enumerate(zip(labels, out["setup"])) if l == label and s == out["setup"][i]]
        if len(twins) > 1:
            differing = sorted(k for k in configs[i] if len({json.dumps(configs[j].get(k)) for j in twins}) > 1)
            result[i] = label + " " + " ".join(f"{k}={configs[i].get(k)}" for k in differing)
    return result


# ------------------------------------------------------------------------------- formatting
def pct(x: float, digits: int = 2) -> str:
    return "—" if pd.isna(x) else f"{100 * x:.{digits}f}"


def fmt_acc(row: pd.Series, unit: str = "") -> str:
    """'41.25 ± 3.10 (n=3)' in percent (unit '%': '41.25 ± 3.10% (n=3)'); one seed has no interval ('± n/a')."""
    if pd.isna(row["acc_mean"]):
        return "—"
    if pd.isna(row["acc_ci"]):
        return f"{100 * row['acc_mean']:.2f}{unit} ± n/a (n={row['n']})"
    return f"{100 * row['acc_mean']:.2f} ± {100 * row['acc_ci']:.2f}{unit} (n={row['n']})"


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
    return "; ".join(notes)


def table(df: pd.DataFrame) -> str:
    head = ["#", "configuration", "method", "placement", "rank", "shape", "policy",
            "trainable params (% full)", "test acc % ± 95% CI (n)", "balanced acc %",
            "source acc after %", "acc %-pts / 1k params", "train s", "Pareto", "notes"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 3 + [":-:"] * 4 + ["--:"] * 6 + [":-:", "---"]) + "|"]
    for i, row in enumerate(df.itertuples(index=False), start=1):
        r = pd.Series(row._asdict())
        conv = r["placement"] in CONV_PLACEMENTS
        label = f"**{r['label']}**" if r["baseline"] else r["label"]
        cells = [str(i), label, r["method"], r["placement"] if r["placement"] != "none" else "—",
                 str(r["rank"]) if r["rank"] else "—", r["shape"] if conv else "—", r["policy"],
                 fmt_params(r), fmt_acc(r), pct(r["bal_acc_mean"]), pct(r["source_after_mean"]),
                 "—" if pd.isna(r["acc_per_1k"]) else f"{100 * r['acc_per_1k']:.3f}",
                 "—" if pd.isna(r["train_s_mean"]) else f"{r['train_s_mean']:.2f}",
                 "✓" if r["pareto"] else "", _notes(r)]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------- summary
def _describe(row: pd.Series) -> str:
    return (f"**{row['label']}** at {fmt_acc(row, '%')} test accuracy with {_count(row['trainable_params'])} "
            f"trainable parameters ({fmt_share(row['pct_full'])} of full fine-tuning's)")


def _versus(a: pd.Series, b: pd.Series) -> str:
    """'a vs b: +x.xx points (Welch t-test p = 0.123)' — the test only when both have 2+ seeds."""
    diff = 100 * (a["acc_mean"] - b["acc_mean"])
    text = f"{diff:+.2f} points"
    if len(a["accs"]) >= 2 and len(b["accs"]) >= 2:
        p = stats.ttest_ind(a["accs"], b["accs"], equal_var=False).pvalue
        if not pd.isna(p):
            text += f", Welch t-test p = {p:.3f}"
    return text


def summary(df: pd.DataFrame) -> list[str]:
    """One sentence per question, for the configurations of one setup."""
    done = df[df["acc_mean"].notna()]
    if done.empty:
        return ["No configuration produced a test accuracy (every seed failed)."]
    lines = []
    best = done.iloc[0]  # df is sorted by accuracy
    lines.append(f"Best configuration overall: {_describe(best)}.")
    full_n = df["full_params"].iloc[0]
    for share in (1, 10):
        under = done[done["pct_full"] < share]
        if pd.isna(full_n):
            continue
        if under.empty:
            lines.append(f"Best under {share}% of the full model's trainable parameters (< {full_n * share / 100:,.0f}): "
                         f"none of the configurations is that small.")
        else:
            lines.append(f"Best under {share}% of the full model's trainable parameters: {_describe(under.iloc[0])}.")

    seed = done[done["method"].eq("seed")]
    lora = done[done["method"].eq("lora")]
    if not seed.empty:
        s = seed.iloc[0]
        rivals = lora[lora["trainable_params"] <= s["trainable_params"]]
        if rivals.empty:
            lines.append(f"The seed post's setup, {_describe(s)}, has no LoRA configuration with at most "
                         f"its {_count(s['trainable_params'])} trainable parameters to compare with.")
        else:
            b = rivals.iloc[0]
            lines.append(f"The seed post's setup (**{s['label']}**) reaches {fmt_acc(s, '%')} with "
                         f"{_count(s['trainable_params'])} trainable parameters; the best LoRA configuration with at "
                         f"most that many, **{b['label']}** ({_count(b['trainable_params'])}), reaches "
                         f"{fmt_acc(b, '%')} ({_versus(b, s)}).")
    full, scratch = done[done["method"].eq("full")], done[done["method"].eq("scratch")]
    if not full.empty and not scratch.empty:
        f, s = full.iloc[0], scratch.iloc[0]
        lines.append(f"Full fine-tuning of the pretrained model reaches {fmt_acc(f, '%')} against {fmt_acc(s, '%')} "
                     f"for the same network trained from scratch ({_versus(f, s)}).")

    # Forgetting: how much of the source task each family keeps (adapted network, source head).
    kept = done[done["source_after_mean"].notna()]
    if not kept.empty:
        before = kept["source_before_mean"].dropna()
        parts = []
        for method, rows in kept.groupby("method", sort=True):
            lo, hi = rows["source_after_mean"].min(), rows["source_after_mean"].max()
            parts.append(f"{method} {100 * lo:.2f}%" if lo == hi else f"{method} {100 * lo:.2f}–{100 * hi:.2f}%")
        start = f" (the pretrained backbone: {100 * before.mean():.2f}%)" if not before.empty else ""
        lines.append(f"Source-task accuracy kept after adaptation{start}, range over configurations: "
                     f"{'; '.join(parts)}. Frozen-backbone methods keep it by construction except for "
                     f"what their adapters change; scratch has no source head.")

    # Conv placements against proj at the same rank and freeze policy.
    proj = lora[lora["placement"].eq("proj")].drop_duplicates(["rank", "policy"]).set_index(["rank", "policy"])
    conv = lora[lora["placement"].isin(CONV_PLACEMENTS)].sort_values("rank", kind="mergesort")
    for (placement, shape, policy), rows in conv.groupby(["placement", "shape", "policy"], sort=True):
        pairs = [(c, proj.loc[(c["rank"], policy)]) for _, c in rows.iterrows() if (c["rank"], policy) in proj.index]
        if not pairs:
            continue
        parts = "; ".join(f"r{c['rank']} {fmt_acc(c, '%')} vs {fmt_acc(p, '%')}" for c, p in pairs)
        ahead = sum(c["acc_mean"] > p["acc_mean"] for c, p in pairs)
        what = f"LoRA on {placement} ({shape}" + (f", policy {policy})" if policy != "lora" else ")")
        lines.append(f"{what} vs LoRA on proj at equal rank: {parts} — {placement} ahead at {ahead} of "
                     f"{len(pairs)} rank{'s' if len(pairs) > 1 else ''}.")
    return lines


# --------------------------------------------------------------------------------- markdown
def _values(s: pd.Series) -> str:
    vals = sorted({str(v) for v in s.dropna() if str(v) not in ("", "None")})
    return ", ".join(vals) if vals else "unknown"


def _sizes(part: pd.DataFrame) -> str:
    cols = ["metrics.train_images", "metrics.val_images", "metrics.test_images"]
    triples = sorted({tuple(int(v) for v in t) for t in part[cols].dropna().itertuples(index=False)})
    return ", ".join(f"{a:,} train / {b:,} validation / {c:,} test images" for a, b, c in triples) or "unknown sizes"


def _what(part: pd.DataFrame) -> str:
    protocol = _values(part["env.protocol"].fillna(part["config.protocol"]))
    notes = "".join(f" ({PROTOCOL_NOTES[p]})" for p in protocol.split(", ") if p in PROTOCOL_NOTES)
    per_config = part.groupby("key").size()
    lo, hi = per_config.min(), per_config.max()
    return (f"profile {_values(part['config.profile'])}; {_values(part['config.source'])} → "
            f"{_values(part['config.target'])}; protocol **{protocol}**{notes}; adapt on {_sizes(part)}; "
            f"{_values(part['config.epochs'])} adaptation epochs (batch {_values(part['config.batch_size'])}, "
            f"patience {_values(part['config.patience'])}), backbone pretrained {_values(part['config.pretrain_epochs'])} "
            f"epochs; seeds {', '.join(str(s) for s in sorted(part['config.seed'].unique()))} "
            f"({lo if lo == hi else f'{lo}–{hi}'} per configuration)")


def header(records: list[dict], command: str) -> list[str]:
    df = frame(records)
    for col in ("env.device", "env.cpu", "env.gpu", "env.threads", "env.python", "env.torch", "env.torchvision",
                "env.optuna", "env.protocol", "run.git_sha", "run.created_at", "config.pretrain_epochs",
                "metrics.train_images", "metrics.val_images", "metrics.test_images"):
        if col not in df:
            df[col] = None
    df["setup"] = [setup_of(r) for r in records]
    df["key"] = [config_key(r) for r in records]
    statuses = df["run.status"].value_counts().sort_index()
    lines = ["# Leaderboard", "",
             f"Generated from {len(records)} run records ({', '.join(f'{n} {s}' for s, n in statuses.items())}) "
             f"of {df.groupby(['setup', 'key']).ngroups} configurations; studies: {_values(df['run.study'])}. "
             "Never edit by hand; regenerate with:",
             "", "```bash", command, "```", "", "## What, where, when", ""]
    for _, part in df.groupby("setup", sort=True):
        lines.append(f"- **What**: {_what(part)}")
    gpu = _values(df["env.gpu"]) if df["env.gpu"].notna().any() else "none"
    lines.append(f"- **Where**: device {_values(df['env.device'])}; CPU {_values(df['env.cpu'])} "
                 f"({_values(df['env.threads'])} threads); GPU {gpu}; Python {_values(df['env.python'])}, "
                 f"torch {_values(df['env.torch'])}, torchvision {_values(df['env.torchvision'])}, "
                 f"optuna {_values(df['env.optuna'])}; git {_values(df['run.git_sha'])}")
    created = df["run.created_at"].dropna().sort_values()
    lines.append(f"- **When**: {created.iloc[0]} … {created.iloc[-1]}" if len(created) else "- **When**: unknown")
    return lines


def legend(df: pd.DataFrame) -> list[str]:
    lines = ["Test accuracy: mean over seeds ± the half-width of a 95% t-interval, t(0.975, n−1)·sd/√n, "
             "n = seeds with a result" + ("; **± n/a: a single seed gives no interval**" if (df["n"] == 1).any() else "") + ".",
             "% full: trainable parameters relative to full fine-tuning"
             + (f" ({_count(df['full_params'].iloc[0])})" if not pd.isna(df["full_params"].iloc[0]) else "") + ".",
             "Pareto ✓: no other configuration has at least its mean accuracy with at most its trainable parameters.",
             "Baselines in bold. Source acc after: the adapted network under the original source head (forgetting). "
             "Diverged seeds count in the means (their best epoch before divergence is restored); failed seeds have no metrics."]
    return ["_" + " ".join(lines) + "_"]


def chart_section(chart_links: Iterable[str | Path]) -> list[str]:
    """One line per chart (its files grouped by name), then the accuracy-vs-parameters PNG inline."""
    by_stem: dict[str, list[str]] = {}
    for link in chart_links:
        by_stem.setdefault(Path(link).stem, []).append(Path(link).as_posix())
    if not by_stem:
        return []
    lines = ["", "## Charts", ""]
    for stem, links in by_stem.items():
        files = " · ".join(f"[{Path(l).suffix.lstrip('.').upper()}]({l})" for l in links)
        lines.append(f"- {CHART_TITLES.get(stem, stem)}: {files}")
    missing = [t for stem, t in CHART_TITLES.items() if stem not in by_stem]
    if missing:
        lines.append(f"- Not drawn (the records lack what they need): {'; '.join(missing)}")
    png = [l for l in by_stem.get("acc_vs_params", []) if l.endswith(".png")]
    if png:
        lines += ["", f"![{CHART_TITLES['acc_vs_params']}]({png[0]})"]
    return lines


def render_markdown(records: list[dict], command: str, chart_links: Iterable[str | Path] = ()) -> str:
    """The whole leaderboard. chart_links: chart file paths relative to the output file, in display order."""
    if not records:
        raise LorafitError("no records to put on a leaderboard; run `python -m bench run grid` first")
    records = sorted(records, key=lambda r: (r["run"]["id"], r["run"].get("study") or ""))
    agg = aggregate(records)
    lines = header(records, command)
    setups = list(agg["setup"].unique())
    for setup in setups:
        part = agg[agg["setup"].eq(setup)]
        suffix = f" — {setup}" if len(setups) > 1 else ""
        lines += ["", f"## Results{suffix}", "", table(part), "", *legend(part), "",
                  f"## Summary{suffix}", ""] + [f"- {s}" for s in summary(part)]
    lines += chart_section(chart_links)
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs-dir", default="runs", help="where the records are (default ./runs)")
    parser.add_argument("--output", default="leaderboard.md", help="markdown file to write (default leaderboard.md)")
    parser.add_argument("--study", default=None, help="only this study's records (default: every study)")


def command_line(args: argparse.Namespace) -> str:
    """The command that regenerates the file, paths exactly as given."""
    parts = ["python", "-m", "bench", "leaderboard", "--runs-dir", args.runs_dir, "--output", args.output]
    if args.study:
        parts += ["--study", args.study]
    return shlex.join(parts)


def main(args: argparse.Namespace) -> int:
    from bench import charts  # charts imports this module for the aggregation

    runs = Path(args.runs_dir)
    records = load_records(runs, args.study)
    if not records:
        where = runs / "records" / args.study if args.study else runs / "records"
        raise LorafitError(f"no records under {where}; run `python -m bench run grid` first"
                           + (" (or check --study)" if args.study else ""))
    output = Path(args.output)
    chart_dir = charts.default_out(runs, args.study)
    try:
        chart_paths = charts.render(records, chart_dir)
        links = [os.path.relpath(p, output.parent) for p in chart_paths]
        write_atomic(output, render_markdown(records, command_line(args), links))
    except OSError as e:
        raise LorafitError(f"cannot write {e.filename or output} ({e.strerror}); pass a writable --output / --runs-dir") from None
    n_configs = len({(setup_of(r), config_key(r)) for r in records})
    print(f"leaderboard: {n_configs} configurations from {len(records)} records -> {output}; "
          f"{len(chart_paths)} chart files in {chart_dir}")
    return 0
