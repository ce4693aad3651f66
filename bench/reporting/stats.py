"""The statistics every table uses (scipy, statsmodels, numpy): t-intervals, paired differences
and tests, Holm's adjustment, the Pareto front and its paired-bootstrap probability.

Pairing: seed s of one configuration and seed s of another share the pretrained backbone, the
data order and the initialisation of their shared parts, so configurations of one setup are
compared seed by seed (on the seeds both have), not as independent samples.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping

import numpy as np
import pandas as pd
from scipy import stats
from statsmodels.stats.multitest import multipletests

LEVEL = 0.95  # every interval


BOOTSTRAP_REPLICATES = 2000


BOOTSTRAP_SEED = 0


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
