"""The leaderboard's statistics, from the stored records alone (pandas, scipy, statsmodels).

One row per (setup, configuration): seeds, means, 95% t-intervals, trainable parameters, the
Pareto flag and the probability of being on the front under a paired bootstrap over seeds,
paired differences to full fine-tuning and to the linear probe, case-merged accuracy. Plus the
summary's paired comparisons with Holm-adjusted p-values. No markdown and no charts here:
`bench.leaderboard` and `bench.charts` render what this module computes.

Pairing: seed s of one configuration and seed s of another share the pretrained backbone, the
data order and the initialisation of their shared parts, so configurations of one setup are
compared seed by seed (on the seeds both have), not as independent samples.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests

from bench.records import frame
from lorafit import adapters, metrics
from lorafit.adapters import CONV_PLACEMENTS

BASELINES = ("scratch", "full", "head", "seed")  # bold in the table: the reference points
# Metric columns every record may lack (failed runs): reindexed so aggregation never KeyErrors.
METRICS = (
    "test_acc",
    "test_balanced_acc",
    "source_acc_before",
    "source_acc_after",
    "trainable_params",
    "total_params",
    "train_s",
    "images_per_s",
    "peak_mem_mb",
    "adapter_file_bytes",
    "adapter_bytes",
    "infer_unmerged_rel",
    "infer_merged_rel",
    "train_images",
    "val_images",
    "test_images",
)
LEVEL = 0.95  # every interval
BOOTSTRAP_REPLICATES = 2000
BOOTSTRAP_SEED = 0
# The two references every row is compared with (paired, per seed): method -> column prefix.
REFERENCES = {"full": "vs_full", "head": "vs_head"}


# ---------------------------------------------------------------------------- identities
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
    """The colour group in charts: the baseline's name, the seed post, or an adapter method by
    placement (with its conv shape and freeze policy when they differ from the default)."""
    if method in adapters.BASELINES:
        return method
    if method == "seed":
        return "seed post"
    name = f"{method} {placement}"
    if placement in CONV_PLACEMENTS and shape != "1x1":
        name += f" {shape}"
    if policy != "lora":
        name += f" ({policy})"
    return name


def method_family(method: str) -> str:
    """The colour of the accuracy-vs-parameters charts: the method itself (baselines by name, the
    seed post's residual adapter as "seed post"), whatever its placement, rank or policy."""
    return "seed post" if method == "seed" else method


def labels(out: pd.DataFrame) -> list[str]:
    """name-rN like the cell ids; configurations that still collide get their differing settings."""
    plain = [f"{n}-r{r}" if r else str(n) for n, r in zip(out["name"], out["rank"])]
    configs = [json.loads(k) for k in out["key"]]
    setups = list(out["setup"])
    result = list(plain)
    for i, label in enumerate(plain):
        twins = [j for j, (lab, s) in enumerate(zip(plain, setups)) if lab == label and s == setups[i]]
        if len(twins) > 1:
            differing = sorted(
                k for k in configs[i] if len({json.dumps(configs[j].get(k)) for j in twins}) > 1
            )
            result[i] = label + " " + " ".join(f"{k}={configs[i].get(k)}" for k in differing)
    return result


# ---------------------------------------------------------------------------- statistics
def t_halfwidth(sd: pd.Series | float, n: pd.Series | int, level: float = LEVEL) -> pd.Series | float:
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
    front = pd.Series(False, index=df.index)
    front[valid] = ~_dominated(xs, ys[None, :])[0]
    return front


def _dominated(xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """ys: (replicates, points) -> (replicates, points) bool, point i dominated by some j in its replicate."""
    x_le = xs[None, :] <= xs[:, None]  # [i, j]: j has no more parameters than i
    x_lt = xs[None, :] < xs[:, None]
    y_ge = ys[:, None, :] >= ys[:, :, None]  # [r, i, j]: j at least as accurate as i
    y_gt = ys[:, None, :] > ys[:, :, None]
    return (x_le[None] & y_ge & (x_lt[None] | y_gt)).any(axis=2)


def paired(a: Mapping[int, float], b: Mapping[int, float], level: float = LEVEL) -> dict:
    """a − b over the seeds both have: n, mean difference, its t-interval (lo, hi) and the paired
    t-test's two-sided p (scipy.stats.ttest_rel). One common seed: the difference alone; none: NaN.
    Identical differences on every seed make the test degenerate (scipy: p = 0, zero-width interval)."""
    seeds = sorted(set(a) & set(b))
    out = {"n": len(seeds), "diff": np.nan, "lo": np.nan, "hi": np.nan, "p": np.nan}
    if not seeds:
        return out
    x, y = np.array([a[s] for s in seeds], float), np.array([b[s] for s in seeds], float)
    out["diff"] = float(np.mean(x - y))
    if len(seeds) >= 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # scipy's precision warning on near-equal data
            test = stats.ttest_rel(x, y)
            ci = test.confidence_interval(level)
        out.update(lo=float(ci.low), hi=float(ci.high), p=float(test.pvalue))
    return out


def holm(pvalues: Iterable[float]) -> np.ndarray:
    """Holm-adjusted p-values (statsmodels), over the non-NaN ones; NaN stays NaN."""
    p = np.asarray(list(pvalues), dtype=float)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = multipletests(p[ok], method="holm")[1]
    return out


def pareto_probability(
    part: pd.DataFrame, replicates: int = BOOTSTRAP_REPLICATES, seed: int = BOOTSTRAP_SEED
) -> pd.Series:
    """P(on the accuracy/trainable-parameter front) when the seeds are resampled, per row of one setup.

    Paired bootstrap: each replicate draws as many seeds as the setup has, with replacement, from
    all the seeds of the setup, once, and every configuration takes the mean of its per-seed
    accuracies weighted by how often each of its seeds was drawn — configurations keep the
    pairing on the seeds they share. A configuration none of whose seeds was drawn (only possible
    with unequal seed sets) is resampled from its own seeds for that replicate. The front of each
    replicate is `pareto_front`'s. Fixed RNG seed: deterministic. Rows without a result, or without
    a parameter count, get NaN.
    """
    seed_acc = part["seed_acc"]
    valid = seed_acc.map(len).gt(0) & part["trainable_params"].notna()
    result = pd.Series(np.nan, index=part.index)
    if not valid.any():
        return result
    rows = part.index[valid]
    all_seeds = sorted({s for i in rows for s in seed_acc[i]})
    acc = np.array([[seed_acc[i].get(s, np.nan) for s in all_seeds] for i in rows])  # (configs, seeds)
    has = ~np.isnan(acc)
    rng = np.random.default_rng(seed)
    k = len(all_seeds)
    draws = rng.integers(0, k, size=(replicates, k))
    counts = np.zeros((replicates, k))
    np.add.at(counts, (np.arange(replicates)[:, None], draws), 1)
    weight = counts @ has.T.astype(float)  # (replicates, configs)
    means = (counts @ np.where(has, acc, 0).T) / np.where(weight > 0, weight, 1)
    for r, c in zip(*np.nonzero(weight == 0)):  # none of the configuration's seeds drawn
        own = acc[c, has[c]]
        means[r, c] = own[rng.integers(0, len(own), size=len(own))].mean()
    xs = part.loc[rows, "trainable_params"].to_numpy(float)
    on_front = ~_dominated(xs, means)
    result[rows] = on_front.mean(axis=0)
    return result


# ---------------------------------------------------------------------------- aggregation
def _first_valid(s: pd.Series):
    s = s.dropna()
    return s.iloc[0] if len(s) else None


def _merged_acc(record: dict) -> float:
    """Case-merged accuracy from the stored confusion matrix; NaN when the classes are not byclass."""
    analysis = record.get("analysis") or {}
    if not analysis.get("confusion") or not metrics.is_byclass(analysis.get("classes", ())):
        return np.nan
    return metrics.merged_accuracy(analysis["confusion"], analysis["classes"])


def is_tuning_trial(record: dict) -> bool:
    """Records of the tuning stage's trials (records/<grid>-tune/...): inputs to the sensitivity
    chart, never leaderboard rows."""
    return "-tune/" in (record["run"].get("study") or "")


def aggregate(records: Iterable[dict], replicates: int = BOOTSTRAP_REPLICATES) -> pd.DataFrame:
    """One row per (setup, configuration): seeds, status counts, means, CI, params, Pareto flag and
    probability, paired differences to the references, case-merged accuracy.

    Accuracies are fractions. Diverged seeds that still produced metrics (the best epoch before
    the divergence is restored) count in the means; failed seeds have no metrics and do not.
    `seed_acc` maps seed -> test accuracy (the mean if one seed has several records).
    Row order: setup, then test accuracy descending (configurations without any accuracy last),
    then trainable parameters, then label.
    """
    records = sorted(
        (r for r in records if not is_tuning_trial(r)),
        key=lambda r: (setup_of(r), config_key(r), r["config"].get("seed", 0), r["run"]["id"]),
    )
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
    df["merged_acc"] = [_merged_acc(r) for r in records]
    # How the rates were chosen: records before the tuning stage carry no `tuning` (fixed rates).
    df["rslora"] = [bool(r["config"].get("rslora", False)) for r in records]
    df["tuning_mode"] = [(r.get("tuning") or {}).get("mode", "fixed") for r in records]
    df["tune_trials"] = [(r.get("tuning") or {}).get("trials", np.nan) for r in records]
    df["selection"] = [r.get("tuning") or {} for r in records]  # the same for every seed of a row
    df["head_lr"] = [r["config"].get("head_lr") or r["config"].get("lr") for r in records]
    # Records written before the parameter ledger have none of its fields (and another peak_mem_mb).
    df["has_ledger"] = ["adapter_file_bytes" in (r.get("metrics") or {}) for r in records]

    g = df.groupby(["setup", "key"], sort=True)
    out = g.agg(
        name=("config.name", "first"),
        method=("config.method", "first"),
        placement=("config.placement", "first"),
        shape=("config.shape", "first"),
        rank=("config.rank", "first"),
        alpha=("config.alpha", "first"),
        policy=("config.policy", "first"),
        lr=("config.lr", "first"),
        head_lr=("head_lr", "first"),
        tuning_mode=("tuning_mode", "first"),
        tune_trials=("tune_trials", "first"),
        selection=("selection", "first"),
        rslora=("rslora", "first"),
        profile=("config.profile", "first"),
        source=("config.source", "first"),
        target=("config.target", "first"),
        n_runs=("run.id", "size"),
        n=("acc", "count"),
        n_failed=("failed", "sum"),
        n_diverged=("diverged", "sum"),
        error=("run.error", _first_valid),
        acc_mean=("acc", "mean"),
        acc_sd=("acc", "std"),
        merged_acc_mean=("merged_acc", "mean"),
        bal_acc_mean=("metrics.test_balanced_acc", "mean"),
        source_before_mean=("metrics.source_acc_before", "mean"),
        source_after_mean=("metrics.source_acc_after", "mean"),
        trainable_params=("metrics.trainable_params", "max"),
        total_params=("metrics.total_params", "max"),
        train_s_mean=("metrics.train_s", "mean"),
        # The ledger: timings vary with the machine's load, so the median over seeds.
        has_ledger=("has_ledger", "all"),
        images_per_s_median=("metrics.images_per_s", "median"),
        peak_mem_mb_max=("metrics.peak_mem_mb", "max"),
        adapter_file_bytes=("metrics.adapter_file_bytes", "max"),
        trained_bytes=("metrics.adapter_bytes", "max"),
        infer_unmerged_rel_median=("metrics.infer_unmerged_rel", "median"),
        infer_merged_rel_median=("metrics.infer_merged_rel", "median"),
    ).reset_index()
    out["seeds"] = g["config.seed"].agg(lambda s: tuple(sorted(s))).to_numpy()
    out["accs"] = g["acc"].agg(lambda s: tuple(s.dropna())).to_numpy()  # per seed, seed order
    done = df[df["acc"].notna()]
    per_seed = done.groupby(["setup", "key", "config.seed"], sort=True)["acc"].mean()
    seed_acc = {k: {} for k in zip(out["setup"], out["key"])}
    for (setup, key, s), a in per_seed.items():
        seed_acc[(setup, key)][int(s)] = float(a)
    out["seed_acc"] = [seed_acc[k] for k in zip(out["setup"], out["key"])]
    out["rank"] = out["rank"].fillna(0).astype(int)
    out["acc_ci"] = t_halfwidth(out["acc_sd"], out["n"])
    out["acc_lo"], out["acc_hi"] = out["acc_mean"] - out["acc_ci"], out["acc_mean"] + out["acc_ci"]
    out["label"] = labels(out)
    out["family"] = [
        family(*r) for r in out[["method", "placement", "shape", "policy"]].itertuples(index=False)
    ]
    out["method_family"] = out["method"].map(method_family)
    out["baseline"] = out["method"].isin(BASELINES)
    out = out.sort_values(
        ["setup", "acc_mean", "trainable_params", "label"],
        ascending=[True, False, True, True],
        na_position="last",
        kind="mergesort",
    )
    out = out.reset_index(drop=True)

    # Relative size, the front and the paired differences only make sense within one setup.
    out["full_params"] = np.nan
    out["pareto"] = False
    out["p_front"] = np.nan
    for prefix in REFERENCES.values():
        out[f"{prefix}_ref"] = None
        for stat in ("n", "diff", "lo", "hi", "p"):
            out[f"{prefix}_{stat}"] = np.nan
    for idx in out.groupby("setup", sort=True).groups.values():
        part = out.loc[idx]
        out.loc[idx, "full_params"] = full_reference(part)
        out.loc[idx, "pareto"] = pareto_front(part, "trainable_params", "acc_mean")
        out.loc[idx, "p_front"] = pareto_probability(part, replicates)
        for method, prefix in REFERENCES.items():
            ref = reference(part, method)
            if ref is None:
                continue
            out.loc[idx, f"{prefix}_ref"] = ref["label"]
            for i in idx:
                if out.at[i, "label"] == ref["label"] or not out.at[i, "seed_acc"]:
                    continue
                for stat, v in paired(out.at[i, "seed_acc"], ref["seed_acc"]).items():
                    out.at[i, f"{prefix}_{stat}"] = v
    out["pareto"] = out["pareto"].astype(bool)
    out["pct_full"] = 100 * out["trainable_params"] / out["full_params"]
    out["acc_per_1k"] = out["acc_mean"] / (out["trainable_params"] / 1000)
    return out


def reference(part: pd.DataFrame, method: str) -> pd.Series | None:
    """The row a method's comparisons use within one setup: its most accurate configuration
    (part is sorted by accuracy), or None when no configuration of that method has a result."""
    rows = part[part["method"].eq(method) & part["acc_mean"].notna()]
    return rows.iloc[0] if len(rows) else None


def full_reference(df: pd.DataFrame) -> float:
    """100% for the relative-size column: full fine-tuning's trainable parameters, else the model size."""
    full = df.loc[df["method"].eq("full"), "trainable_params"].dropna()
    if len(full):
        return float(full.max())
    total = df["total_params"].dropna()
    return float(total.max()) if len(total) else np.nan


def median_halfwidth(part: pd.DataFrame) -> float:
    """The median over rows of the 95% CI half-width of test accuracy (rows with an interval)."""
    ci = part["acc_ci"].dropna()
    return float(ci.median()) if len(ci) else np.nan


# ---------------------------------------------------------------------------- comparisons
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

    kinds: 'seed' (the best LoRA with at most the seed post's trainable parameters vs the seed
    post's setup), 'pretraining' (full fine-tuning vs scratch), 'placement' (LoRA on a conv
    placement vs LoRA on proj at the same rank and policy; group: placement, shape, policy),
    'budget' (every other adapter method vs LoRA on the same placement and policy with the
    nearest number of trainable parameters, on a log scale; group: placement).
    """
    done = part[part["acc_mean"].notna()]
    lora = done[done["method"].eq("lora")]
    pairs: list[tuple[str, str, pd.Series, pd.Series]] = []
    seed = reference(done, "seed")
    if seed is not None:
        rivals = lora[lora["trainable_params"] <= seed["trainable_params"]]
        if len(rivals):
            pairs.append(("seed", "", rivals.iloc[0], seed))
    full, scratch = reference(done, "full"), reference(done, "scratch")
    if full is not None and scratch is not None:
        pairs.append(("pretraining", "", full, scratch))
    proj = (
        lora[lora["placement"].eq("proj")].drop_duplicates(["rank", "policy"]).set_index(["rank", "policy"])
    )
    conv = lora[lora["placement"].isin(CONV_PLACEMENTS)].sort_values("rank", kind="mergesort")
    for (placement, shape, policy), rows in conv.groupby(["placement", "shape", "policy"], sort=True):
        for _, c in rows.iterrows():
            if (c["rank"], policy) in proj.index:
                pairs.append(("placement", f"{placement} {shape} {policy}", c, proj.loc[(c["rank"], policy)]))
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
