"""Number and text formatting shared by the leaderboard's tables and prose (— for missing)."""

from __future__ import annotations

import pandas as pd

from lorafit.backbones import DEFAULT, is_conv_placement


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


def count(x: float) -> str:
    return "?" if pd.isna(x) else f"{int(x):,}"


def fmt_params(row: pd.Series) -> str:
    if pd.isna(row["trainable_params"]):
        return "—"
    return f"{count(row['trainable_params'])} ({fmt_share(row['pct_full'])})"


def cell(text) -> str:
    """Markdown-table-safe text (errors can hold pipes and newlines)."""
    return " ".join(str(text).split()).replace("|", "\\|")


def shown_shape(row: pd.Series) -> str:
    """The adapter shape, only where it means something (conv placements)."""
    return row["shape"] if is_conv_placement(row.get("backbone", DEFAULT), row["placement"]) else ""


def fmt_rates(row: pd.Series) -> str:
    """'3.2e-03 / 1.1e-02 (tuned, 8 trials)': the adapter's (or backbone's) rate and the head's.
    The probe trains only its head: one rate."""
    head = row["head_lr"] if not pd.isna(row["head_lr"]) else row["lr"]
    rates = f"{head:.2g}" if row["method"] == "head" else f"{row['lr']:.2g} / {head:.2g}"
    if row["tuning_mode"] == "tuned":
        trials = "" if pd.isna(row["tune_trials"]) else f", {int(row['tune_trials'])} trials"
        return f"{rates} (tuned{trials})"
    return f"{rates} (fixed)"


def ci(c: pd.Series) -> str:
    """'+1.10 to +4.86': a comparison row's 95% interval of the difference, in points."""
    return f"{100 * c['lo']:+.2f} to {100 * c['hi']:+.2f}"


def values(s: pd.Series) -> str:
    vals = sorted({str(v) for v in s.dropna() if str(v) not in ("", "None")})
    return ", ".join(vals) if vals else "unknown"


def num(x) -> str:
    """Plain, locale-free numbers; empty for missing. 12 significant digits (deterministic)."""
    if x is None or pd.isna(x):
        return ""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else format(float(x), ".12g")
