"""The leaderboard's generated summary: one sentence per question, for one setup."""

from __future__ import annotations

import pandas as pd

from bench.reporting import evidence
from bench.reporting.aggregate import reference
from bench.reporting.comparisons import comparisons
from bench.reporting.fmt import ci, count, fmt_acc, fmt_p, fmt_share, pct


def _describe(row: pd.Series) -> str:
    return (
        f"**{row['label']}** at {fmt_acc(row, '%')} test accuracy with {count(row['trainable_params'])} "
        f"trainable parameters ({fmt_share(row['pct_full'])} of full fine-tuning's)"
    )


def _versus(c: pd.Series) -> str:
    """'+2.98 points (95% CI +1.10 to +4.86; p = 0.012, Holm p = 0.048)' for one comparison row."""
    if c["n"] == 0:
        return "no seed in common, so no difference"
    text = f"{100 * c['diff']:+.2f} points"
    if c["n"] < 2:
        return text + " on 1 common seed, no test"
    return f"{text} (95% CI {ci(c)}; {fmt_p(c['p'])}, {fmt_p(c['p_holm'], 'Holm p')})"


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
    seed = reference(done, "residual")  # the seed post, as the comparisons chose it
    seed_comp = comp[comp["kind"].eq("seed")]
    if seed is not None and seed_comp.empty:
        s = seed
        lines.append(
            f"The seed post's setup, {_describe(s)}, has no LoRA configuration with at most "
            f"its {count(s['trainable_params'])} trainable parameters to compare with."
        )
    for _, c in seed_comp.iterrows():
        b, s = rows.loc[c["a"]], rows.loc[c["b"]]
        lines.append(
            f"The seed post's setup (**{s.name}**) reaches {fmt_acc(s, '%')} with "
            f"{count(s['trainable_params'])} trainable parameters; the best LoRA configuration with at "
            f"most that many by validation accuracy, **{b.name}** ({count(b['trainable_params'])}), reaches "
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
    # Where LoRA belongs on a backbone without proj: the best placement against every other.
    for group, cs in comp[comp["kind"].eq("where")].groupby("group", sort=True):
        rank, shape, policy = group.split(" ")
        best = rows.loc[cs.iloc[0]["a"]]
        parts = "; ".join(
            f"{rows.loc[c['b'], 'placement']} {pct(rows.loc[c['b'], 'acc_mean'])}%: {_versus(c)}"
            for _, c in cs.iterrows()
        )
        clear = int(((cs["p_holm"] < 0.05) & (cs["diff"] > 0)).sum())
        what = f"LoRA r{rank} ({shape}" + (f", policy {policy})" if policy != "lora" else ")")
        lines.append(
            f"Where {what} belongs on {best['backbone']}: **{best['placement']}** (the best by "
            f"validation accuracy) reaches "
            f"{fmt_acc(best, '%')}; against it {parts} — ahead of {clear} of {len(cs)} other "
            f"placement{'s' if len(cs) > 1 else ''} at Holm p < 0.05."
        )
    # Other adapter methods against LoRA at the nearest budget, per placement.
    for placement, cs in comp[comp["kind"].eq("budget")].groupby("group", sort=True):
        ahead = cs[(cs["lo"] > 0)]["a"].tolist()
        behind = cs[(cs["hi"] < 0)]["a"].tolist()
        lines.append(
            f"Methods vs LoRA at the nearest budget on {placement} ({len(cs)} "
            f"comparison{'s' if len(cs) != 1 else ''}, table "
            f"below): ahead with a 95% CI above zero: {', '.join(ahead) or 'none'}; behind with one "
            f"below zero: {', '.join(behind) or 'none'}."
        )
    lines.append(evidence.containment_line(evidence.containment(df)))
    return lines
