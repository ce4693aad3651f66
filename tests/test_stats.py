"""The leaderboard's statistics: paired differences, Holm, Pareto probability, case-merged accuracy."""

import math

import numpy as np
import pandas as pd
import pytest
from test_reporting import make_record

from bench.reporting import aggregate as agg
from bench.reporting import fmt, leaderboard, stats
from bench.reporting.comparisons import comparisons
from lorafit import metrics

T_975_2 = 4.302652729749464  # Student t, 2 degrees of freedom, 97.5% quantile (tables: 4.303)


def t2_pvalue(diffs) -> float:
    """Two-sided paired t-test p for 3 differences, by hand: Student t, 2 df, has CDF 1/2 + t/(2√(2+t²))."""
    d = np.asarray(diffs, float)
    t = abs(d.mean() / (d.std(ddof=1) / math.sqrt(len(d))))
    return 1 - t / math.sqrt(2 + t * t)


def holm_by_hand(ps):
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    adjusted, running = [0.0] * len(ps), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(ps) - rank) * ps[i]))
        adjusted[i] = running
    return adjusted


def per_seed(name, method, placement, rank, policy, params, accs, seeds=None):
    return [
        make_record(name, method, placement, rank, policy, seed=s, acc=a, params=params)
        for s, a in zip(seeds or range(len(accs)), accs)
    ]


# ------------------------------------------------------------------------------ paired
def test_paired_difference_on_the_common_seeds():
    a = {0: 0.80, 1: 0.82, 2: 0.87}
    b = {0: 0.78, 1: 0.79, 2: 0.81, 3: 0.10}  # seed 3 has no partner and is ignored
    out = stats.paired(a, b)
    diffs = [0.02, 0.03, 0.06]
    half = T_975_2 * np.std(diffs, ddof=1) / math.sqrt(3)
    assert out["n"] == 3 and out["diff"] == pytest.approx(np.mean(diffs))
    assert (out["lo"], out["hi"]) == pytest.approx((np.mean(diffs) - half, np.mean(diffs) + half))
    assert out["p"] == pytest.approx(t2_pvalue(diffs))
    one = stats.paired({0: 0.8, 1: 0.9}, {1: 0.7})
    assert (
        one["n"] == 1 and one["diff"] == pytest.approx(0.2) and math.isnan(one["p"]) and math.isnan(one["lo"])
    )
    assert stats.paired({0: 0.8}, {1: 0.7})["n"] == 0


def test_holm_matches_a_hand_computation_and_keeps_nan():
    got = stats.holm([0.01, 0.04, 0.03, float("nan")])
    assert got[:3] == pytest.approx([0.03, 0.06, 0.06]) and math.isnan(got[3])


STUDY = {  # per-seed accuracies, seeds 0, 1, 2
    "full": ("full", "none", 0, "full", 100_000, [0.85, 0.86, 0.88]),
    "scratch": ("scratch", "none", 0, "scratch", 100_000, [0.80, 0.83, 0.84]),
    "head": ("head", "none", 0, "head", 500, [0.60, 0.61, 0.65]),
    "seed-post": ("seed", "seed", 8, "seed", 3_000, [0.75, 0.74, 0.78]),
    "lora-proj": ("lora", "proj", 8, "lora", 2_900, [0.78, 0.80, 0.81]),
    "lora-conv2": ("lora", "conv2", 8, "lora", 900, [0.70, 0.73, 0.71]),
}


def study_records():
    return [
        r
        for name, (method, placement, rank, policy, params, accs) in STUDY.items()
        for r in per_seed(name, method, placement, rank, policy, params, accs)
    ]


def diffs(a, b):
    return np.subtract(STUDY[a][-1], STUDY[b][-1])


def test_rows_show_paired_differences_to_full_and_head():
    df = agg.aggregate(study_records()).set_index("label")
    conv = df.loc["lora-conv2-r8"]
    d = diffs("lora-conv2", "full")
    half = T_975_2 * np.std(d, ddof=1) / math.sqrt(3)
    assert conv["vs_full_ref"] == "full" and conv["vs_head_ref"] == "head"
    assert conv["vs_full_diff"] == pytest.approx(d.mean())
    assert conv["vs_full_hi"] - conv["vs_full_lo"] == pytest.approx(2 * half)
    assert conv["vs_head_diff"] == pytest.approx(diffs("lora-conv2", "head").mean())
    rows = df.reset_index().set_index("label", drop=False)
    assert math.isnan(df.loc["full", "vs_full_diff"]) and fmt.fmt_diff(rows.loc["full"], "vs_full") == "ref"
    assert fmt.fmt_diff(rows.loc["lora-conv2-r8"], "vs_full") == f"{100 * d.mean():+.2f} ± {100 * half:.2f}"


def test_summary_comparisons_are_paired_and_holm_adjusted():
    df = agg.aggregate(study_records())
    comp = comparisons(df).set_index("kind")
    expected = {
        "seed": diffs("lora-proj", "seed-post"),
        "pretraining": diffs("full", "scratch"),
        "placement": diffs("lora-conv2", "lora-proj"),
    }
    raw = [t2_pvalue(expected[k]) for k in ("seed", "pretraining", "placement")]
    adjusted = holm_by_hand(raw)
    for kind, p, p_holm in zip(("seed", "pretraining", "placement"), raw, adjusted):
        assert comp.loc[kind, "diff"] == pytest.approx(expected[kind].mean())
        assert comp.loc[kind, "p"] == pytest.approx(p) and comp.loc[kind, "p_holm"] == pytest.approx(p_holm)
    assert comp.loc["seed", "a"] == "lora-proj-r8" and comp.loc["seed", "b"] == "seed-post-r8"
    md = leaderboard.render_markdown(study_records(), "cmd")
    assert "paired t-test over 3 seeds, Holm-adjusted over 3 comparisons" in md
    seed_p = comp.loc["seed"]
    assert f"p = {seed_p['p']:.3f}, Holm p = {seed_p['p_holm']:.3f}" in md


def test_methods_meet_lora_at_the_nearest_budget_on_their_placement():
    recs = study_records() + [
        r
        for name, method, placement, rank, params, accs in (
            ("lora-proj", "lora", "proj", 16, 5_800, [0.80, 0.82, 0.82]),
            ("dora-proj", "dora", "proj", 8, 3_100, [0.79, 0.80, 0.83]),  # nearest: lora r8 (2,900)
            ("loha-proj", "loha", "proj", 8, 5_000, [0.81, 0.83, 0.84]),  # nearest: lora r16 (5,800)
            ("ia3-conv2", "ia3", "conv2", 1, 600, [0.70, 0.72, 0.71]),  # the only LoRA on conv2
            ("ia3-conv3", "ia3", "conv3", 1, 600, [0.70, 0.72, 0.71]),  # no LoRA on conv3: no comparison
        )
        for r in per_seed(name, method, placement, rank, "lora", params, accs)
    ]
    df = agg.aggregate(recs)
    comp = comparisons(df)
    budget = comp[comp["kind"].eq("budget")].set_index("a")
    assert dict(budget["b"]) == {
        "dora-proj-r8": "lora-proj-r8",
        "loha-proj-r8": "lora-proj-r16",
        "ia3-conv2-r1": "lora-conv2-r8",
    }
    assert budget.loc["loha-proj-r8", "diff"] == pytest.approx(np.mean([0.01, 0.01, 0.02]))
    assert comp["p_holm"].notna().sum() == len(comp)  # Holm over all of them, these included
    md = leaderboard.render_markdown(recs, "cmd")
    assert "## Methods at matched budgets" in md and "| proj | loha-proj-r8 | 5,000 |" in md
    assert "## Parameter ledger" not in md  # records from before the ledger have none to show


def test_unequal_seed_sets_pair_on_the_common_seeds():
    recs = study_records()
    recs = [r for r in recs if not (r["config"]["name"] == "scratch" and r["config"]["seed"] == 2)]
    comp = comparisons(agg.aggregate(recs)).set_index("kind")
    assert comp.loc["pretraining", "n"] == 2
    assert comp.loc["pretraining", "diff"] == pytest.approx(diffs("full", "scratch")[:2].mean())
    md = leaderboard.render_markdown(recs, "cmd")
    assert "paired t-test over 2–3 seeds" in md
    scratch_row = next(line for line in md.splitlines() if line.startswith("| ") and "**scratch**" in line)
    half = 12.706204736174698 * np.std([0.05, 0.03], ddof=1) / math.sqrt(2)  # t(0.975, 1 df)
    assert scratch_row.split(" | ")[11] == f"-4.00 ± {100 * half:.2f}"  # all its seeds pair: no (n=2)
    recs = [r for r in recs if not (r["config"]["name"] == "head" and r["config"]["seed"] == 2)]
    md = leaderboard.render_markdown(recs, "cmd")
    full_row = next(line for line in md.splitlines() if line.startswith("| ") and "**full**" in line)
    assert full_row.split(" | ")[12].endswith("(n=2)")  # full has 3 seeds, head 2


# ------------------------------------------------------------------------ Pareto probability
def test_pareto_probability_is_one_for_a_sure_member_and_zero_for_a_sure_loser():
    recs = (
        per_seed("best", "lora", "proj", 8, "lora", 1_000, [0.90, 0.70, 0.95])  # most accurate on every seed
        + per_seed(
            "loser", "lora", "proj", 16, "lora", 2_000, [0.89, 0.69, 0.94]
        )  # `best` beats it on every seed
        + per_seed("small-a", "lora", "conv1", 1, "lora", 100, [0.50, 0.60, 0.40])  # these two cross:
        + per_seed("small-b", "lora", "conv1", 2, "lora", 200, [0.60, 0.50, 0.45])
    )  # both sometimes on it
    df = agg.aggregate(recs, replicates=500).set_index("label")
    assert df.loc["best-r8", "p_front"] == 1.0 and df.loc["small-a-r1", "p_front"] == 1.0  # fewest parameters
    assert df.loc["loser-r16", "p_front"] == 0.0
    assert 0 < df.loc["small-b-r2", "p_front"] < 1
    # unpaired resampling would put the loser on the front sometimes (its seed 2 beats best's seed 1)
    again = agg.aggregate(list(reversed(recs)), replicates=500).set_index("label")
    assert again["p_front"].equals(df["p_front"])  # deterministic


def test_pareto_probability_with_unequal_seed_sets_is_a_probability():
    recs = (
        per_seed("a", "lora", "proj", 8, "lora", 1_000, [0.9, 0.7, 0.8])
        + per_seed("b", "lora", "proj", 16, "lora", 2_000, [0.95, 0.6], seeds=[0, 1])
        + per_seed("c", "lora", "proj", 32, "lora", 3_000, [0.97], seeds=[2])
    )
    p = agg.aggregate(recs, replicates=300).set_index("label")["p_front"]
    assert p["a-r8"] == 1.0 and ((p >= 0) & (p <= 1)).all() and 0 < p["b-r16"] < 1


def test_pareto_probability_without_results_is_nan():
    part = pd.DataFrame({"seed_acc": [{}, {0: 0.5}], "trainable_params": [10.0, np.nan]})
    assert stats.pareto_probability(part).isna().all()


# --------------------------------------------------------------------- case-merged accuracy
def test_merged_accuracy_on_a_hand_made_confusion_matrix():
    classes = metrics.BYCLASS_CLASSES
    i = {c: k for k, c in enumerate(classes)}
    cm = np.zeros((62, 62), dtype=int)
    for c in "cCa0":
        cm[i[c], i[c]] = 10
    cm[i["c"], i["C"]] = 5  # merged: correct
    cm[i["C"], i["c"]] = 3  # merged: correct
    cm[i["a"], i["A"]] = 4  # a/A is not merged by bymerge: still wrong
    cm[i["o"], i["0"]] = 2  # o vs zero: wrong
    assert metrics.merged_accuracy(cm, classes) == pytest.approx(48 / 54)
    assert metrics.merged_accuracy(cm, classes, merge=()) == pytest.approx(40 / 54)
    assert (
        len(metrics.BYMERGE_PAIRS) == 15
        and metrics.is_byclass(classes)
        and not metrics.is_byclass(["0", "1"])
    )
    assert metrics.merged_accuracy([[1, 2], [3, 4]], ["o", "O"]) == 1.0
    assert math.isnan(metrics.merged_accuracy(np.zeros((2, 2)), ["a", "b"]))
    with pytest.raises(ValueError):
        metrics.merged_accuracy(np.zeros((2, 2)), ["a"])


def test_case_merged_column_is_a_mean_over_seeds_and_dash_elsewhere():
    recs = per_seed("full", "full", "none", 0, "full", 100_000, [0.8, 0.9])
    for r, wrong_case in zip(recs, (2, 6)):
        cm = np.diag([10] * 62)
        cm[metrics.BYCLASS_CLASSES.index("s"), metrics.BYCLASS_CLASSES.index("S")] = wrong_case
        r["analysis"] = {
            "classes": list(metrics.BYCLASS_CLASSES),
            "confusion": cm.tolist(),
            "per_class_acc": [],
        }
    recs += per_seed("head", "head", "none", 0, "head", 500, [0.6, 0.7])  # 4 toy classes: not byclass
    df = agg.aggregate(recs).set_index("label")
    assert df.loc["full", "merged_acc_mean"] == pytest.approx(1.0)
    recs[0]["analysis"]["confusion"][metrics.BYCLASS_CLASSES.index("s")][0] = (
        8  # s read as 0: wrong either way
    )
    df = agg.aggregate(recs).set_index("label")
    assert df.loc["full", "merged_acc_mean"] == pytest.approx((620 + 2) / (620 + 2 + 8) / 2 + 0.5)
    assert math.isnan(df.loc["head", "merged_acc_mean"])
    md = leaderboard.render_markdown(recs, "cmd")
    head_row = next(line for line in md.splitlines() if "**head**" in line)
    assert head_row.split(" | ")[10] == "—"


def test_header_reports_seeds_and_median_halfwidth():
    df = agg.aggregate(study_records())
    md = leaderboard.render_markdown(study_records(), "cmd")
    half = np.median([T_975_2 * np.std(v[-1], ddof=1) / math.sqrt(3) for v in STUDY.values()])
    assert agg.median_halfwidth(df) == pytest.approx(half)
    assert (
        f"3 seeds (0, 1, 2; 3 per configuration), paired across configurations; median 95% CI "
        f"half-width of test accuracy over the 6 rows: ± {100 * half:.2f} points"
    ) in md


def test_a_seed_counts_once_however_many_records_it_has():
    """Two grid files sharing a configuration give a seed two records: one observation, their mean."""
    recs = [make_record(seed=0, acc=0.80), make_record(seed=0, acc=0.90), make_record(seed=1, acc=0.80)]
    r = agg.aggregate(recs).set_index("label").loc["lora-proj-r8"]
    assert r["n"] == 2 and r["n_runs"] == 3 and r["accs"] == pytest.approx((0.85, 0.80))
    assert r["acc_mean"] == pytest.approx(0.825) and r["acc_sd"] == pytest.approx(np.std([0.85, 0.8], ddof=1))


def _with_val(records, val):
    for r in records:
        r["config"]["backbone"] = "residual-cnn"
        r["metrics"]["val_acc"] = val
    return records


def test_where_tests_every_placement_against_the_one_best_on_validation():
    """The reference is chosen on validation accuracy: picking the test winner and then testing it
    on the same test accuracies would make its p-values too small."""
    recs = (
        _with_val(per_seed("lora-stage2", "lora", "stage2", 8, "lora", 4_000, [0.82, 0.83, 0.84]), 0.80)
        + _with_val(per_seed("lora-stage3", "lora", "stage3", 8, "lora", 8_000, [0.81, 0.82, 0.82]), 0.85)
        + _with_val(per_seed("lora-stem", "lora", "stem", 8, "lora", 200, [0.70, 0.71, 0.72]), 0.70)
    )
    df = agg.aggregate(recs)
    where = comparisons(df).query("kind == 'where'")
    assert set(where["a"]) == {"lora-stage3-r8"}  # second on test, first on validation
    assert sorted(where["b"]) == ["lora-stage2-r8", "lora-stem-r8"]
    d = where.set_index("b").loc["lora-stage2-r8", "diff"]
    assert d == pytest.approx(np.mean([-0.01, -0.01, -0.02]))
    md = leaderboard.render_markdown(recs, "cmd")
    assert "**stage3** (the best by validation accuracy) reaches" in md


def test_the_seed_post_without_a_lora_rival_says_so():
    recs = [
        *per_seed("seed-post", "seed", "seed", 8, "seed", 3_000, [0.75, 0.74, 0.78]),
        *per_seed("lora-proj", "lora", "proj", 16, "lora", 5_800, [0.80, 0.82, 0.82]),
    ]
    md = leaderboard.render_markdown(recs, "cmd")
    assert "has no LoRA configuration with at most its 3,000 trainable parameters" in md


def test_a_comparison_without_a_common_seed_is_not_a_difference():
    recs = [
        *per_seed("full", "full", "none", 0, "full", 100_000, [0.85, 0.86], seeds=[0, 1]),
        *per_seed("scratch", "scratch", "none", 0, "scratch", 100_000, [0.80, 0.83], seeds=[2, 3]),
    ]
    md = leaderboard.render_markdown(recs, "cmd")
    assert "trained from scratch: no seed in common, so no difference." in md and "nan" not in md
