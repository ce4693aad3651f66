"""The epoch-sensitivity table: each checked row at 1x and at 2x its training budget, paired by
seed (bench.sensitivity runs the check)."""

from __future__ import annotations

import pandas as pd

from bench.reporting.aggregate import aggregate, is_budget_check
from bench.reporting.fmt import cell, fmt_num, pct
from bench.reporting.stats import paired
from bench.sensitivity import SCALE, unscaled


def checked(records: list[dict]) -> pd.DataFrame:
    """The budget-check records aggregated under their 1x identity (setup and key), so each row
    pairs with the row it re-trains."""
    rows = []
    for r in records:
        if is_budget_check(r):
            tuning = {k: v for k, v in (r.get("tuning") or {}).items() if k != "budget_scale"}
            rows.append({**r, "config": unscaled(r["config"]), "tuning": tuning})
    return aggregate(rows) if rows else pd.DataFrame()


def passes(base: pd.Series, diff: float) -> bool | None:
    """2x moved the row by no more than its own 1x 95% half-width (None: one seed has no width)."""
    return None if pd.isna(base["acc_ci"]) or pd.isna(diff) else bool(abs(diff) <= base["acc_ci"])


def sensitivity_table(part: pd.DataFrame, checks: pd.DataFrame) -> list[str]:
    """One setup's rows that the check re-trained, at 1x and at SCALE x."""
    if checks.empty or part.empty:
        return []
    mine = checks[checks["setup"].eq(part["setup"].iloc[0])].set_index("key")
    rows, moved, judged = [], 0, 0
    for _, base in part.iterrows():
        if base["key"] not in mine.index:
            continue
        longer = mine.loc[base["key"]]
        d = paired(longer["seed_acc"], base["seed_acc"])
        ok = passes(base, d["diff"])
        judged += ok is not None
        moved += ok is False
        interval = f" ({100 * d['lo']:+.2f} to {100 * d['hi']:+.2f})" if d["n"] >= 2 else ""
        rows.append(
            [
                base["label"],
                f"{pct(base['acc_mean'])} ± {fmt_num(100 * base['acc_ci'])} ({base['n']})",
                f"{pct(longer['acc_mean'])} ({d['n']})",
                f"{100 * d['diff']:+.2f}{interval}",
                "—" if ok is None else "✓" if ok else "✗ moved",
                f"{fmt_num(base['epochs_trained_median'], ',.0f')} → "
                f"{fmt_num(longer['epochs_trained_median'], ',.0f')}",
            ]
        )
    if not rows:
        return []
    head = [
        "configuration",
        "1× test acc % ± 95% CI (n)",
        f"{SCALE}× test acc % (n)",
        f"{SCALE}× − 1×, points (95% CI)",
        "within 1× half-width",
        "epochs trained 1× → 2×",
    ]
    return [
        f"## Epoch sensitivity ({SCALE}× the training budget)",
        "",
        f"Representative rows trained again at {SCALE}× the budget (epochs and patience; for the plateau "
        f"schedule its cap and patience) at the rates the 1× tuning stage selected, on the same seeds "
        f"(`python -m bench run grid --budget-check`). A row passes when {SCALE}× moves its mean by no "
        f"more than its own 1× 95% half-width; {judged - moved} of the {judged} rows with a 1× "
        f"half-width (two or more seeds at 1×) pass. "
        f"Epochs: medians over seeds.",
        "",
        "| " + " | ".join(head) + " |",
        "|---|--:|--:|--:|:-:|--:|",
        *("| " + " | ".join(cell(x) for x in r) + " |" for r in rows),
        "",
    ]
