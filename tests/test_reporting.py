"""Reporting: leaderboard aggregation and CIs, Pareto front, deterministic markdown, charts, per-run report."""

import argparse
import csv
import hashlib
import json
import math
import os
import random
import re
import shlex
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from grids import REPORT_GRID

from bench.protocol import TuneSpec
from bench.records import load_records, record_path, write_json
from bench.reporting import aggregate as agg
from bench.reporting import charts, columns, compute, evidence, fmt, labels, leaderboard, stats
from bench.reporting import run_report as report
from bench.reporting.charts_accuracy import acc_vs_params, per_class_frame
from lorafit import metrics
from lorafit.errors import LorafitError

ROOT = Path(__file__).resolve().parents[1]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CLASSES = ["0", "1", "2", "a"]


def make_record(
    name="lora-proj",
    method="lora",
    placement="proj",
    rank=8,
    policy="lora",
    shape="1x1",
    seed=0,
    acc=0.8,
    params=1_000,
    status="complete",
    error=None,
    protocol="resplit",
    per_class=None,
    created="2026-01-01T00:00:00+00:00",
):
    """A record with the fields the reporting reads; status 'failed' records carry no metrics."""
    config = {
        "name": name,
        "method": method,
        "placement": placement,
        "shape": shape,
        "rank": rank,
        "alpha": 1.0,
        "policy": policy,
        "seed": seed,
        "profile": "local",
        "source": "mnist",
        "target": "emnist-byclass",
        "protocol": protocol,
        "lr": 1e-3,
        "epochs": 4,
        "batch_size": 256,
        "patience": 0,
        "pretrain_epochs": 2,
        "widths": [32, 64, 128],
    }
    cell = f"{name}-r{rank}" if rank else name
    run = {
        "id": f"{cell}-s{seed}-{hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8]}",
        "study": "grid-local",
        "trial": seed,
        "created_at": created,
        "git_sha": "abc123",
        "status": status,
        "error": error,
    }
    env = {
        "python": "3.11",
        "torch": "2.x",
        "torchvision": "0.x",
        "optuna": "5.0",
        "device": "cpu",
        "cpu": "Test CPU",
        "gpu": None,
        "bf16": False,
        "threads": 2,
        "protocol": protocol,
    }
    record = {"run": run, "config": config, "metrics": {}, "curve": [], "analysis": {}, "env": env}
    if status != "failed":
        record["metrics"] = {
            "test_acc": acc,
            "test_balanced_acc": acc - 0.01,
            "source_acc_before": 0.99,
            "source_acc_after": None if method == "scratch" else 0.95,
            "trainable_params": params,
            "total_params": 100_000,
            "train_s": 2.0,
            "train_images": 700,
            "val_images": 100,
            "test_images": 200,
        }
        pc = per_class or [acc] * len(CLASSES)
        record["analysis"] = {
            "classes": CLASSES,
            "per_class_acc": pc,
            "confusion": np.diag([10] * len(CLASSES)).tolist(),
        }
    return record


def grid_records():
    """Baselines, a LoRA proj rank sweep, conv placements, a diverged and an all-failed configuration."""
    recs = []
    for seed, jitter in enumerate((-0.01, 0.0, 0.01)):
        recs += [
            make_record(
                "scratch", "scratch", "none", 0, "scratch", seed=seed, acc=0.70 + jitter, params=100_000
            ),
            make_record("full", "full", "none", 0, "full", seed=seed, acc=0.85 + jitter, params=100_000),
            make_record("head", "head", "none", 0, "head", seed=seed, acc=0.60 + jitter, params=500),
            make_record("seed-post", "seed", "seed", 8, "seed", seed=seed, acc=0.75 + jitter, params=3_000),
        ]
        for rank, acc in ((4, 0.72), (8, 0.78), (16, 0.80)):
            recs.append(make_record(rank=rank, seed=seed, acc=acc + jitter, params=500 + 300 * rank))
        recs.append(
            make_record("lora-conv2", placement="conv2", rank=8, seed=seed, acc=0.74 + jitter, params=900)
        )
        recs.append(
            make_record(
                "lora-convs-kxk",
                placement="convs",
                shape="kxk",
                rank=8,
                seed=seed,
                acc=0.70 + jitter,
                params=4_000,
                status="diverged" if seed == 2 else "complete",
                error="non-finite loss (nan) at epoch 2, step 7" if seed == 2 else None,
            )
        )
        recs.append(
            make_record(
                "lora-all",
                placement="all",
                rank=4,
                seed=seed,
                status="failed",
                error="RuntimeError: out of memory | try a smaller batch",
            )
        )
    return recs


def row(df, label):
    return df.set_index("label").loc[label]


# ------------------------------------------------------------------------------ aggregation
def test_mean_and_t_interval_match_a_hand_computation():
    recs = [make_record(seed=s, acc=a) for s, a in enumerate((0.80, 0.82, 0.84))]
    r = row(agg.aggregate(recs), "lora-proj-r8")
    sd = math.sqrt(((0.80 - 0.82) ** 2 + 0 + (0.84 - 0.82) ** 2) / 2)  # 0.02
    t_975_2 = 4.302652729749464  # Student t, 2 degrees of freedom, 97.5% quantile (tables: 4.303)
    assert r["n"] == 3 and r["acc_mean"] == pytest.approx(0.82)
    assert r["acc_sd"] == pytest.approx(sd)
    assert r["acc_ci"] == pytest.approx(t_975_2 * sd / math.sqrt(3), rel=1e-9)  # 0.04968
    assert (r["acc_lo"], r["acc_hi"]) == pytest.approx((0.82 - 0.0496827542, 0.82 + 0.0496827542))
    assert r["seeds"] == (0, 1, 2) and r["accs"] == pytest.approx((0.80, 0.82, 0.84))


def test_single_seed_has_no_interval_and_says_so():
    recs = [make_record(acc=0.8), make_record("full", "full", "none", 0, "full", acc=0.9, params=100_000)]
    r = row(agg.aggregate(recs), "lora-proj-r8")
    assert r["n"] == 1 and math.isnan(r["acc_ci"])
    md = leaderboard.render_markdown(recs, "cmd")
    assert "80.00 ± n/a (n=1)" in md and "a single seed gives no interval" in md


def test_relative_size_per_parameter_and_order():
    df = agg.aggregate(grid_records())
    lora8 = row(df, "lora-proj-r8")
    assert lora8["full_params"] == 100_000 and lora8["pct_full"] == pytest.approx(2.9)
    assert lora8["acc_per_1k"] == pytest.approx(0.78 / 2.9)
    assert lora8["bal_acc_mean"] == pytest.approx(0.77) and lora8["source_after_mean"] == pytest.approx(0.95)
    done = df[df["acc_mean"].notna()]
    assert list(done["acc_mean"]) == sorted(done["acc_mean"], reverse=True)
    assert df["label"].iloc[-1] == "lora-all-r4"  # no result: last
    assert set(df.loc[df["baseline"], "label"]) == {"scratch", "full", "head", "seed-post-r8"}


def test_without_full_the_model_size_is_100_percent():
    df = agg.aggregate([make_record(params=1_000)])
    assert df["pct_full"].iloc[0] == pytest.approx(1.0)  # of total_params 100,000


def test_pareto_front_on_a_known_set():
    df = pd.DataFrame(
        {"params": [10, 20, 15, 30, 5, 40, 1, 20], "acc": [0.5, 0.6, 0.4, 0.6, 0.3, 0.9, np.nan, 0.6]}
    )
    front = stats.pareto_front(df, "params", "acc")
    # (15, .4) loses to (10, .5); (30, .6) to (20, .6); NaN is never on it; equal points both stay.
    assert front.tolist() == [True, True, False, False, True, True, False, True]


def test_pareto_flag_in_aggregate():
    df = agg.aggregate(grid_records())
    on_front = set(df.loc[df["pareto"], "label"])
    assert on_front == {"head", "lora-conv2-r8", "lora-proj-r8", "lora-proj-r16", "full"}


# ------------------------------------------------------------------------------- markdown
def test_markdown_is_deterministic_and_independent_of_record_order():
    recs = grid_records()
    links = ["runs/charts/acc_vs_params.html", "runs/charts/acc_vs_params.png"]
    first = leaderboard.render_markdown(
        recs, "python -m bench leaderboard --runs-dir runs --output lb.md", links
    )
    assert first == leaderboard.render_markdown(
        recs, "python -m bench leaderboard --runs-dir runs --output lb.md", links
    )
    shuffled = list(recs)
    random.Random(3).shuffle(shuffled)
    assert shuffled != recs
    assert (
        leaderboard.render_markdown(
            shuffled, "python -m bench leaderboard --runs-dir runs --output lb.md", links
        )
        == first
    )


def test_markdown_header_table_summary_and_links():
    recs = grid_records()
    recs[0]["run"]["created_at"] = "2025-12-31T23:00:00+00:00"
    md = leaderboard.render_markdown(
        recs,
        "python -m bench leaderboard --runs-dir runs --output lb.md",
        ["../runs/charts/acc_vs_params.html", "../runs/charts/acc_vs_params.png"],
    )
    assert "python -m bench leaderboard --runs-dir runs --output lb.md" in md
    assert "protocol **resplit**" in md and "not comparable to published byclass-test numbers" in md
    assert "700 train / 100 validation / 200 test images" in md
    assert "2025-12-31T23:00:00+00:00 … 2026-01-01T00:00:00+00:00" in md
    assert "mnist → emnist-byclass" in md and "git abc123" in md
    assert "3 seeds (0, 1, 2; 3 per configuration)" in md
    # one row per configuration; the best one first; 78.00 ± t*0.01/sqrt(3) with n
    table = _md_rows(md)
    assert len(table) == 10 and "**full**" in table[0][1]
    assert "78.00 ± 2.48 (n=3)" in md
    assert "Best configuration overall: **full**" in md
    assert "Best under 1% of the full model's trainable parameters: **lora-conv2-r8**" in md
    assert "The seed post's setup (**seed-post-r8**) reaches 75.00 ± 2.48% (n=3)" in md
    assert "**lora-proj-r8** (2,900), reaches 78.00 ± 2.48% (n=3): +3.00 points (95% CI +3.00 to +3.00" in md
    assert (
        "Full fine-tuning of the pretrained model reaches 85.00 ± 2.48% (n=3) against 70.00 ± 2.48% (n=3) "
        "for the same network trained from scratch: +15.00 points"
    ) in md
    assert "LoRA on conv2 (1x1) vs LoRA on proj at equal rank: r8 74.00 vs 78.00%: -4.00 points" in md
    # seed vs LoRA, full vs scratch, conv2 r8 and convs kxk r8 vs proj r8
    assert "paired t-test over 3 seeds, Holm-adjusted over 4 comparisons" in md
    assert "[HTML](../runs/charts/acc_vs_params.html) · [PNG](../runs/charts/acc_vs_params.png)" in md
    assert "![Test accuracy vs trainable parameters](../runs/charts/acc_vs_params.png)" in md


@pytest.mark.parametrize("reuse", [False, True])
def test_header_measures_the_optimism_of_seed_cells_that_reuse_their_tuning_run(reuse):
    """Seed 0 reuses each row's tuning run, selected on validation: the header puts its gap to the
    rows' other seeds (here +2 and +1 points of test, +4 of val) beside the other seeds' gaps."""
    recs = []
    for name, bump in (("a", 0.02), ("b", 0.01)):
        for seed in range(3):
            r = make_record(name, seed=seed, acc=0.80 + (bump if seed == 0 else 0.0))
            r["metrics"]["val_acc"] = 0.81 + (0.04 if seed == 0 else 0.0)
            r["run"]["reused_from"] = 7 if reuse and seed == 0 else None
            recs.append(r)
    md = leaderboard.render_markdown(recs, "cmd", [])
    line = next(x for x in md.splitlines() if x.startswith("- **Seeds**"))
    if reuse:
        assert "seed 0's cells reuse their tuning run" in line
        assert "sit +1.50 points in test and +4.00 in validation accuracy" in line
        assert "other seeds' same gaps span -0.75 to -0.75 (test) and -2.00 to -2.00 (validation)" in line
    else:
        assert "reuse" not in line


def test_header_names_the_rows_wider_than_the_half_width_target():
    """Rows whose 95% half-width exceeds ± 0.5 points need more seeds before their differences are
    cited: the Seeds line names them, widest first, and says nothing when none is."""
    spreads = {"narrow": (0.800, 0.801, 0.802), "wide": (0.80, 0.82, 0.81), "wider": (0.78, 0.82, 0.80)}
    recs = [make_record(name, seed=s, acc=a) for name, accs in spreads.items() for s, a in enumerate(accs)]
    line = next(x for x in leaderboard.render_markdown(recs, "cmd", []).splitlines() if "**Seeds**" in x)
    assert line.endswith("; wider than ± 0.50 points: wider-r8 ± 4.97, wide-r8 ± 2.48")
    narrow = [r for r in recs if r["config"]["name"] == "narrow"]
    line = next(x for x in leaderboard.render_markdown(narrow, "cmd", []).splitlines() if "**Seeds**" in x)
    assert "wider than" not in line


def test_header_names_peft_where_records_say_it():
    recs = [make_record(seed=s) for s in range(2)]
    assert ", peft" not in leaderboard.render_markdown(recs, "cmd", [])  # older records: not said
    recs[0]["env"]["peft"] = "0.21.2"
    assert "optuna 5.0, peft 0.21.2, unknown; git" in leaderboard.render_markdown(recs, "cmd", [])


def test_header_says_why_plateau_runs_stopped():
    recs = []
    for seed, reason in enumerate(("plateau", "cap", "plateau")):
        r = make_record(seed=seed)
        r["config"].update(schedule="plateau", patience=2)
        r["metrics"]["stop_reason"] = reason
        recs.append(r)
    md = leaderboard.render_markdown(recs, "cmd", [])
    assert (
        "trained to a plateau (batch 256, patience 2, cap 4 epochs; stopped: 1 at the cap, 2 on a plateau)"
        in md
    )


def test_a_row_whose_runs_mixed_bf16_and_fp32_says_so():
    recs = []
    for seed in range(3):
        mixed, plain = make_record(seed=seed), make_record("head", "head", "none", 0, "head", seed=seed)
        mixed["env"]["bf16"] = seed == 0  # seed 0 ran on a machine with native bf16
        recs += [mixed, plain]
    md = leaderboard.render_markdown(recs, "cmd")
    row = {}  # the first table that lists a configuration is the leaderboard's
    for line in md.splitlines():
        if line.startswith("| "):
            row.setdefault(line.split("|")[2].strip(" *"), line)
    assert "runs on 2 paths: 1 cpu bf16, 2 cpu fp32" in row["lora-proj-r8"]
    assert "paths" not in row["head"]
    assert (
        "(1 run, 2 s of worker time on Test CPU, cpu with native bf16: bf16 autocast + channels_last; "
        "5 runs, 10 s of worker time on Test CPU, cpu without native bf16: fp32 + channels_last)" in md
    )


def test_failed_and_diverged_configurations_are_listed():
    md = leaderboard.render_markdown(grid_records(), "cmd")
    rows = [line for line in md.splitlines() if line.startswith("| ")]  # the results table's
    failed = next(line for line in rows if "lora-all-r4" in line)
    assert "**no result**" in failed and "3 of 3 failed" in failed
    assert "RuntimeError: out of memory \\| try a smaller batch" in failed  # pipe escaped for the table
    diverged = next(line for line in rows if "lora-convs-kxk-r8" in line)
    assert (
        "1 of 3 diverged" in diverged and "non-finite loss" in diverged and "70.00 ± 2.48 (n=3)" in diverged
    )


def test_each_setup_gets_its_own_table_and_front():
    local = grid_records()
    smoke = [make_record(protocol="synthetic", seed=s, acc=0.5, params=2_900) for s in range(2)]
    for r in smoke:
        r["config"]["profile"], r["config"]["source"], r["config"]["target"] = (
            "smoke",
            "glyphs-digits",
            "glyphs-chars",
        )
    df = agg.aggregate(local + smoke)
    assert df["setup"].nunique() == 2
    # the lone smoke row is on its own front and measured against its own model size
    smoke_row = df[df["setup"].str.startswith("smoke")].iloc[0]
    assert smoke_row["pareto"] and smoke_row["pct_full"] == pytest.approx(2.9)
    md = leaderboard.render_markdown(local + smoke, "cmd")
    assert "## Results — local: mnist → emnist-byclass, seed-cnn (resplit; all train images, 4 epochs)" in md
    assert (
        "## Results — smoke: glyphs-digits → glyphs-chars, seed-cnn (synthetic; all train images, 4 epochs)"
        in md
    )
    assert md.count("## Summary — ") == 2


def _args(module, argv):
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(argv)


def test_no_records_is_a_user_error(tmp_path):
    with pytest.raises(LorafitError, match=r"no records under .*run `python -m bench run grid` first"):
        leaderboard.main(
            _args(leaderboard, ["--runs-dir", str(tmp_path), "--output", str(tmp_path / "lb.md")])
        )


# ---------------------------------------------------------------------------------- charts
class _Scripts(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs, self.inline = [], 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script":
            self.inline += "src" not in attrs
            if "src" in attrs:
                self.srcs.append(attrs["src"])
        if tag == "link" and "href" in attrs:
            self.srcs.append(attrs["href"])


def assert_offline_html(path: Path):
    """Every script the page loads is a file beside it, and that file defines vegaEmbed."""
    text = path.read_text()
    parser = _Scripts()
    parser.feed(text)
    parser.close()
    assert parser.inline >= 1 and parser.srcs, path
    for src in parser.srcs:
        assert "/" not in src and ":" not in src, f"{path} loads {src}, not a file beside it"
        assert "window.vegaEmbed=" in (path.parent / src).read_text(), f"{path}: {src}"
    assert "cdn.jsdelivr" not in text and "unpkg.com" not in text
    assert len(text) < 200_000, "the script bundle is inlined into the page"


def test_charts_are_offline_html_and_png(tmp_path):
    recs = grid_records()
    for r in recs:
        if r["config"]["method"] == "full" and r["analysis"]:
            r["analysis"]["per_class_acc"] = [
                0.9,
                0.8,
                float("nan"),
                0.7,
            ]  # NaN: a class absent from the split
    paths = charts.render(recs, tmp_path / "charts")
    assert [p.name for p in paths] == [
        f"{stem}.{ext}"
        for stem in ("acc_vs_params", "acc_per_param", "rank_sweep", "per_class")
        for ext in ("html", "png")
    ]
    for p in paths:
        assert p.exists() and p.stat().st_size > 1000
        if p.suffix == ".html":
            assert_offline_html(p)
        else:
            assert p.read_bytes()[:8] == PNG_SIGNATURE
    # the per-class data: the best LoRA row vs full, every class in order, means over seeds
    per_class = per_class_frame(recs, agg.aggregate(recs))
    assert list(per_class["class"]) == CLASSES * 2
    assert per_class["configuration"].str.startswith("lora-proj-r16").sum() == 4


def test_charts_without_lora_rows_skip_those_charts(tmp_path, caplog):
    recs = [make_record("full", "full", "none", 0, "full", seed=s, acc=0.8, params=100_000) for s in range(2)]
    paths = charts.render(recs, tmp_path)
    assert sorted(p.stem for p in paths) == [
        "acc_per_param",
        "acc_per_param",
        "acc_vs_params",
        "acc_vs_params",
    ]
    assert "rank_sweep skipped" in caplog.text and "per_class skipped" in caplog.text
    md = leaderboard.render_markdown(recs, "cmd", [os.path.relpath(p, tmp_path) for p in paths])
    assert "Not drawn (the records lack what they need): LoRA rank sweep" in md


# ------------------------------------------------------------------------------- report
def test_labels_rebuilt_from_a_confusion_matrix_are_exact():
    cm = np.random.default_rng(0).integers(0, 5, size=(6, 6))
    y_true, y_pred = report.labels_from_confusion(cm)
    assert (metrics.confusion(y_true, y_pred, 6) == cm).all()


def test_report_of_a_failed_run_is_a_user_error(tmp_path):
    rec = make_record(status="failed", error="RuntimeError: boom")
    write_json(record_path(tmp_path, rec["run"]["study"], rec["run"]["id"]), rec)
    with pytest.raises(LorafitError, match="has no analysis to report because it failed"):
        report.main(_args(report, [rec["run"]["id"][:12], "--runs-dir", str(tmp_path)]))


@pytest.fixture(scope="module")
def smoke_runs(tmp_path_factory):
    """A real smoke run of two cheap cells (the linear probe and LoRA-proj r8), through the CLI in-process."""
    from bench.__main__ import main as cli

    runs = tmp_path_factory.mktemp("smoke-runs")
    (runs / "tiny.toml").write_text(REPORT_GRID)
    assert (
        cli(
            [
                "run",
                "grid",
                "--grid",
                str(runs / "tiny.toml"),
                "--runs-dir",
                str(runs),
                "--seeds",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    return runs


def test_report_on_a_smoke_run(smoke_runs, capsys):
    (record,) = [r for r in load_records(smoke_runs) if r["config"]["method"] == "lora"]
    run_id = record["run"]["id"]
    assert report.main(_args(report, [run_id[:20], "--runs-dir", str(smoke_runs)])) == 0
    printed = capsys.readouterr().out
    folder = record_path(smoke_runs, record["run"]["study"], run_id).parent
    md = (folder / f"{run_id}.report.md").read_text()
    assert md in printed and f"# Run {run_id}" in md
    assert f"Test accuracy {100 * record['metrics']['test_acc']:.2f}%" in md
    # sklearn's report on the rebuilt labels gives the stored accuracy and macro-F1
    assert f"{record['metrics']['test_acc']:.4f}" in md and f"{record['metrics']['test_macro_f1']:.4f}" in md
    pairs = [
        line
        for line in md.split("most confused pairs")[1].splitlines()
        if line.startswith("| ") and line[2].isdigit()
    ]
    assert len(pairs) == 15
    counts = [int(line.split("|")[4]) for line in pairs]
    assert counts == sorted(counts, reverse=True)
    assert_offline_html(folder / f"{run_id}.confusion.html")
    assert (folder / f"{run_id}.confusion.png").read_bytes()[:8] == PNG_SIGNATURE


@pytest.mark.slow
def test_leaderboard_on_a_smoke_run_is_byte_identical_when_regenerated(smoke_runs, tmp_path):
    out = tmp_path / "lb.md"
    argv = ["--runs-dir", str(smoke_runs), "--output", str(out)]

    def run() -> int:
        cmd = [sys.executable, "-m", "bench", "leaderboard", *argv]
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120).returncode

    assert run() == 0
    first = out.read_bytes()
    csv_first = out.with_suffix(".csv").read_bytes()
    chart_files = sorted((smoke_runs / "charts").glob("*.*"))
    charts_first = [p.read_bytes() for p in chart_files]
    assert run() == 0
    assert out.read_bytes() == first
    assert out.with_suffix(".csv").read_bytes() == csv_first
    assert [p.read_bytes() for p in chart_files] == charts_first
    md = first.decode()
    assert (
        "lora-proj-r8" in md and "**head**" in md and "protocol **synthetic**" in md and "± n/a (n=1)" in md
    )
    assert shlex.join(["python", "-m", "bench", "leaderboard", *argv]) in md
    links = re.findall(r"\]\(([^)]+)\)", md)
    assert len(links) == 10  # the CSV, 4 charts x HTML/PNG, and the inline image
    assert links[0] == "lb.csv"
    for link in links:
        assert (out.parent / link).exists(), link
    assert (smoke_runs / "charts" / "acc_vs_params.png").read_bytes()[:8] == PNG_SIGNATURE


# ------------------------------------------------------------------- CSV, overwrite, report shape
def _byclass(record, merged_right):
    """Give a record a byclass confusion matrix: 10 correct per class, plus merged_right c→C mistakes."""
    cm = np.diag([10] * len(metrics.BYCLASS_CLASSES))
    cm[metrics.BYCLASS_CLASSES.index("c"), metrics.BYCLASS_CLASSES.index("C")] = merged_right
    record["analysis"] = {
        "classes": list(metrics.BYCLASS_CLASSES),
        "confusion": cm.tolist(),
        "per_class_acc": [1.0] * len(metrics.BYCLASS_CLASSES),
    }
    return 620 + merged_right


def _md_rows(md: str) -> list[list[str]]:
    """The main results table's rows (the other tables have other headers)."""
    results = md.split("## Results", 1)[1].split("\n\n")[1]
    lines = [line for line in results.splitlines() if line.startswith("| ") and not line.startswith("| #")]
    return [[c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in lines]


def test_csv_and_markdown_agree():
    import csv as csvlib
    import io

    recs = grid_records()
    for r in recs:
        if r["config"]["name"] == "full":
            _byclass(r, merged_right=r["config"]["seed"])
    df = agg.aggregate(recs)
    md = leaderboard.render_markdown(recs, "cmd", agg=df)
    text = leaderboard.render_csv(df)
    assert text == leaderboard.render_csv(agg.aggregate(list(reversed(recs))))  # deterministic
    rows = list(csvlib.DictReader(io.StringIO(text)))
    table = _md_rows(md)
    head = [c.header for c in columns.COLUMNS if c.header]
    assert len(rows) == len(table) == 10
    for c, m in zip(rows, table):
        cell = dict(zip(head, m))
        assert cell["#"] == c["position"] and cell["configuration"].strip("*") == c["configuration"]
        params = c["trainable_params"]
        assert (
            cell["trainable params (% full)"].startswith(f"{int(params):,} (")
            if params
            else cell["trainable params (% full)"] == "—"
        )
        if c["test_acc_mean_fraction"]:
            acc, ci = float(c["test_acc_mean_fraction"]), float(c["test_acc_ci95_halfwidth_fraction"])
            n = c["seeds_with_result"]
            assert cell["test acc % ± 95% CI (n)"] == f"{100 * acc:.2f} ± {100 * ci:.2f} (n={n})"
            per_seed = [float(a) for a in c["test_acc_per_seed_fraction"].split(";")]
            assert np.mean(per_seed) == pytest.approx(acc) and len(c["seeds"].split(";")) == len(per_seed)
        merged = c["case_merged_acc_mean_fraction"]
        assert cell["case-merged acc %"] == (f"{100 * float(merged):.2f}" if merged else "—")
        for prefix, column in (
            ("vs_full", "Δ vs full, points (paired)"),
            ("vs_head", "Δ vs head, points (paired)"),
        ):
            if c["configuration"] == c[f"{prefix}_reference"]:
                assert cell[column] == "ref"
            elif c[f"{prefix}_diff_mean_fraction"]:
                d, lo, hi = (
                    float(c[f"{prefix}_{k}"])
                    for k in ("diff_mean_fraction", "diff_ci95_lo_fraction", "diff_ci95_hi_fraction")
                )
                assert cell[column] == f"{100 * d:+.2f} ± {50 * (hi - lo):.2f}"
            else:
                assert cell[column] == "—"
        assert cell["Pareto"] == ("✓" if c["pareto"] == "1" else "")
        p = c["p_front_probability"]
        assert cell["P(front)"] == (f"{float(p):.2f}" if p else "—")
    full = next(c for c in rows if c["configuration"] == "full")
    assert float(full["case_merged_acc_mean_fraction"]) == pytest.approx(1.0)  # c→C mistakes are merged
    assert next(c for c in rows if c["configuration"] == "head")["case_merged_acc_mean_fraction"] == ""


def _write_records(runs: Path, recs, study="grid-local"):
    for r in recs:
        r["run"]["study"] = study
        write_json(record_path(runs, study, r["run"]["id"]), r)


def test_default_output_is_in_the_runs_dir_and_other_records_are_not_overwritten(tmp_path, monkeypatch):
    monkeypatch.setattr(charts, "render", lambda records, out, agg=None: [])  # charts: tested elsewhere
    runs_a, runs_b = tmp_path / "a", tmp_path / "b"
    _write_records(runs_a, grid_records())
    _write_records(runs_b, [make_record(seed=s, acc=0.5 + s / 100) for s in range(2)], study="smoke")
    assert leaderboard.main(_args(leaderboard, ["--runs-dir", str(runs_a)])) == 0
    assert (runs_a / "leaderboard.md").exists() and (runs_a / "leaderboard.csv").exists()
    shared = tmp_path / "lb.md"
    assert leaderboard.main(_args(leaderboard, ["--runs-dir", str(runs_a), "--output", str(shared)])) == 0
    before = shared.read_bytes()
    other_records = r"lb\.md was generated from other records \(--runs-dir .*a, not --runs-dir .*b"
    with pytest.raises(LorafitError, match=other_records):
        leaderboard.main(_args(leaderboard, ["--runs-dir", str(runs_b), "--output", str(shared)]))
    # another study of the same runs dir
    with pytest.raises(LorafitError, match=r"generated from other records .*--force"):
        leaderboard.main(
            _args(leaderboard, ["--runs-dir", str(runs_a), "--study", "grid-local", "--output", str(shared)])
        )
    assert shared.read_bytes() == before
    # the same records again: no complaint
    assert leaderboard.main(_args(leaderboard, ["--runs-dir", str(runs_a), "--output", str(shared)])) == 0
    forced = ["--runs-dir", str(runs_b), "--output", str(shared), "--force"]
    assert leaderboard.main(_args(leaderboard, forced)) == 0
    assert f"--runs-dir {runs_b}" in shared.read_text() and shared.read_bytes() != before
    other = tmp_path / "notes.md"
    other.write_text("# My notes\n")
    with pytest.raises(LorafitError, match="is not a leaderboard this command wrote"):
        leaderboard.main(_args(leaderboard, ["--runs-dir", str(runs_a), "--output", str(other)]))
    assert other.read_text() == "# My notes\n"
    folder = tmp_path / "out"
    folder.mkdir()
    for force in ([], ["--force"]):  # a folder is never a leaderboard to replace
        with pytest.raises(LorafitError, match=r"--output .*out is a folder; name the leaderboard file"):
            leaderboard.main(_args(leaderboard, ["--runs-dir", str(runs_a), "--output", str(folder), *force]))
    assert not any(folder.iterdir())


def test_leaderboard_seeds_keeps_whole_paired_seeds(tmp_path, monkeypatch):
    """A run still adding seeds: --seeds N reports seeds 0..N-1 only, and the command says so."""
    monkeypatch.setattr(charts, "render", lambda records, out, agg=None: [])
    runs = tmp_path / "runs"
    recs = [make_record("head", "head", "none", 0, "head", seed=s, acc=0.6) for s in range(3)]
    recs += [make_record(seed=s, acc=0.8) for s in range(4)]  # seed 3 of one configuration only
    _write_records(runs, recs)
    out = tmp_path / "lb.md"
    assert (
        leaderboard.main(_args(leaderboard, ["--runs-dir", str(runs), "--output", str(out), "--seeds", "3"]))
        == 0
    )
    text = out.read_text()
    assert "--seeds 3" in text and "(n=4)" not in text and "(n=3)" in text
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    assert {r["seeds"] for r in rows} == {"0;1;2"}


def test_report_shows_shape_only_for_conv_placements():
    proj = report.render(make_record(placement="proj", shape="1x1"))
    conv = report.render(make_record("lora-convs", placement="convs", shape="kxk"))
    assert "placement proj, rank 8, policy lora" in proj and "shape" not in proj.split("\n")[2]
    assert "placement convs, rank 8, shape kxk, policy lora" in conv


def test_chart_labels_baselines_and_front_without_overlaps():
    df = agg.aggregate(grid_records())
    spec = acc_vs_params(df).to_dict()
    layers = spec["layer"]
    kinds = [json.dumps(layer.get("transform", "")) for layer in layers]
    adapter = next(i for i, k in enumerate(kinds) if "'adapter'" in k)
    baseline = next(i for i, k in enumerate(kinds) if "'baseline'" in k)
    assert adapter < baseline  # baselines drawn over the adapters
    part = df[df["acc_mean"].notna()]
    xdom, ydom = labels.domains(part)
    placed = labels.label_layout(part, part["pareto"] | part["baseline"], xdom, ydom)
    assert set(placed["label"]) == set(part.loc[part["pareto"] | part["baseline"], "label"])
    # boxes in pixels, as the layout sees them: none overlaps another
    lx = np.log(xdom)
    px = labels.WIDTH * (np.log(placed["label_x"]) - lx[0]) / (lx[1] - lx[0])
    py = labels.HEIGHT * (ydom[1] - placed["label_y"]) / (ydom[1] - ydom[0])
    w = placed["label"].str.len() * labels.CHAR_PX
    left = np.where(placed["align"] == "left", px, px - w)
    for i in range(len(placed)):
        for j in range(i):
            overlap_x = left[i] < left[j] + w.iloc[j] and left[j] < left[i] + w.iloc[i]
            close = abs(py.iloc[i] - py.iloc[j]) < labels.LINE_PX
            assert not (overlap_x and close), (placed["label"][i], placed["label"][j])


def test_containment_checks_find_the_inversion():
    checks = evidence.containment(agg.aggregate(grid_records()))
    why = {(c["container"], c["contained"]): c["why"] for _, c in checks.iterrows()}
    assert why[("lora-proj-r16", "lora-proj-r8")] == "rank nesting"
    assert why[("lora-proj-r8", "head")] == why[("seed-post-r8", "head")] == "adapter ⊇ probe"
    assert why[("full", "lora-proj-r8")] == "full ⊇ adapter"
    assert why[("lora-convs-kxk-r8", "lora-conv2-r8")] == "placement nesting"
    assert ("lora-proj-r8", "lora-proj-r16") not in why and ("head", "full") not in why
    assert not any("scratch" in pair for pair in why) and not any("lora-all-r4" in pair for pair in why)
    inverted = checks[checks["inverted"]]  # convs kxk r8 at 70% is below conv2 r8 at 74% on every seed
    assert list(zip(inverted["container"], inverted["contained"])) == [("lora-convs-kxk-r8", "lora-conv2-r8")]
    md = leaderboard.render_markdown(grid_records(), "cmd")
    assert "## Containment checks" in md and "1 inversion beyond paired noise" in md


def _design_selection(**changes) -> dict:
    selection = {
        "mode": "tuned",
        "protocol": "design",
        "study": "grid-local-tune-lora-proj-r8-0000",
        "trials": 17,
        "best_candidate": "d03",
        "best_val_acc": 0.80,
        "lr": 1e-3,
        "head_lr": 1e-2,
        "extensions": {"lr+": 1},
        "edge": [],
        "fallback": False,
        "curve": [0.70, 0.78, 0.80],
        "margin": 0.02,
        "sensitivity": {
            "lr-": {"lr": 3.2e-4, "head_lr": 1e-2, "val_acc": 0.79},
            "lr+": {"lr": 3.2e-3, "head_lr": 1e-2, "val_acc": 0.81},
        },
        "spec": TuneSpec().to_dict(),
    }
    return {**selection, **changes}


def test_tuning_evidence_table_csv_and_fallback_mark():
    recs = grid_records()
    for r in recs:
        if r["config"]["name"] == "lora-proj" and r["config"]["rank"] == 8:
            r["tuning"] = _design_selection()
        if r["config"]["name"] == "lora-conv2":
            r["tuning"] = _design_selection(fallback=True, best_candidate="fallback", lr=0.0)
    md = leaderboard.render_markdown(recs, "cmd")
    assert "## Tuning evidence" in md and "same 16 designed candidates" in md
    row = next(line for line in md.splitlines() if line.startswith("| lora-proj-r8 | 0.001 / 0.01 |"))
    assert (
        "| d03 | 17 | lr+ ×1 | 80.00 | 2.00 | -1.00 | +1.00 | — | — | a neighbour scored higher: lr ×√10 |"
        in row
    )
    fallback = next(line for line in md.splitlines() if line.startswith("| lora-conv2-r8 | 0 / 0.01 |"))
    assert "fell back to the probe" in fallback and "paths" not in row
    # lora-proj-r8's candidates, two of them on a machine without native bf16
    trials = []
    for t, bf16 in enumerate((True, False, False)):
        trial = make_record(seed=0)
        trial["run"]["study"] = "grid-local-tune/lora-proj-r8-0000"
        trial["run"]["id"] = f"t{t:04d}-lora-proj-r8"
        trial["env"]["bf16"] = bf16
        trials.append(trial)
    md = leaderboard.render_markdown(recs, "cmd", trials=trials)
    row = next(line for line in md.splitlines() if line.startswith("| lora-proj-r8 | 0.001 / 0.01 |"))
    assert row.endswith("; candidates on 2 paths: 1 cpu bf16, 2 cpu fp32 |")
    main_row = next(
        line for line in md.splitlines() if line.startswith("| ") and "| lora-conv2-r8 | lora |" in line
    )
    assert "**= the probe**" in main_row
    rows = {r["configuration"]: r for r in columns.csv_rows(agg.aggregate(recs))}
    assert rows["lora-proj-r8"]["tuning_margin_fraction"] == "0.02"
    assert rows["lora-proj-r8"]["tuning_edge_extensions"] == "lr+:1"
    assert (
        rows["lora-conv2-r8"]["tuning_fell_back_to_probe"] == "1" and rows["full"]["tuning_candidates"] == ""
    )


def test_a_new_leaderboard_column_is_one_entry(monkeypatch):
    """One Column declares the metric's aggregation, its table cell, its CSV field and its legend."""
    recs = grid_records()
    for r in recs:
        if r["metrics"].get("test_acc") is not None:
            r["metrics"]["test_macro_f1"] = r["metrics"]["test_acc"] - 0.1
    new = columns.Column(
        "macro_f1_mean",
        "macro F1 %",
        cell=lambda r: fmt.pct(r["macro_f1_mean"]),
        csv=lambda r: {"macro_f1_mean_fraction": columns.num(r["macro_f1_mean"])},
        metric="test_macro_f1",
        legend="Macro F1: the unweighted mean of the per-class F1 scores.",
    )
    monkeypatch.setattr(columns, "COLUMNS", [*columns.COLUMNS[:-1], new, columns.COLUMNS[-1]])
    df = agg.aggregate(recs)
    md = leaderboard.render_markdown(recs, "cmd", agg=df)
    header = next(line for line in md.splitlines() if line.startswith("| # |"))
    assert header.endswith("| macro F1 % | notes |")
    full = next(row for row in _md_rows(md) if row[1] == "**full**")
    assert full[-2] == "75.00"  # 85% accuracy - 10 points, mean over seeds
    assert "Macro F1: the unweighted mean of the per-class F1 scores." in md
    rows = {r["configuration"]: r for r in columns.csv_rows(df)}
    assert float(rows["full"]["macro_f1_mean_fraction"]) == pytest.approx(0.75)
    assert list(rows["full"])[-2:] == ["macro_f1_mean_fraction", "error"]


@pytest.mark.parametrize(
    "intervals, total",
    [([], 0), ([(0, 10)], 10), ([(0, 10), (5, 15)], 15), ([(0, 10), (2, 3)], 10), ([(20, 30), (0, 10)], 20)],
)
def test_wall_time_is_the_union_of_the_runs_intervals(intervals, total):
    assert compute.union_seconds(intervals) == total


def test_compute_line_splits_tuning_seeds_and_the_check():
    def timed(study, created, wall_s, **run):
        r = make_record(created=created)
        r["run"].update(study=study, **run)
        r["metrics"]["wall_s"] = wall_s
        r["tuning"] = {"mode": "tuned", "study": "grid-local-tune-lora-proj-r8-k"}
        return r

    # The tuning stage trained at a smaller budget than the cells it tuned: its trials count
    # towards the cells' setup all the same (their study chose the cells' rates).
    tuning = [timed("grid-local-tune/lora-proj-r8-k", f"2026-01-01T0{h}:00:00+00:00", 1800) for h in (0, 1)]
    for t in tuning:
        t["config"]["train_size"] = 100
        t["tuning"] = {"mode": "trial"}
    untimed = timed("grid-local-tune/lora-proj-r8-k", "2026-01-01T02:00:00+00:00", None)
    untimed["metrics"].pop("train_s")
    seeds = [
        timed("grid-local", "2026-01-01T03:00:00+00:00", 3600),
        timed("grid-local", "2026-01-01T03:30:00+00:00", 3600),  # a second worker, half overlapping
        timed("grid-local", "2026-01-01T09:00:00+00:00", 1800, reused_from="grid-local-tune/x/t0"),
    ]
    check = timed("grid-local-2x", "2026-01-02T00:00:00+00:00", 45)
    check["config"].update(epochs=8, patience=0)
    check["tuning"] = {"budget_scale": 2}
    everything = [*seeds, check, *tuning, untimed]
    setup = agg.setup_of(seeds[0])
    assert agg.setup_of(tuning[0]) != setup
    expected = (
        "tuning stage 3 runs, 1.0 h of worker time, 1.0 h wall (1 without timings); "
        "seeds 2 runs, 2.0 h of worker time, 1.5 h wall; "
        "epoch-sensitivity check 1 run, 45 s of worker time, 45 s wall; "
        "1 seed cell reused its tuning run (all on Test CPU, cpu without native bf16: fp32 + channels_last)"
    )
    assert compute.compute_lines(everything)[setup] == expected
    for order in range(3):  # whatever the order of the records
        random.Random(order).shuffle(everything)
        assert compute.compute_lines(everything)[setup] == expected
    # Runs on two machines: each part says how many runs, and how much worker time, each took.
    seeds[1]["env"].update(cpu="Other CPU", bf16=True)
    expected = (
        "tuning stage 3 runs, 1.0 h of worker time, 1.0 h wall (3 runs, 1.0 h of worker time on Test CPU, "
        "cpu without native bf16: fp32 + channels_last; 1 without timings); "
        "seeds 2 runs, 2.0 h of worker time, 1.5 h wall (1 run, 1.0 h of worker time on Other CPU, cpu with "
        "native bf16: bf16 autocast + channels_last; 1 run, 1.0 h of worker time on Test CPU, cpu without "
        "native bf16: fp32 + channels_last); "
        "epoch-sensitivity check 1 run, 45 s of worker time, 45 s wall (1 run, 45 s of worker time on Test "
        "CPU, cpu without native bf16: fp32 + channels_last); 1 seed cell reused its tuning run"
    )
    assert compute.compute_lines(everything)[setup] == expected
