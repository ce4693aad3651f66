"""The epoch-sensitivity table: each checked row at 1x and at 2x its training budget, paired by
seed (bench.sensitivity runs the check)."""

from __future__ import annotations

import pandas as pd

from bench.reporting.aggregate import aggregate, is_budget_check
from bench.reporting.comparisons import comparisons
from bench.reporting.fmt import cell, ci, fmt_num, pct
from bench.reporting.header import WIDE
from bench.reporting.stats import holm, paired
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


# What 2x did to a row, judged against the row's own 1x 95% half-width, but never a wider one than
# the board's ± WIDE target: a noisy row must not pass because it is noisy. The check asks whether
# the 1x budget held a row back: only a gain beyond that tolerance fails it. A fall beyond it is
# marked, not failed: the 2x run keeps the rates selected at 1x, so longer training at rates no
# longer tuned for its budget can cost a row without saying that the 1x budget stopped it short.
WITHIN, LOWER, GAINS = "✓", "✓ lower at 2×", "✗ gains at 2×"


def tolerance(base: pd.Series) -> float:
    """How far 2x may move a row's mean test accuracy: its 1x half-width, at most WIDE."""
    return min(base["acc_ci"], WIDE)


def budget_verdict(base: pd.Series, diff: float) -> str | None:
    """WITHIN, LOWER or GAINS for a 2x − 1x mean difference (None: one seed has no half-width)."""
    if pd.isna(base["acc_ci"]) or pd.isna(diff):
        return None
    if abs(diff) <= tolerance(base):
        return WITHIN
    return GAINS if diff > 0 else LOWER


def sensitivity_table(part: pd.DataFrame, checks: pd.DataFrame) -> list[str]:
    """One setup's rows that the check re-trained, at 1x and at SCALE x, with the change in
    validation accuracy beside the test one (did the longer run find a better selection point?)."""
    if checks.empty or part.empty:
        return []
    mine = checks[checks["setup"].eq(part["setup"].iloc[0])].set_index("key")
    rows, verdicts = [], []
    for _, base in part.iterrows():
        if base["key"] not in mine.index:
            continue
        longer = mine.loc[base["key"]]
        d = paired(longer["seed_acc"], base["seed_acc"])
        v = paired(longer["seed_val"], base["seed_val"])
        verdicts.append(budget_verdict(base, d["diff"]))
        interval = f" ({ci(d)})" if d["n"] >= 2 else ""
        rows.append(
            [
                base["label"],
                f"{pct(base['acc_mean'])} ± {fmt_num(100 * base['acc_ci'])} ({base['n']})",
                f"{pct(longer['acc_mean'])} ({d['n']})",
                f"{100 * d['diff']:+.2f}{interval}",
                f"{100 * v['diff']:+.2f}" if v["n"] else "—",
                verdicts[-1] or "—",
                f"{fmt_num(base['epochs_trained_median'], ',.0f')} → "
                f"{fmt_num(longer['epochs_trained_median'], ',.0f')}",
            ]
        )
    if not rows:
        return []
    judged = [x for x in verdicts if x]
    lower = [r[0] for r, x in zip(rows, verdicts) if x == LOWER]
    gains = [r[0] for r, x in zip(rows, verdicts) if x == GAINS]
    head = [
        "configuration",
        "1× test acc % ± 95% CI (n)",
        f"{SCALE}× test acc % (n)",
        f"{SCALE}× − 1×, points (95% CI)",
        f"{SCALE}× − 1× validation, points",
        "budget check",
        "epochs trained 1× → 2×",
    ]
    return [
        f"## Epoch sensitivity ({SCALE}× the training budget)",
        "",
        f"Representative rows trained again at {SCALE}× the budget (epochs and patience; for the plateau "
        f"schedule its cap and patience) at the rates the 1× tuning stage selected, on the same seeds "
        f"(`python -m bench run grid --budget-check`). The check asks whether the 1× budget held a row "
        f"back: a row fails (✗) when {SCALE}× raises its mean test accuracy by more than its own 1× 95% "
        f"half-width or by more than ± {100 * WIDE:.2f} points, the board's target half-width, whichever "
        f"is smaller (a noisy row does not pass for being noisy). A row that {SCALE}× lowers by more "
        f"than that is marked, not failed: its "
        f"{SCALE}× run keeps the rates selected at 1×, so the longer run shows what more training at "
        f"those rates costs, not a row the 1× budget stopped short (the validation column says whether "
        f"the longer run found a better selection point). "
        f"Of the {len(judged)} rows with a 1× half-width (two or more seeds) and a {SCALE}× run, "
        f"{len(judged) - len(gains)} pass"
        + (f" ({len(lower)} of them lower at {SCALE}×: {', '.join(lower)})" if lower else "")
        + (f"; {len(gains)} fail, raised at {SCALE}×: {', '.join(gains)}" if gains else "")
        + ". Epochs: medians over seeds.",
        "",
        "| " + " | ".join(head) + " |",
        "|---|--:|--:|--:|--:|:-:|--:|",
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
# (a difference at 1x, a difference at 2x) -> what 2x says, unless both differ
UNLESS_BOTH = {
    (False, False): "no difference at either",
    (True, False): "not at 2×",
    (False, True): "only at 2×",
}


def verdict(p_1x: float, diff_1x: float, longer: pd.Series) -> str:
    """What 2x says about a 1x finding, both judged on the same seeds and Holm family: a difference
    (p < ALPHA) that holds or reverses, none at either budget, or one budget's alone."""
    if longer["n"] < 2 or pd.isna(longer["p_holm"]) or pd.isna(p_1x):
        return "—"
    one, two = p_1x < ALPHA, longer["p_holm"] < ALPHA
    if one and two:
        return "holds" if (diff_1x > 0) == (longer["diff"] > 0) else "reversed"
    return UNLESS_BOTH[(one, two)]


def replaced_rival(c: pd.Series, comp: pd.DataFrame) -> str:
    """The summary's own rival a 2x comparison replaced ('' when the pair is the summary's own)."""
    mine = comp[comp["kind"].eq(c["kind"])]
    if ((mine["a"].eq(c["a"]) & mine["b"].eq(c["b"])) | (mine["a"].eq(c["b"]) & mine["b"].eq(c["a"]))).any():
        return ""
    for kept, other in (("a", "b"), ("b", "a")):
        same = mine[mine[kept].eq(c[kept])]
        if len(same):
            return f" (in place of {same.iloc[0][other]})"
    return " (not one of the summary's)"


def _differences(a: dict, b: dict) -> dict:
    """a − b per seed, on the seeds both have."""
    return {s: a[s] - b[s] for s in a.keys() & b.keys()}


def comparisons_table(part: pd.DataFrame, checks: pd.DataFrame, comp: pd.DataFrame) -> list[str]:
    """Do the summary's findings survive 2x? Its comparisons asked again among the rows the check
    re-trained (a rival outside the check is replaced by the one the same rule picks inside), each
    beside the same pair at 1x on the same seeds; both budgets Holm-adjusted over this family, and
    the change in the difference itself (2x minus 1x, paired by seed)."""
    if checks.empty or part.empty:
        return []
    base = part.set_index("key")
    # the 2x rows under their 1x labels (labels depend on which rows share a name)
    mine = checks[checks["setup"].eq(part["setup"].iloc[0]) & checks["key"].isin(base.index)]
    mine = mine.assign(label=mine["key"].map(base["label"]))
    longer = comparisons(mine) if len(mine) >= 2 else pd.DataFrame()
    if longer.empty:
        return []
    acc = base.set_index("label")["seed_acc"]
    twice = mine.set_index("label")["seed_acc"]
    ones, changes = [], []
    for _, c in longer.iterrows():
        seeds = set(twice[c["a"]]) & set(twice[c["b"]])  # the 1x side pairs on the 2x side's seeds
        a1, b1 = ({s: v for s, v in acc[x].items() if s in seeds} for x in (c["a"], c["b"]))
        ones.append(paired(a1, b1))
        changes.append(paired(_differences(twice[c["a"]], twice[c["b"]]), _differences(a1, b1)))
    p_1x = holm([o["p"] for o in ones])
    rows, verdicts = [], []
    for (_, c), one, change, p1 in zip(longer.iterrows(), ones, changes, p_1x):
        verdicts.append(verdict(p1, one["diff"], c))
        interval = f" ({ci(c)})" if c["n"] >= 2 else ""
        moved = f" ({ci(change)})" if change["n"] >= 2 else ""
        rows.append(
            [
                QUESTIONS.get(c["kind"], c["kind"]),
                f"{c['a']} − {c['b']}{replaced_rival(c, comp)}",
                f"{100 * one['diff']:+.2f}",
                fmt_num(p1, ".3g"),
                f"{100 * c['diff']:+.2f}{interval}",
                fmt_num(c["p_holm"], ".3g"),
                f"{100 * change['diff']:+.2f}{moved}",
                c["n"],
                verdicts[-1],
            ]
        )
    head = [
        "question",
        "comparison (a − b)",
        "1× Δ points",
        "1× p (Holm)",
        f"{SCALE}× Δ points (95% CI)",
        f"{SCALE}× p (Holm)",
        f"{SCALE}× Δ − 1× Δ (95% CI)",
        "seeds",
        f"at {SCALE}×",
    ]
    tally = ", ".join(f"{verdicts.count(v)} {v}" for v in dict.fromkeys(verdicts) if v != "—")
    return [
        f"## The summary's comparisons at {SCALE}× the budget",
        "",
        f"The summary's paired comparisons asked again among the rows the check re-trained at {SCALE}× "
        f"(where a comparison's rival was not re-trained, the same rule picks one that was, named in "
        f"brackets), each beside the same pair at 1× on the same seeds. Both budgets' p are "
        f"Holm-adjusted over these {len(rows)} comparisons (so the 1× p here can differ from the "
        f"summary's); {SCALE}× Δ − 1× Δ is the change in the difference, paired by seed. At {SCALE}× "
        f"(p < {ALPHA} counts as a difference): {tally or 'none judged yet (two or more seeds needed)'}.",
        "",
        "| " + " | ".join(head) + " |",
        "|---|---|--:|--:|--:|--:|--:|--:|:-:|",
        *("| " + " | ".join(cell(x) for x in r) + " |" for r in rows),
        "",
    ]
