"""The seed post's analysis of one run: `python -m bench report RUN_ID`.

sklearn's classification report, a confusion-matrix heatmap and the most confused
(true -> predicted) pairs, all from the confusion matrix stored in the record: labels and
predictions are rebuilt from it exactly (every cell (t, p) is `count` samples of true t
predicted p), so no model or data is loaded. Printed, and written next to the record as
`<stem>.report.md`, `<stem>.confusion.html` and `<stem>.confusion.png`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import altair as alt
import numpy as np
import pandas as pd

from bench.records import find_record, record_path, write_atomic
from bench.reporting.chartkit import save
from lorafit import metrics
from lorafit.backbones import DEFAULT, is_conv_placement
from lorafit.errors import LorafitError

TOP_K = 15


def labels_from_confusion(confusion: list[list[int]] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(y_true, y_pred) with exactly the given confusion matrix (rows = true class)."""
    cm = np.asarray(confusion, dtype=np.int64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or (cm < 0).any():
        raise LorafitError(
            f"stored confusion matrix has shape {cm.shape}; expected a square matrix of counts — "
            "re-run the cell"
        )
    k = cm.shape[0]
    y_true = np.repeat(np.repeat(np.arange(k), k), cm.ravel())
    y_pred = np.repeat(np.tile(np.arange(k), k), cm.ravel())
    return y_true, y_pred


def record_file(runs_dir: Path, record: dict) -> Path:
    """Where the record lives: its usual place, else wherever a file of that id is under records/."""
    path = record_path(runs_dir, record["run"].get("study") or "", record["run"]["id"])
    if path.exists():
        return path
    found = sorted((runs_dir / "records").rglob(f"{record['run']['id']}.json"))
    return found[0] if found else path


def heatmap(cm: np.ndarray, classes: list[str], title: str) -> alt.Chart:
    """Rows normalised to rates (so rare classes are as visible as common ones); counts in the tooltip."""
    support = cm.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = np.where(support > 0, cm / np.maximum(support, 1), np.nan)
    k = len(classes)
    df = pd.DataFrame(
        {
            "true": np.repeat(classes, k),
            "predicted": np.tile(classes, k),
            "count": cm.ravel(),
            "rate": rate.ravel(),
        }
    )
    df = df[df["count"] > 0]  # empty cells stay white; the explicit domains keep every class on both axes
    size = max(8, min(14, 900 // max(k, 1)))
    return (
        alt.Chart(df)
        .mark_rect()
        .encode(
            x=alt.X(
                "predicted:N",
                sort=list(classes),
                scale=alt.Scale(domain=list(classes)),
                title="predicted class",
                axis=alt.Axis(labelAngle=0, orient="top"),
            ),
            y=alt.Y("true:N", sort=list(classes), scale=alt.Scale(domain=list(classes)), title="true class"),
            color=alt.Color(
                "rate:Q",
                title="share of true class",
                scale=alt.Scale(scheme="blues", domain=[0, 1]),
                legend=alt.Legend(format=".0%"),
            ),
            tooltip=["true", "predicted", "count", alt.Tooltip("rate:Q", format=".1%")],
        )
        .properties(
            width=size * k,
            height=size * k,
            title=alt.Title(
                title, subtitle="rows: true class; colour: share of that class's test images; white: none"
            ),
        )
    )


def _fmt(x, digits: int = 2) -> str:
    return "—" if x is None or pd.isna(x) else f"{100 * x:.{digits}f}%"


def render(record: dict, chart_name: str | None = None) -> str:
    """The report as markdown (chart_name: the confusion chart files' common stem, for the links)."""
    run, cfg, m, analysis = (
        record["run"],
        record.get("config", {}),
        record.get("metrics", {}),
        record.get("analysis") or {},
    )
    if not analysis.get("confusion"):
        why = f"it {run.get('status', 'failed')}" + (f" ({run['error']})" if run.get("error") else "")
        raise LorafitError(f"run {run['id']} has no analysis to report because {why}; re-run its cell")
    classes = [str(c) for c in analysis["classes"]]
    y_true, y_pred = labels_from_confusion(analysis["confusion"])
    summary = metrics.summary(y_true, y_pred)
    rank = f", rank {cfg.get('rank')}" if cfg.get("rank") else ""
    conv = is_conv_placement(cfg.get("backbone", DEFAULT), cfg.get("placement", "none"))
    shape = f", shape {cfg.get('shape')}" if conv else ""  # conv only
    lines = [
        f"# Run {run['id']}",
        "",
        f"- Configuration: {cfg.get('name')} — method {cfg.get('method')}, "
        f"placement {cfg.get('placement')}{rank}{shape}, "
        f"policy {cfg.get('policy')}, seed {cfg.get('seed')}, lr {cfg.get('lr')}, "
        f"{cfg.get('epochs')} epochs",
        f"- Data: profile {cfg.get('profile')}, {cfg.get('source')} → {cfg.get('target')}, protocol "
        f"{record.get('env', {}).get('protocol') or cfg.get('protocol')}; {len(y_true):,} test images, "
        f"{len(classes)} classes",
        f"- Status: {run.get('status')}"
        + (f" ({run['error']})" if run.get("error") else "")
        + f"; study {run.get('study')}, created {run.get('created_at')}, git {run.get('git_sha')}",
        f"- Test accuracy {_fmt(summary['acc'])}, balanced accuracy {_fmt(summary['balanced_acc'])}, "
        f"macro-F1 {_fmt(summary['macro_f1'])}; source accuracy {_fmt(m.get('source_acc_before'))} before, "
        f"{_fmt(m.get('source_acc_after'))} after adaptation"
        + (
            f"; {int(m['trainable_params']):,} trainable of {int(m['total_params']):,} parameters"
            if m.get("trainable_params") is not None and m.get("total_params") is not None
            else ""
        ),
        "",
        "## Classification report",
        "",
        "```",
        metrics.report(y_true, y_pred, classes).rstrip(),
        "```",
        "",
        f"## The {TOP_K} most confused pairs",
        "",
    ]
    pairs = metrics.top_confusions(y_true, y_pred, classes, k=TOP_K)
    if pairs:
        lines += ["| # | true | predicted | count | share of true class |", "|--:|:-:|:-:|--:|--:|"]
        lines += [
            f"| {i} | {p['true']} | {p['pred']} | {p['count']} | {100 * p['rate']:.1f}% |"
            for i, p in enumerate(pairs, start=1)
        ]
    else:
        lines.append("No mistakes: every test image was classified correctly.")
    if chart_name:
        lines += [
            "",
            "## Confusion matrix",
            "",
            f"[HTML]({chart_name}.html) · [PNG]({chart_name}.png)",
            "",
            f"![confusion matrix]({chart_name}.png)",
        ]
    return "\n".join(lines) + "\n"


def write(record: dict, path: Path) -> list[Path]:
    """The report and the confusion chart next to the record file `path`; returns the files written."""
    stem = path.name.removesuffix(".json")
    text = render(record, f"{stem}.confusion")
    analysis = record["analysis"]
    cm = np.asarray(analysis["confusion"], dtype=np.int64)
    chart = heatmap(cm, [str(c) for c in analysis["classes"]], f"Confusion matrix — {record['run']['id']}")
    files = save(chart, path.parent, f"{stem}.confusion")
    report_path = path.parent / f"{stem}.report.md"
    write_atomic(report_path, text)
    return [report_path, *files]


# --------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_id", metavar="RUN_ID", help="a record's run id (a unique prefix is enough)")
    parser.add_argument("--runs-dir", default="runs", help="where the records are (default ./runs)")


def main(args: argparse.Namespace) -> int:
    runs = Path(args.runs_dir)
    record = find_record(runs, args.run_id)
    path = record_file(runs, record)
    try:
        files = write(record, path)
    except OSError as e:
        raise LorafitError(
            f"cannot write the report next to {path} ({e.strerror}); check the folder's permissions"
        ) from None
    print(files[0].read_text(), end="")
    print(f"\nwritten: {', '.join(str(f) for f in files)}")
    return 0
