"""The summary's paired comparisons, computed once per setup (the summary and the matched-budget
table print the same ones): the seed post vs LoRA at its budget, full fine-tuning vs scratch,
LoRA on a conv placement vs on proj (the seed CNN), or every placement vs the best one (backbones
without proj), every other adapter method vs LoRA at the nearest budget. A "best" row is chosen on
validation accuracy, so the test accuracies it is compared on did not pick it."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench.reporting.aggregate import BASELINES, chosen_on_validation, reference
from bench.reporting.stats import holm, paired
from lorafit.backbones import is_conv_placement


def matched_lora(lora: pd.DataFrame, row: pd.Series) -> pd.Series | None:
    """LoRA's configuration at `row`'s budget: same placement and policy, the nearest number of
    trainable parameters on a log scale (the smaller on a tie); None when LoRA has none there."""
    same = lora[lora["placement"].eq(row["placement"]) & lora["policy"].eq(row["policy"])]
    if same.empty:
        return None
    distance = (np.log(same["trainable_params"].astype(float)) - np.log(float(row["trainable_params"]))).abs()
    order = same.assign(_d=distance.round(12)).sort_values(["_d", "trainable_params"], kind="mergesort")
    return order.iloc[0]


def comparisons(part: pd.DataFrame) -> pd.DataFrame:
    """The summary's paired comparisons for one setup (sorted by accuracy), one row each:
    kind, group, a and b (labels; the difference is a − b), n, diff, lo, hi, p, and p_holm —
    Holm-adjusted over every comparison of the setup that has a p-value.

    kinds: 'seed' (the best LoRA with at most the seed post's trainable parameters, by validation
    accuracy, vs the seed post's setup), 'pretraining' (full fine-tuning vs scratch), 'placement'
    (LoRA on a conv placement vs LoRA on proj at the same rank and policy; group: placement,
    shape, policy), 'where' (on a backbone without proj: LoRA on each placement vs the best
    placement by validation accuracy at the same rank, shape and policy; group: rank, shape,
    policy), 'budget' (every other adapter method vs
    LoRA on the same placement and policy with the nearest number of trainable parameters, on a
    log scale; group: placement).
    """
    done = part[part["acc_mean"].notna()]
    lora = done[done["method"].eq("lora")]
    pairs: list[tuple[str, str, pd.Series, pd.Series]] = []
    seed = reference(done, "residual")
    if seed is not None:
        rivals = lora[lora["trainable_params"] <= seed["trainable_params"]]
        if len(rivals):
            pairs.append(("seed", "", chosen_on_validation(rivals), seed))
    full, scratch = reference(done, "full"), reference(done, "scratch")
    if full is not None and scratch is not None:
        pairs.append(("pretraining", "", full, scratch))
    proj = (
        lora[lora["placement"].eq("proj")].drop_duplicates(["rank", "policy"]).set_index(["rank", "policy"])
    )
    convs = [is_conv_placement(b, p) for b, p in zip(lora["backbone"], lora["placement"])]
    conv = lora[np.array(convs, dtype=bool)].sort_values("rank", kind="mergesort") if len(lora) else lora
    for (placement, shape, policy), rows in conv.groupby(["placement", "shape", "policy"], sort=True):
        for _, c in rows.iterrows():
            if (c["rank"], policy) in proj.index:
                pairs.append(("placement", f"{placement} {shape} {policy}", c, proj.loc[(c["rank"], policy)]))
    if proj.empty:  # the placement question without a proj: each placement against the best one
        for (rank, shape, policy), rows in lora.groupby(["rank", "shape", "policy"], sort=True):
            if rows["placement"].nunique() > 1:
                best = chosen_on_validation(rows)
                for _, other in rows.drop(index=best.name).iterrows():
                    pairs.append(("where", f"{rank} {shape} {policy}", best, other))
    for _, m in done[~done["method"].isin(BASELINES) & ~done["method"].eq("lora")].iterrows():
        match = matched_lora(lora, m)
        if match is not None:
            pairs.append(("budget", m["placement"], m, match))
    table = pd.DataFrame(
        [
            {
                "kind": kind,
                "group": group,
                "a": a["label"],
                "b": b["label"],
                **paired(a["seed_acc"], b["seed_acc"]),
            }
            for kind, group, a, b in pairs
        ],
        columns=["kind", "group", "a", "b", "n", "diff", "lo", "hi", "p"],
    )
    table["p_holm"] = holm(table["p"])
    return table
