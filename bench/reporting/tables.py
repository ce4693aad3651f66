"""The leaderboard's two extra tables: methods at matched budgets, and the parameter ledger."""

from __future__ import annotations

import pandas as pd

from bench.reporting.fmt import cell, ci, count, fmt_acc, fmt_num

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
            diff += f" ({ci(c)})"
        cells = [
            c["group"],
            c["a"],
            count(a["trainable_params"]),
            fmt_acc(a),
            c["b"],
            count(b["trainable_params"]),
            fmt_acc(b),
            diff,
            fmt_num(c["p_holm"], ".3g"),
        ]
        lines.append("| " + " | ".join(cell(x) for x in cells) + " |")
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
    "epochs (to 99%)",
    "images to 99%",
    "s to 99%",
)


def _timing(part: pd.DataFrame) -> str:
    """How inference was timed: records from before ledger_images timed 1,024 images on every seed."""
    sizes = sorted({int(n) for n in part["ledger_images"].dropna()})
    if not sizes:
        return "1,024 test images, best of 3 interleaved rounds, median over seeds"
    return (
        f"{' / '.join(f'{n:,}' for n in sizes)} test images, best of 3 interleaved rounds, timed once per "
        "configuration on the first of its seeds to run (the others reuse it: file size and inference "
        "speed depend on the architecture, not on the trained weights)"
    )


def ledger_table(part: pd.DataFrame) -> list[str]:
    """What each configuration costs to store, train and run (medians over seeds)."""
    part = part[part["has_ledger"]]
    if part.empty:  # records from before the ledger
        return []
    timed = part["epochs_to_99_median"].notna().any()
    head = LEDGER_HEAD if timed else LEDGER_HEAD[:-3]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "--:|" * (len(head) - 1)]
    for _, r in part.sort_values(["trainable_params", "label"], kind="mergesort").iterrows():
        cells = [
            r["label"],
            count(r["trainable_params"]),
            fmt_num(r["adapter_file_bytes"] / 1024, ",.1f"),
            fmt_num(r["trained_bytes"] / 1024, ",.1f"),
            fmt_num(r["images_per_s_median"], ",.0f"),
            fmt_num(r["peak_mem_mb_max"], ",.0f"),
            fmt_num(r["infer_unmerged_rel_median"]),
            fmt_num(r["infer_merged_rel_median"]),
        ]
        if timed:
            trained, to_99 = (fmt_num(r[k], ",.0f") for k in ("epochs_trained_median", "epochs_to_99_median"))
            cells += [
                f"{trained} ({to_99})",
                fmt_num(r["images_to_99_median"], ",.0f"),
                fmt_num(r["seconds_to_99_median"], ",.1f"),
            ]
        lines.append("| " + " | ".join(cell(x) for x in cells) + " |")
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
        f"unmerged and merged over the same model without its adapter, {_timing(part)} (— where there "
        "is no adapter, or it cannot merge). Timings come from the run's own worker, so other work on the "
        "machine adds noise to them."
        + (
            " Time to accuracy: epochs trained (median over seeds) and, in brackets, the first epoch whose "
            "validation accuracy reached 99% of the run's best, with the images and training seconds it "
            "took (medians)."
            if timed
            else ""
        ),
        "",
        *lines,
        "",
    ]
