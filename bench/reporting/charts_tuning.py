"""The tuning charts: validation accuracy against the rates tried, and the expected-maximum tuning
curves. One registry entry each."""

from __future__ import annotations

import altair as alt
import pandas as pd

from bench.reporting import evidence
from bench.reporting.aggregate import is_tuning_trial
from bench.reporting.chartkit import TITLES, chart, color
from lorafit.config import head_rate, label


def sensitivity_frame(records: list[dict]) -> pd.DataFrame:
    """One row per tuning trial (completed, or pruned at its last validation accuracy)."""
    rows = []
    for r in records:
        if not is_tuning_trial(r) or r["run"].get("status") not in ("complete", "pruned"):
            continue
        c = r["config"]
        head_lr = head_rate(c["lr"], c.get("head_lr"))
        role = (r.get("tuning") or {}).get("role")
        if c["lr"] == 0:  # the probe's fallback (the rest at rest) has no place on a log axis
            continue
        rows.append(
            {
                "configuration": label(c["name"], c.get("rank")),
                "rate": head_lr if c["method"] == "head" else c["lr"],
                "head_lr": head_lr,
                "val_acc": r["metrics"].get("val_acc"),
                "trial": r["run"].get("trial"),
                "outcome": role or ("pruned" if r["run"]["status"] == "pruned" else "completed"),
            }
        )
    df = pd.DataFrame(rows)
    return df.sort_values(["configuration", "trial"]).reset_index(drop=True) if len(df) else df


@chart(
    "lr_sensitivity",
    "Learning-rate sensitivity: validation accuracy of the tuning trials",
    "no tuning-stage records (fixed rates)",
    uses="records",
)
def lr_sensitivity(records: list[dict]) -> alt.TopLevelMixin | None:
    """Validation accuracy against the tuned rate, one panel per configuration: how forgiving each
    method is. x: the adapter's (or backbone's) rate, the head's for the probe; colour: the head's."""
    df = sensitivity_frame(records)
    if df.empty:
        return None
    chart = (
        alt.Chart(df)
        .mark_point(size=60, opacity=0.9, filled=True)
        .encode(
            x=alt.X(
                "rate:Q",
                scale=alt.Scale(type="log"),
                # grid lines at the decades only: a line at every minor tick of every panel
                # made the PNG of a 36-panel grid 4.6 MB
                axis=alt.Axis(format=".0e", values=[10.0**k for k in range(-6, 1)]),
                title="learning rate",
            ),
            shape=alt.Shape(
                "outcome:N", title=None, sort=["completed", "pruned", "design", "extension", "sensitivity"]
            ),
            y=alt.Y(
                "val_acc:Q",
                title="validation accuracy",
                axis=alt.Axis(format=".0%"),
                scale=alt.Scale(zero=False),
            ),
            color=alt.Color(
                "head_lr:Q",
                scale=alt.Scale(type="log", scheme="viridis"),
                title="head lr",
                legend=alt.Legend(format=".0e"),
            ),
            tooltip=[
                "configuration",
                "trial",
                "outcome",
                alt.Tooltip("rate:Q", format=".2e"),
                alt.Tooltip("head_lr:Q", format=".2e"),
                alt.Tooltip("val_acc:Q", format=".2%"),
            ],
        )
        .properties(width=180, height=140)
        .facet(facet=alt.Facet("configuration:N", title=None), columns=4)
    )
    subtitle = [
        "each configuration's tuning trials; x: the adapter's (or backbone's) rate, the head's for the probe",
        "pruned trials (first protocol) at their last validation accuracy; the probe's fallback (lr 0) is"
        " in the leaderboard's tuning table",
    ]
    return chart.properties(title=alt.Title(TITLES["lr_sensitivity"], subtitle=subtitle))


def tuning_curve_frame(agg: pd.DataFrame) -> pd.DataFrame:
    """One row per (configuration, n): the expected best validation accuracy of n candidates."""
    rows = []
    for _, r in agg.iterrows():
        s = r.get("selection")
        if not evidence.is_design(s):
            continue
        for n, value in enumerate(s["curve"], start=1):
            rows.append(
                {"configuration": r["label"], "family": r["family"], "candidates": n, "val_acc": value}
            )
    return pd.DataFrame(rows)


@chart(
    "tuning_curves",
    "Tuning curves: expected best validation accuracy vs number of candidates",
    "no row tuned by the designed-candidate protocol",
)
def tuning_curves(agg: pd.DataFrame) -> alt.TopLevelMixin | None:
    """Each row's expected-maximum tuning curve (Tang et al.'s unbiased estimator over its
    designed candidates, extensions and fallback): flat at the right end means more candidates
    would not have helped."""
    df = tuning_curve_frame(agg)
    if df.empty:
        return None
    chart = (
        alt.Chart(df)
        .mark_line(point=alt.OverlayMarkDef(size=18))
        .encode(
            x=alt.X(
                "candidates:Q", title="designed candidates evaluated (drawn at random from the designed set)"
            ),
            y=alt.Y(
                "val_acc:Q",
                title="expected best validation accuracy",
                axis=alt.Axis(format=".1%"),
                scale=alt.Scale(zero=False),
            ),
            color=color(df["family"]),
            detail="configuration:N",
            tooltip=["configuration", "candidates", alt.Tooltip("val_acc:Q", format=".2%")],
        )
        .properties(width=520, height=320)
    )
    subtitle = "one line per configuration; the tuning margin is the rise over the right half"
    return chart.properties(title=alt.Title(TITLES["tuning_curves"], subtitle=subtitle))
