"""The accuracy charts: accuracy vs trainable parameters (with the Pareto front), accuracy per
parameter, the LoRA rank sweep, and per-class accuracy. One registry entry each."""

from __future__ import annotations

import altair as alt
import pandas as pd

from bench.reporting.aggregate import config_key, setup_of
from bench.reporting.chartkit import CI_NOTE, METHOD_COLORS, TITLES, chart, clipped, color, titled
from bench.reporting.labels import HEIGHT, LABEL_FONT, WIDTH, domains, label_layout


@chart(
    "acc_vs_params",
    "Test accuracy vs trainable parameters",
    "no configuration has a test accuracy",
)
def acc_vs_params(agg: pd.DataFrame) -> alt.TopLevelMixin | None:
    """Accuracy against parameters: interval bars, the Pareto front, points filled by P(front),
    baselines on top; the baselines and the front's members labelled without overlaps."""
    if not agg["acc_mean"].notna().any():
        return None
    df = agg[agg["acc_mean"].notna() & agg["trainable_params"].notna()].sort_values(
        ["setup", "trainable_params", "label"]
    )
    df = clipped(
        df[
            [
                "setup",
                "label",
                "family",
                "method_family",
                "method",
                "placement",
                "rank",
                "trainable_params",
                "pct_full",
                "n",
                "acc_mean",
                "acc_lo",
                "acc_hi",
                "pareto",
                "p_front",
                "baseline",
            ]
        ]
    )
    df["kind"] = df["baseline"].map({True: "baseline", False: "adapter"})
    df["where"] = [
        "post-proj" if p == "post-proj" else "baseline" if b else "proj" if p == "proj" else "conv layers"
        for b, p in zip(df["baseline"], df["placement"])
    ]
    xdom, ydom = domains(df)
    placed = pd.concat(
        [
            label_layout(part, part["pareto"] | part["baseline"], xdom, ydom)
            for _, part in df.groupby("setup", sort=True)
        ],
        ignore_index=True,
    )
    # One data set for every layer (a faceted chart needs it at the top level).
    df = df.merge(
        placed[["setup", "label", "align", "label_x", "label_y", "leader"]], how="left", on=["setup", "label"]
    )
    df["leader"] = df["leader"].fillna(False).astype(bool)
    x = alt.X(
        "trainable_params:Q",
        scale=alt.Scale(type="log", domain=list(xdom), nice=False),
        axis=alt.Axis(format="~s"),
        title="trainable parameters (log scale)",
    )
    y = alt.Y(
        "acc_mean:Q",
        title="test accuracy",
        axis=alt.Axis(format=".1~%"),
        scale=alt.Scale(domain=list(ydom), nice=False, zero=False),
    )
    colors = color(df["method_family"], "method", "method_family", METHOD_COLORS)
    strokes = alt.Stroke("method_family:N", title="method", scale=colors.to_dict()["scale"])
    base = alt.Chart().encode(x=x)
    bars = (
        base.transform_filter("isValid(datum.acc_lo)")
        .mark_rule(opacity=0.6)
        .encode(y="acc_lo:Q", y2="acc_hi:Q", color=colors)
    )
    front = (
        base.transform_filter("datum.pareto")
        .mark_line(color="black", strokeDash=[5, 3])
        .encode(y="acc_mean:Q", order="trainable_params:Q")
    )
    tooltip = [
        "label",
        "family",
        alt.Tooltip("trainable_params:Q", format=","),
        alt.Tooltip("acc_mean:Q", format=".2%"),
        alt.Tooltip("acc_lo:Q", format=".2%"),
        alt.Tooltip("acc_hi:Q", format=".2%"),
        "n",
        "pareto",
        alt.Tooltip("p_front:Q", format=".2f", title="P(front)"),
    ]
    p_scale = alt.Scale(domain=[0, 1], range=[0.12, 1])
    fill = alt.FillOpacity("p_front:Q", scale=p_scale, legend=None)
    # Vega-Lite draws no legend for fillOpacity: an empty layer with the same scale on opacity draws it.
    p_legend = (
        base.transform_filter("false")
        .mark_point(filled=True, size=70, color="#4e79a7")
        .encode(
            y=y,
            opacity=alt.Opacity(
                "p_front:Q",
                title="P(on front)",
                scale=p_scale,
                legend=alt.Legend(values=[0, 0.5, 1], format=".1f"),
            ),
        )
    )
    shape = alt.Shape(
        "where:N",
        title="placement",
        scale=alt.Scale(
            domain=["proj", "conv layers", "post-proj", "baseline"],
            range=["circle", "triangle-up", "diamond", "square"],
        ),
    )

    def points(kind: str, size: int) -> alt.Chart:
        return (
            base.transform_filter(f"datum.kind == '{kind}'")
            .mark_point(filled=True, size=size, strokeWidth=1.6, opacity=1)
            .encode(y=y, color=colors, stroke=strokes, fillOpacity=fill, shape=shape, tooltip=tooltip)
        )

    labels = alt.Chart().transform_filter("isValid(datum.label_x)")
    leaders = (
        labels.transform_filter("datum.leader")
        .mark_rule(color="#555", strokeWidth=0.8)
        .encode(x="trainable_params:Q", y="acc_mean:Q", x2="label_x:Q", y2="label_y:Q")
    )
    texts = [
        labels.transform_filter(f"datum.align == '{a}'")
        .mark_text(align=a, baseline="middle", fontSize=LABEL_FONT)
        .encode(x="label_x:Q", y="label_y:Q", text="label:N")
        for a in ("left", "right")
    ]
    # Draw order: bars, front, adapters, baselines (never hidden under an adapter), leaders, labels.
    chart = alt.layer(
        bars, front, points("adapter", 70), points("baseline", 110), leaders, *texts, p_legend, data=df
    ).properties(width=WIDTH, height=HEIGHT)
    return titled(
        chart,
        df,
        TITLES["acc_vs_params"],
        [
            f"{CI_NOTE}; dashed line: Pareto front of the means",
            "fill: probability of being on the front when seeds are resampled (paired bootstrap)",
        ],
    )


@chart(
    "acc_per_param",
    "Test accuracy per 1k trainable parameters",
    "no configuration has a test accuracy",
)
def acc_per_param(agg: pd.DataFrame) -> alt.TopLevelMixin | None:
    if not agg["acc_per_1k"].notna().any():
        return None
    df = agg[agg["acc_per_1k"].notna()].sort_values(
        ["setup", "acc_per_1k", "label"], ascending=[True, False, True]
    )
    df = df[["setup", "label", "method_family", "trainable_params", "acc_mean", "acc_per_1k"]].assign(
        points_per_1k=lambda d: 100 * d["acc_per_1k"]
    )
    chart = (
        alt.Chart(df)
        .mark_bar()
        .encode(
            x=alt.X("points_per_1k:Q", title="test accuracy (% points) per 1,000 trainable parameters"),
            y=alt.Y("label:N", sort=list(dict.fromkeys(df["label"])), title=None),
            color=color(df["method_family"], "method", "method_family", METHOD_COLORS),
            tooltip=[
                "label",
                alt.Tooltip("trainable_params:Q", format=","),
                alt.Tooltip("acc_mean:Q", format=".2%"),
                alt.Tooltip("points_per_1k:Q", format=".3f"),
            ],
        )
        .properties(width=520)
    )
    return titled(
        chart,
        df,
        TITLES["acc_per_param"],
        "mean test accuracy / (trainable parameters / 1000)",
        independent_y=True,
    )


@chart(
    "rank_sweep",
    "LoRA rank sweep: test accuracy vs rank per placement",
    "no LoRA configuration with a result",
)
def rank_sweep(agg: pd.DataFrame) -> alt.TopLevelMixin | None:
    df = agg[agg["method"].eq("lora") & agg["rank"].gt(0) & agg["acc_mean"].notna()]
    if df.empty:
        return None
    df = clipped(
        df.sort_values(["setup", "family", "rank"])[
            ["setup", "label", "family", "rank", "trainable_params", "n", "acc_mean", "acc_lo", "acc_hi"]
        ]
    )
    # Dodge the series a little along the (log) rank axis so their interval bars do not hide each other.
    families = sorted(df["family"].unique())
    offset = df["family"].map({f: i - (len(families) - 1) / 2 for i, f in enumerate(families)})
    df["rank_x"] = df["rank"] * 2.0 ** (0.04 * offset)
    ranks = sorted(df["rank"].unique())
    x = alt.X(
        "rank_x:Q",
        scale=alt.Scale(type="log", base=2, domain=[ranks[0] / 1.3, ranks[-1] * 1.3]),
        axis=alt.Axis(values=ranks, format="d"),
        title="LoRA rank (series dodged slightly)",
    )
    base = alt.Chart().encode(x=x, color=color(df["family"], "placement"))
    bars = (
        base.transform_filter("isValid(datum.acc_lo)")
        .mark_rule(opacity=0.6)
        .encode(y="acc_lo:Q", y2="acc_hi:Q")
    )
    lines = base.mark_line(point=alt.OverlayMarkDef(filled=True, size=60)).encode(
        y=alt.Y(
            "acc_mean:Q", title="test accuracy", axis=alt.Axis(format=".1~%"), scale=alt.Scale(zero=False)
        ),
        tooltip=[
            "label",
            "rank",
            alt.Tooltip("trainable_params:Q", format=","),
            alt.Tooltip("acc_mean:Q", format=".2%"),
            "n",
        ],
    )
    chart = alt.layer(bars, lines, data=df).properties(width=560, height=360)
    return titled(chart, df, TITLES["rank_sweep"], CI_NOTE)


def per_class_frame(records: list[dict], agg: pd.DataFrame) -> pd.DataFrame:
    """Long table (setup, configuration, class, accuracy) for the best LoRA row and the full row of
    each setup."""
    rows = []
    for setup, part in agg[agg["acc_mean"].notna()].groupby("setup", sort=True):
        picks = [part[part["method"].eq(m)] for m in ("lora", "full")]
        for pick in (p.iloc[0] for p in picks if not p.empty):  # agg is sorted by accuracy
            runs = [
                r
                for r in records
                if setup_of(r) == setup
                and config_key(r) == pick["key"]
                and r.get("analysis", {}).get("per_class_acc")
            ]
            if not runs:
                continue
            classes = runs[0]["analysis"]["classes"]
            # Mean over seeds per class; pandas skips the NaN of a class absent from a test split.
            means = pd.DataFrame([r["analysis"]["per_class_acc"] for r in runs], dtype=float).mean(axis=0)
            who = f"{pick['label']} ({fmt_pct(pick['acc_mean'])} overall, n={len(runs)})"
            rows += [
                {"setup": setup, "configuration": who, "class": c, "class_index": i, "accuracy": means[i]}
                for i, c in enumerate(classes)
            ]
    return pd.DataFrame(rows)


def fmt_pct(x: float) -> str:
    return f"{100 * x:.2f}%"


@chart(
    "per_class",
    "Per-class test accuracy: best LoRA vs full fine-tuning",
    "no LoRA configuration with per-class analysis",
    uses="both",
)
def per_class(records: list[dict], agg: pd.DataFrame) -> alt.TopLevelMixin | None:
    df = per_class_frame(records, agg)
    if df.empty or not agg["method"].eq("lora").any():
        return None
    order = list(dict.fromkeys(df.sort_values("class_index")["class"]))
    chart = (
        alt.Chart(df)
        .mark_bar()
        .encode(
            x=alt.X("class:N", sort=order, title="class", axis=alt.Axis(labelAngle=0)),
            xOffset=alt.XOffset("configuration:N"),
            y=alt.Y(
                "accuracy:Q",
                title="test accuracy (recall)",
                axis=alt.Axis(format=".0%"),
                scale=alt.Scale(domain=[0, 1]),
            ),
            color=alt.Color("configuration:N", title=None, legend=alt.Legend(orient="top")),
            tooltip=["class", "configuration", alt.Tooltip("accuracy:Q", format=".1%")],
        )
        .properties(width=max(16 * len(order), 300), height=260)
    )
    return titled(chart, df, TITLES["per_class"], "mean over seeds of each class's recall")
