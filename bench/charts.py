"""The leaderboard's charts (altair): `python -m bench charts`, also run by `leaderboard`.

Each chart is written twice: self-contained HTML (the Vega JavaScript inlined through
vl-convert, so it opens offline) and PNG. Charts the records cannot support (no LoRA rows, no
per-class analysis) are skipped with a warning instead of failing the command.
"""

from __future__ import annotations

import argparse
import io
import logging
from pathlib import Path

import altair as alt
import numpy as np
import pandas as pd

from bench.aggregate import aggregate, config_key, is_tuning_trial, setup_of
from bench.records import load_records, write_atomic
from lorafit.errors import LorafitError

log = logging.getLogger(__name__)

TITLES = {
    "acc_vs_params": "Test accuracy vs trainable parameters",
    "acc_per_param": "Test accuracy per 1k trainable parameters",
    "rank_sweep": "LoRA rank sweep: test accuracy vs rank per placement",
    "per_class": "Per-class test accuracy: best LoRA vs full fine-tuning",
    "lr_sensitivity": "Learning-rate sensitivity: validation accuracy of the tuning trials",
    "tuning_curves": "Tuning curves: expected best validation accuracy vs number of candidates",
}

CI_NOTE = "mean over seeds, bars: 95% t-interval (clipped to 0–100%)"
# Fixed colours, so a family looks the same in every chart whatever else is present.
COLORS = {
    "full": "#4c4c4c",
    "scratch": "#9c9c9c",
    "head": "#9c755f",
    "seed post": "#e15759",
    "lora proj": "#4e79a7",
    "lora conv1": "#f28e2b",
    "lora conv2": "#59a14f",
    "lora conv3": "#76b7b2",
    "lora convs": "#edc948",
    "lora convs kxk": "#b07aa1",
    "lora all": "#ff9da7",
    "lora all kxk": "#d37295",
}
# The accuracy-vs-parameters charts colour by method, so methods compare directly at a budget.
METHOD_COLORS = {
    "full": "#4c4c4c",
    "scratch": "#9c9c9c",
    "head": "#9c755f",
    "seed post": "#e15759",
    "lora": "#4e79a7",
    "dora": "#f28e2b",
    "loha": "#59a14f",
    "lokr": "#b07aa1",
    "ia3": "#edc948",
    "oft": "#76b7b2",
}
SPARE_COLORS = [
    "#a0cbe8",
    "#ffbe7d",
    "#8cd17d",
    "#86bcb6",
    "#f1ce63",
    "#d4a6c8",
    "#fabfd2",
    "#d7b5a6",
    "#79706e",
    "#b6992d",
    "#499894",
    "#bab0ac",
]


def default_out(runs_dir: Path, study: str | None = None) -> Path:
    """RUNS/charts, or RUNS/charts/STUDY for one study (so a subset never overwrites the full set)."""
    return Path(runs_dir) / "charts" / study if study else Path(runs_dir) / "charts"


def save(chart: alt.TopLevelMixin, out_dir: Path, stem: str) -> list[Path]:
    """stem.html (JS inlined) and stem.png, written atomically."""
    html = chart.to_html(inline=True)
    if "cdn.jsdelivr" in html:  # a guard: the page must open offline (inlining is done by vl-convert)
        raise LorafitError(
            "altair wrote an HTML chart that loads JavaScript from a CDN; install vl-convert-python"
        )
    png = io.BytesIO()
    chart.save(png, format="png", scale_factor=2)
    paths = [out_dir / f"{stem}.html", out_dir / f"{stem}.png"]
    write_atomic(paths[0], html)
    write_atomic(paths[1], png.getvalue())
    return paths


def color(
    families: pd.Series, title: str = "method / placement", field: str = "family", colors: dict = COLORS
) -> alt.Color:
    """Colour by `field` with a fixed palette; unknown values take spare colours in name order."""
    present = sorted(set(families), key=lambda f: (list(colors).index(f) if f in colors else len(colors), f))
    spare = iter(SPARE_COLORS * 4)
    palette = [colors[f] if f in colors else next(spare) for f in present]
    return alt.Color(f"{field}:N", title=title, scale=alt.Scale(domain=present, range=palette))


def _clipped(df: pd.DataFrame) -> pd.DataFrame:
    """A t-interval can leave [0, 1] with few seeds; accuracy cannot, so the bars stop there."""
    return df.assign(acc_lo=df["acc_lo"].clip(0, 1), acc_hi=df["acc_hi"].clip(0, 1))


def _titled(
    chart: alt.TopLevelMixin,
    df: pd.DataFrame,
    title: str,
    subtitle: str | list[str],
    independent_y: bool = False,
) -> alt.TopLevelMixin:
    """One panel per setup (profile/data) when the records mix several; a title either way.
    subtitle: one line, or a list of lines (the setup then gets a line of its own)."""
    if df["setup"].nunique() > 1:
        chart = chart.facet(
            row=alt.Row("setup:N", title=None, header=alt.Header(labelAngle=0, labelAlign="left"))
        )
        if independent_y:
            chart = chart.resolve_scale(y="independent")
    elif isinstance(subtitle, list):
        subtitle = [df["setup"].iloc[0], *subtitle]
    else:
        subtitle = f"{df['setup'].iloc[0]} — {subtitle}"
    return chart.properties(title=alt.Title(title, subtitle=subtitle))


WIDTH, HEIGHT = 640, 380  # acc_vs_params, in pixels: the label layout below works in these units
LABEL_FONT, CHAR_PX, LINE_PX = 10, 5.6, 12


def _domains(df: pd.DataFrame) -> tuple[tuple[float, float], tuple[float, float]]:
    """Fixed (not 'nice') axis domains, so the label layout knows where every point lands."""
    x = df["trainable_params"].astype(float)
    y = pd.concat([df["acc_mean"], df["acc_lo"].dropna(), df["acc_hi"].dropna()]).astype(float)
    pad = max(float(y.max() - y.min()), 0.01) * 0.04
    # Room on the left of the smallest point for a label.
    return (float(x.min()) / 1.6, float(x.max()) * 1.15), (float(y.min()) - pad, float(y.max()) + pad)


def label_layout(
    df: pd.DataFrame, labelled: pd.Series, xdom: tuple[float, float], ydom: tuple[float, float]
) -> pd.DataFrame:
    """Where each labelled point's text goes so that no two labels and no label and point overlap.

    Greedy, in a fixed order (baselines first, then by parameters): the first free spot among right
    of the point, left of it, then further and further above/below on either side. Returns the
    label rows with label_x/label_y (data units), align, and leader (a line from point to text when
    the text moved off the point's height). Deterministic.
    """
    lx0, lx1 = np.log(xdom[0]), np.log(xdom[1])

    def px(x):
        return WIDTH * (np.log(x) - lx0) / (lx1 - lx0)

    def py(y):
        return HEIGHT * (ydom[1] - y) / (ydom[1] - ydom[0])

    points = [(px(x), py(y)) for x, y in zip(df["trainable_params"], df["acc_mean"])]
    boxes = [(x - 5, y - 5, x + 5, y + 5) for x, y in points]  # every point is an obstacle
    order = df[labelled].assign(_b=lambda d: ~d["baseline"]).sort_values(["_b", "trainable_params", "label"])
    offsets = [0] + [s * k * LINE_PX for k in range(1, 8) for s in (-1, 1)]
    rows = []
    for _, r in order.iterrows():
        x, y = px(r["trainable_params"]), py(r["acc_mean"])
        w = CHAR_PX * len(str(r["label"])) + 2
        chosen = None
        for dy in offsets:
            for side in (1, -1):
                left = x + 8 if side > 0 else x - 8 - w
                box = (left, y + dy - LINE_PX / 2, left + w, y + dy + LINE_PX / 2)
                inside = box[0] >= 0 and box[2] <= WIDTH + 60 and box[1] >= 0 and box[3] <= HEIGHT
                if inside and not any(
                    box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in boxes
                ):
                    chosen = (side, dy, box)
                    break
            if chosen:
                break
        side, dy, box = chosen or (1, 0, (x + 8, y - LINE_PX / 2, x + 8 + w, y + LINE_PX / 2))
        boxes.append(box)
        anchor = box[0] if side > 0 else box[2]
        rows.append(
            {
                "setup": r["setup"],
                "label": r["label"],
                "trainable_params": r["trainable_params"],
                "acc_mean": r["acc_mean"],
                "align": "left" if side > 0 else "right",
                "label_x": float(np.exp(lx0 + (anchor - 1 * side) / WIDTH * (lx1 - lx0))),
                "label_y": float(ydom[1] - (y + dy) / HEIGHT * (ydom[1] - ydom[0])),
                "leader": dy != 0,
            }
        )
    return pd.DataFrame(
        rows,
        columns=["setup", "label", "trainable_params", "acc_mean", "align", "label_x", "label_y", "leader"],
    )


def acc_vs_params(agg: pd.DataFrame) -> alt.TopLevelMixin:
    """Accuracy against parameters: interval bars, the Pareto front, points filled by P(front),
    baselines on top; the baselines and the front's members labelled without overlaps."""
    df = agg[agg["acc_mean"].notna() & agg["trainable_params"].notna()].sort_values(
        ["setup", "trainable_params", "label"]
    )
    df = _clipped(
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
        "seed slot" if p == "seed" else "baseline" if b else "proj" if p == "proj" else "conv layers"
        for b, p in zip(df["baseline"], df["placement"])
    ]
    xdom, ydom = _domains(df)
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
            domain=["proj", "conv layers", "seed slot", "baseline"],
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
    return _titled(
        chart,
        df,
        TITLES["acc_vs_params"],
        [
            f"{CI_NOTE}; dashed line: Pareto front of the means",
            "fill: probability of being on the front when seeds are resampled (paired bootstrap)",
        ],
    )


def acc_per_param(agg: pd.DataFrame) -> alt.TopLevelMixin:
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
    return _titled(
        chart,
        df,
        TITLES["acc_per_param"],
        "mean test accuracy / (trainable parameters / 1000)",
        independent_y=True,
    )


def rank_sweep(agg: pd.DataFrame) -> alt.TopLevelMixin | None:
    df = agg[agg["method"].eq("lora") & agg["rank"].gt(0) & agg["acc_mean"].notna()]
    if df.empty:
        return None
    df = _clipped(
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
    return _titled(chart, df, TITLES["rank_sweep"], CI_NOTE)


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
    return _titled(chart, df, TITLES["per_class"], "mean over seeds of each class's recall")


def sensitivity_frame(records: list[dict]) -> pd.DataFrame:
    """One row per tuning trial (completed, or pruned at its last validation accuracy)."""
    rows = []
    for r in records:
        if not is_tuning_trial(r) or r["run"].get("status") not in ("complete", "pruned"):
            continue
        c = r["config"]
        head_lr = c.get("head_lr") or c["lr"]
        role = (r.get("tuning") or {}).get("role")
        if c["lr"] == 0:  # the probe's fallback (the rest at rest) has no place on a log axis
            continue
        rows.append(
            {
                "configuration": f"{c['name']}-r{c['rank']}" if c.get("rank") else c["name"],
                "rate": head_lr if c["method"] == "head" else c["lr"],
                "head_lr": head_lr,
                "val_acc": r["metrics"].get("val_acc"),
                "trial": r["run"].get("trial"),
                "outcome": role or ("pruned" if r["run"]["status"] == "pruned" else "completed"),
            }
        )
    df = pd.DataFrame(rows)
    return df.sort_values(["configuration", "trial"]).reset_index(drop=True) if len(df) else df


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
        if not isinstance(s, dict) or s.get("protocol") != "design":
            continue
        for n, value in enumerate(s["curve"], start=1):
            rows.append(
                {"configuration": r["label"], "family": r["family"], "candidates": n, "val_acc": value}
            )
    return pd.DataFrame(rows)


def tuning_curves(agg: pd.DataFrame) -> alt.TopLevelMixin | None:
    """Each row's expected-maximum tuning curve (Tang et al.'s unbiased estimator over its
    evaluated candidates): flat at the right end means more candidates would not have helped."""
    df = tuning_curve_frame(agg)
    if df.empty:
        return None
    chart = (
        alt.Chart(df)
        .mark_line(point=alt.OverlayMarkDef(size=18))
        .encode(
            x=alt.X("candidates:Q", title="candidates evaluated (drawn at random from the tried set)"),
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


def render(records: list[dict], out_dir: Path, agg: pd.DataFrame | None = None) -> list[Path]:
    """Write every chart the records support into out_dir; returns the files written, in a fixed order.
    agg: aggregate(records), if already computed."""
    if not records:
        raise LorafitError("no records to chart; run `python -m bench run grid` first")
    records = sorted(records, key=lambda r: (r["run"]["id"], r["run"].get("study") or ""))
    agg = aggregate(records) if agg is None else agg
    out_dir = Path(out_dir)
    written = []
    charts = {
        "acc_vs_params": acc_vs_params(agg) if agg["acc_mean"].notna().any() else None,
        "acc_per_param": acc_per_param(agg) if agg["acc_per_1k"].notna().any() else None,
        "rank_sweep": rank_sweep(agg),
        "per_class": per_class(records, agg),
        "lr_sensitivity": lr_sensitivity(records),
        "tuning_curves": tuning_curves(agg),
    }
    reasons = {
        "acc_vs_params": "no configuration has a test accuracy",
        "acc_per_param": "no configuration has a test accuracy",
        "rank_sweep": "no LoRA configuration with a result",
        "per_class": "no LoRA configuration with per-class analysis",
        "lr_sensitivity": "no tuning-stage records (fixed rates)",
        "tuning_curves": "no row tuned by the designed-candidate protocol",
    }
    for stem, chart in charts.items():
        if chart is None:
            log.warning("chart %s skipped: %s", stem, reasons[stem])
            continue
        written += save(chart, out_dir, stem)
    return written


# --------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--runs-dir", default="runs", help="where the records are (default ./runs)")
    parser.add_argument("--study", default=None, help="only this study's records (default: every study)")
    parser.add_argument(
        "--out",
        default=None,
        help="folder for the chart files (default RUNS/charts, RUNS/charts/STUDY with --study)",
    )


def main(args: argparse.Namespace) -> int:
    runs = Path(args.runs_dir)
    records = load_records(runs, args.study)
    if not records:
        where = runs / "records" / args.study if args.study else runs / "records"
        raise LorafitError(f"no records under {where}; run `python -m bench run grid` first")
    out = Path(args.out) if args.out else default_out(runs, args.study)
    try:
        paths = render(records, out)
    except OSError as e:
        raise LorafitError(f"cannot write charts into {out} ({e.strerror}); pass a writable --out") from None
    stems = sorted({p.stem for p in paths}, key=list(TITLES).index)
    print(f"charts: {', '.join(stems) or 'none'} (HTML + PNG) in {out}")
    return 0
