"""What makes a comparison citable: the tuning stage gives every configuration the same budget,
two learning rates reach two parameter groups, seeds are paired, degenerate ranks are refused."""

import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from grids import TUNED_GRID
from optuna.trial import TrialState

from bench import tuning
from bench.__main__ import main
from bench.backbone import backbone_digest
from bench.context import Context
from bench.grid import load_grid
from bench.records import load_records
from bench.runner import build_model
from lorafit.config import RunConfig
from lorafit.data import Split
from lorafit.errors import LorafitError
from lorafit.model import SeedCNN
from lorafit.train import fit

ROOT = Path(__file__).resolve().parents[1]


def _storage(runs: Path) -> str:
    return f"sqlite:///{runs / 'optuna.db'}"


def _tuning_studies(runs: Path) -> dict[str, list[optuna.trial.FrozenTrial]]:
    summaries = optuna.get_all_study_summaries(_storage(runs))
    return {
        s.study_name: optuna.load_study(study_name=s.study_name, storage=_storage(runs)).get_trials()
        for s in summaries
        if "-tune-" in s.study_name
    }


def test_tuning_stage_end_to_end_same_budget_and_resume(tmp_path, tiny_grid, capsys):
    runs = tmp_path / "runs"
    argv = [
        "run",
        "grid",
        "--grid",
        str(tiny_grid(TUNED_GRID, "tuned")),
        "--runs-dir",
        str(runs),
        "--no-progress",
    ]
    assert main([*argv, "--seeds", "2"]) == 0
    out = capsys.readouterr().out
    assert "tuning stage: 3 trials per configuration" in out and "4 done" in out
    studies = _tuning_studies(runs)
    assert len(studies) == 2  # one per configuration, seeds share it
    for trials in studies.values():  # the same budget for every configuration
        assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 3
    head = next(t for name, t in studies.items() if "-tune-head-" in name)
    lora = next(t for name, t in studies.items() if "-tune-lora-proj-r8-" in name)
    assert all(set(t.params) == {"head_lr"} for t in head)  # the probe has only its head's rate
    assert all(set(t.params) == {"lr", "head_lr"} for t in lora)
    records = load_records(runs, "tuned-smoke")
    assert len(records) == 4
    for rec in records:  # the seeds run at the selected values, and say so
        sel = rec["tuning"]
        assert sel["mode"] == "tuned" and sel["trials"] == 3 and sel["study"] in studies
        best = next(t for t in studies[sel["study"]] if t.number == sel["best_trial"])
        assert best.value == max(t.value for t in studies[sel["study"]] if t.state == TrialState.COMPLETE)
        assert rec["config"]["head_lr"] == best.params["head_lr"] == sel["head_lr"]
        assert rec["config"]["lr"] == best.params.get("lr", best.params["head_lr"])
        assert (
            rec["config"]["epochs"] == 3 and rec["config"]["train_size"] == 2000
        )  # the profile's, not tuning's
    tuning_records = load_records(runs, "tuned-smoke-tune")
    finished = (TrialState.COMPLETE, TrialState.PRUNED)  # pruned ones at their last validation accuracy
    assert len(tuning_records) == sum(t.state in finished for ts in studies.values() for t in ts)
    assert {r["config"]["train_size"] for r in tuning_records} == {800}
    # Resumed: nothing is re-tuned, nothing re-run.
    assert main(argv + ["--seeds", "2"]) == 0
    out = capsys.readouterr().out
    assert "  tune " not in out and "4 done" in out
    assert {k: len(v) for k, v in _tuning_studies(runs).items()} == {k: len(v) for k, v in studies.items()}
    # The leaderboard shows the tuned rates and the trials' sensitivity chart; no tuning row.
    out_md = tmp_path / "lb.md"
    assert (
        main(["leaderboard", "--runs-dir", str(runs), "--study", "tuned-smoke", "--output", str(out_md)]) == 0
    )
    md = out_md.read_text()
    assert md.count("(tuned, 3 trials)") == 2 and "800 train images" not in md
    assert (runs / "charts" / "tuned-smoke" / "lr_sensitivity.png").is_file()
    assert "Learning-rate sensitivity" in md
    # Fixed-rate mode on request: the grid's [lr] rates, and the record says so.
    assert main([*argv, "--no-tune", "--only", "head"]) == 0
    fixed = [r for r in load_records(runs, "tuned-smoke") if r["tuning"]["mode"] == "fixed"]
    assert len(fixed) == 1 and fixed[0]["config"]["lr"] == 5e-3


def test_killed_tuning_stage_resumes(tmp_path, tiny_grid):
    grid = tiny_grid(TUNED_GRID.replace("trials = 3", "trials = 4"), "killed")
    runs = tmp_path / "runs"
    cmd = [
        sys.executable,
        "-m",
        "bench",
        "run",
        "grid",
        "--grid",
        str(grid),
        "--runs-dir",
        str(runs),
        "--no-progress",
    ]
    env = {
        **__import__("os").environ,
        "LORAFIT_HEARTBEAT_S": "1",
        "LORAFIT_GRACE_S": "3",
        "PYTHONUNBUFFERED": "1",
    }
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.time() + 120
    for line in proc.stdout:  # killed inside the tuning stage, after its first finished trial
        if line.startswith("  tune ") or time.time() > deadline:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not load_records(runs, "killed-smoke"), "the grid's cells had not started"
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    for trials in _tuning_studies(runs).values():
        assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 4
    assert len(load_records(runs, "killed-smoke")) == 2


def test_two_workers_share_the_tuning_stage_without_changing_its_budget(tmp_path, tiny_grid):
    """Each configuration is claimed by one worker and tuned as one worker would: exactly the
    budget's trials per study, one selection per configuration, every cell run once."""
    grid = tiny_grid(TUNED_GRID, "pair")
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "bench", "run", "grid", "--grid", str(grid), "--runs-dir", str(runs)]
    cmd += ["--no-progress", "--threads", "1"]
    env = {**__import__("os").environ, "LORAFIT_HEARTBEAT_S": "1", "LORAFIT_GRACE_S": "3"}
    workers = [
        subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ]
    time.sleep(1.0)  # the second one starts while the first tunes its first configuration
    workers.append(
        subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    )
    outs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outs
    studies = _tuning_studies(runs)
    assert len(studies) == 2
    for trials in studies.values():
        assert len(trials) == 3 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    records = load_records(runs, "pair-smoke")
    assert len(records) == 2 and len({r["run"]["id"] for r in records}) == 2
    assert "another worker is tuning it" in outs[1], outs[1]


def test_two_learning_rates_reach_two_parameter_groups():
    torch.manual_seed(0)
    x, y = torch.randint(0, 255, (256, 1, 28, 28), dtype=torch.uint8), torch.randint(0, 10, (256,))
    data = Split(x, y)
    for lr, head_lr, moves in ((1e-12, 1e-2, "head"), (1e-2, 1e-12, "body")):
        torch.manual_seed(0)
        model = SeedCNN(10)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        cfg = RunConfig(name="t", method="full", lr=lr, head_lr=head_lr, epochs=1, batch_size=64)
        fit(model, data, data, cfg, bf16=False)
        head = max((model.fc.weight - before["fc.weight"]).abs().max().item(), 0)
        body = (model.proj.weight - before["proj.weight"]).abs().max().item()
        if moves == "head":
            assert head > 1e-3 and body < 1e-8
        else:
            assert body > 1e-3 and head < 1e-8


class _Recorder(SeedCNN):
    """Records the first pixel of every training batch: the order the data came in."""

    def __init__(self):
        super().__init__(10)
        self.seen = []

    def run_stages(self, x, start=0, stop=None):
        if self.training:
            self.seen.append(x[:, 0, 0, 0].detach().clone())
        return super().run_stages(x, start, stop)


def test_seeds_are_paired_across_configurations(tmp_path, tiny_grid):
    """Seed s: the same backbone, the same data order and the same new head in every configuration."""
    cells = load_grid(tiny_grid(), "smoke", seeds=2)
    ctx = Context(tmp_path / "runs")
    by = {(c.name, c.seed): c for c in cells}
    head0, lora0, head1 = by[("head", 0)], by[("lora-proj", 0)], by[("head", 1)]
    assert backbone_digest(head0, ctx) == backbone_digest(lora0, ctx) != backbone_digest(head1, ctx)
    backbone = SeedCNN(10)
    heads = [build_model(c, backbone, 62).fc.weight for c in (head0, lora0, by[("seed-post", 0)], head1)]
    assert torch.equal(heads[0], heads[1]) and torch.equal(heads[0], heads[2])
    assert not torch.equal(heads[0], heads[3])
    images = torch.arange(200, dtype=torch.uint8).view(200, 1, 1, 1).expand(200, 1, 28, 28).contiguous()
    split = Split(images, torch.arange(200) % 10)
    orders = []
    for cfg in (head0.replace(batch_size=50), lora0.replace(batch_size=50, lr=1e-4)):
        model = _Recorder()
        fit(model, split, split, cfg.replace(epochs=2), bf16=False)
        orders.append(torch.cat(model.seen))
    assert torch.equal(orders[0], orders[1])


def test_degenerate_rank_is_refused_with_its_bound():
    with pytest.raises(LorafitError, match=r"rank 2 exceeds .*conv1.conv allows 1"):
        RunConfig(name="x", method="lora", placement="conv1", rank=2, policy="lora")
    RunConfig(name="x", method="lora", placement="conv1", rank=1, policy="lora")  # rank 1 is honest
    RunConfig(name="x", method="lora", placement="conv1", shape="kxk", rank=9, policy="lora")
    with pytest.raises(LorafitError, match="allows 9"):
        RunConfig(name="x", method="lora", placement="all", shape="kxk", rank=16, policy="lora")


def test_effective_rank_is_recorded(tmp_path, tiny_grid, capsys):
    runs = tmp_path / "runs"
    assert main(["run", "grid", "--grid", str(tiny_grid()), "--runs-dir", str(runs), "--no-progress"]) == 0
    records = {r["config"]["name"]: r for r in load_records(runs)}
    ranks = records["lora-proj"]["analysis"]["adapters"]
    assert ranks == {"proj": {"method": "lora", "nominal_rank": 2, "rank_bound": 2, "effective_rank": 2}}
    assert records["lora-proj"]["metrics"]["effective_rank_min"] == 2
    assert records["head"]["analysis"]["adapters"] == {} and records["head"]["tuning"] == {"mode": "fixed"}
    assert 1 <= records["seed-post"]["analysis"]["adapters"]["adapter"]["effective_rank"] <= 8


def test_tune_spec_rejects_bad_tables():
    with pytest.raises(LorafitError, match="trials"):
        tuning.TuneSpec.from_table({"trials": 0})
    with pytest.raises(LorafitError, match="pair"):
        tuning.TuneSpec.from_table({"lr": 1e-3})
