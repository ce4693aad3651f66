"""What every chart shares: the registry (one `@chart` entry per chart: its file stem, title, and
why it is skipped when the records cannot support it), fixed palettes, facets per setup, and the
files (self-contained HTML with the Vega JavaScript inlined through vl-convert, so it opens
offline, and PNG)."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import altair as alt
import pandas as pd

from bench.records import write_atomic
from lorafit.errors import LorafitError

log = logging.getLogger(__name__)


TITLES: dict[str, str] = {}  # stem -> title, in display order (filled by @chart)


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


def clipped(df: pd.DataFrame) -> pd.DataFrame:
    """A t-interval can leave [0, 1] with few seeds; accuracy cannot, so the bars stop there."""
    return df.assign(acc_lo=df["acc_lo"].clip(0, 1), acc_hi=df["acc_hi"].clip(0, 1))


def titled(
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


@dataclass(frozen=True)
class Chart:
    stem: str
    title: str
    draw: Callable[[list[dict], pd.DataFrame], alt.TopLevelMixin | None]  # None: nothing to draw
    skipped: str  # why it is not drawn when draw returns None


CHARTS: dict[str, Chart] = {}


def chart(stem: str, title: str, skipped: str, uses: str = "agg"):
    """Register a chart function. uses: what it takes — "agg" (the aggregate), "records", or "both"
    (records, agg). Registration order is the display order."""

    def register(fn):
        calls = {
            "agg": lambda records, agg: fn(agg),
            "records": lambda records, agg: fn(records),
            "both": fn,
        }
        CHARTS[stem] = Chart(stem, title, calls[uses], skipped)
        TITLES[stem] = title
        return fn

    return register
