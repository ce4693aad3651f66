"""The epoch-sensitivity table: each checked row at 1x and at 2x its training budget, paired by
seed (bench.sensitivity runs the check)."""

from __future__ import annotations

import pandas as pd

from bench.reporting.aggregate import aggregate, is_budget_check
from bench.reporting.comparisons import comparisons
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


QUESTIONS = {
    "seed": "the seed post at its budget",
    "pretraining": "pretraining",
    "placement": "placement",
    "where": "placement",
    "budget": "method vs LoRA",
}
ALPHA = 0.05
# (a difference at 1x, a difference at 2x) -> what 2x says, when they do not both differ
UNLESS_BOTH = {(False, False): "a tie at both", (True, False): "not at 2×", (False, True): "only at 2×"}


def verdict(p_1x: float, diff_1x: float, longer: pd.Series) -> str:
    """What 2x says about a 1x finding: a difference (p < ALPHA) that holds or reverses, a tie at
    both budgets, or one budget's difference the other does not show."""
    if longer["n"] < 2 or pd.isna(longer["p_holm"]) or pd.isna(p_1x):
        return "—"
    one, two = p_1x < ALPHA, longer["p_holm"] < ALPHA
    if one and two:
        return "holds" if (diff_1x > 0) == (longer["diff"] > 0) else "reversed"
    return UNLESS_BOTH[(one, two)]


def comparisons_table(part: pd.DataFrame, checks: pd.DataFrame, comp: pd.DataFrame) -> list[str]:
    """Do the summary's findings survive 2x? The summary's comparisons asked again among the rows
    the check re-trained (so a rival outside the check is replaced by the nearest one inside),
    each beside the same pair's 1x difference; Holm over the 2x family."""
    if checks.empty or part.empty:
        return []
    mine = checks[checks["setup"].eq(part["setup"].iloc[0])]
    longer = comparisons(mine) if len(mine) >= 2 else pd.DataFrame()
    if longer.empty:
        return []
    base = part.set_index("label")
    holm_1x = {(c["a"], c["b"]): c["p_holm"] for _, c in comp.iterrows()}
    rows, verdicts = [], []
    for _, c in longer.iterrows():
        one = paired(base.loc[c["a"], "seed_acc"], base.loc[c["b"], "seed_acc"])
        own = (c["a"], c["b"]) in holm_1x
        p_1x = holm_1x[(c["a"], c["b"])] if own else one["p"]
        verdicts.append(verdict(p_1x, one["diff"], c))
        interval = f" ({100 * c['lo']:+.2f} to {100 * c['hi']:+.2f})" if c["n"] >= 2 else ""
        rows.append(
            [
                QUESTIONS.get(c["kind"], c["kind"]),
                f"{c['a']} − {c['b']}",
                f"{100 * one['diff']:+.2f}",
                fmt_num(p_1x, ".3g") + ("" if own else " (unadjusted)"),
                f"{100 * c['diff']:+.2f}{interval} (n={c['n']})",
                fmt_num(c["p_holm"], ".3g"),
                verdicts[-1],
            ]
        )
    head = [
        "question",
        "comparison (a − b)",
        "1× Δ points (paired)",
        "1× p (Holm)",
        f"{SCALE}× Δ points (paired, 95% CI)",
        f"{SCALE}× p (Holm)",
        f"at {SCALE}×",
    ]
    tally = ", ".join(f"{verdicts.count(v)} {v}" for v in dict.fromkeys(verdicts) if v != "—")
    return [
        f"## The summary's comparisons at {SCALE}× the budget",
        "",
        f"The summary's paired comparisons asked again among the rows the check re-trained at {SCALE}× "
        f"(where a comparison's rival was not re-trained, the same rule picks the nearest one that "
        f"was), beside the same pair's 1× difference over all its seeds: its Holm p where the pair "
        f"is one of the summary's own, else its unadjusted p; the {SCALE}× Holm p is over these "
        f"{len(rows)} comparisons. At {SCALE}× (p < {ALPHA} counts as a difference): "
        f"{tally or 'none judged yet (two or more seeds needed)'}.",
        "",
        "| " + " | ".join(head) + " |",
        "|---|---|--:|--:|--:|--:|:-:|",
        *("| " + " | ".join(cell(x) for x in r) + " |" for r in rows),
        "",
    ]
