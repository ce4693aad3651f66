"""What every chart shares: the registry (one `@chart` entry per chart: its file stem, title, and
why it is skipped when the records cannot support it), fixed palettes, facets per setup, and the
files (HTML and PNG). The HTML opens offline: the Vega JavaScript comes from vl-convert and is
written once per chart folder, beside the pages that load it, not inlined into each (~0.9 MB a
page)."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import altair as alt
import jinja2
import pandas as pd
import vl_convert

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


# Altair's "inline" page, with the bundle loaded from a file beside it instead of inlined. A
# classic script (not a module), so browsers run it from file:// too.
BUNDLE = "vega-embed-{version}.js"
PAGE = jinja2.Template(
    """\
<!DOCTYPE html>
<html>
<head>
  <meta charset="UTF-8">
  <style>
    #{{ output_div }}.vega-embed { width: 100%; display: flex; }
    #{{ output_div }}.vega-embed details, #{{ output_div }}.vega-embed details summary { position: relative; }
  </style>
  <script type="text/javascript" src="BUNDLE"></script>
</head>
<body>
<div class="vega-visualization" id="{{ output_div }}"></div>
<script type="text/javascript">
  const spec = {{ spec }};
  const embedOpt = {{ embed_options }};
  vegaEmbed('#{{ output_div }}', spec, embedOpt).catch(console.error);
</script>
</body>
</html>
""".replace("BUNDLE", BUNDLE.format(version="v{{ vegalite_version }}"))
)


def write_bundle(out_dir: Path) -> Path:
    """The vega-embed bundle (Vega, Vega-Lite, vega-embed) the folder's pages load, from vl-convert
    (no network), for the Vega-Lite version altair writes."""
    path = out_dir / BUNDLE.format(version=f"v{alt.VEGALITE_VERSION}")
    major_minor = "v" + "_".join(alt.VEGALITE_VERSION.split(".")[:2])
    script = vl_convert.javascript_bundle(vl_version=major_minor)
    if not path.exists() or path.read_text() != script:
        write_atomic(path, script)
    return path


def save(chart: alt.TopLevelMixin, out_dir: Path, stem: str) -> list[Path]:
    """stem.html and stem.png, written atomically; the script bundle the page loads beside them."""
    write_bundle(out_dir)
    html = chart.to_html(template=PAGE)
    if "cdn.jsdelivr" in html:  # a guard: the page must open offline
        raise LorafitError("altair wrote an HTML chart that loads JavaScript from a CDN")
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
