"""`bench perf` end to end on a tiny workload: every workload is measured and the report's ratios
are positive and finite (the numbers themselves come from real runs: docs/performance.md)."""

import re

from bench import perf
from bench.__main__ import main


def test_bench_perf_measures_every_workload_and_reports_its_ratios(capsys, monkeypatch):
    peak = perf.measured_peak_flops
    monkeypatch.setattr(perf, "measured_peak_flops", lambda bf16: peak(bf16, seconds=0.05))
    assert main(["perf", "--images", "512", "--batch-size", "128", "--merge-placement", "proj"]) == 0
    out = capsys.readouterr().out
    for name in ("seed_pipeline_full", "lorafit_full", "lorafit_lora_proj_warm", "lorafit_eval"):
        assert re.search(rf"^{name} +[\d,]+ images/s$", out, re.M), name
    report = out[out.index("full fine-tuning, lorafit / seed pipeline:") :]
    speedups = [float(x) for x in re.findall(r":\s+(\d+\.\d+)x$", report, re.M)]
    merged = [
        float(x)
        for line in report.splitlines()
        if "merged / base:" in line
        for x in re.findall(r"\d+\.\d+", line)
    ]
    assert len(speedups) == 5 and len(merged) == 2 * len(perf.MERGE_METHODS), report
    assert all(0 < x < 1e3 for x in speedups + merged), report
    assert "nan" not in report and "inf " not in report
