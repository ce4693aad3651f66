"""What makes a comparison citable: the tuning stage gives every configuration the same budget,
two learning rates reach two parameter groups, seeds are paired, degenerate ranks are refused."""

import datetime as dt
import json
import os
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

from bench import protocol
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


def _candidates(trials) -> dict[str, optuna.trial.FrozenTrial]:
    """candidate id -> its finished trial."""
    return {
        t.user_attrs["candidate"]: t
        for t in trials
        if "candidate" in t.user_attrs and t.state in (TrialState.COMPLETE, TrialState.FAIL)
    }


def test_tuning_stage_end_to_end_designed_candidates_fallback_and_resume(tmp_path, tiny_grid, capsys):
    runs = tmp_path / "runs"
    argv = ["run", "grid", "--grid", str(tiny_grid(TUNED_GRID, "tuned")), "--runs-dir", str(runs)]
    argv += ["--no-progress"]
    # --status reads the storage and creates nothing
    assert main([*argv, "--seeds", "2", "--status"]) == 0
    status = capsys.readouterr().out.splitlines()
    assert status[-2:] == [
        "tuned-smoke: 2 configurations (2 not started; 0 tuning candidates done); cells 0 of 4 done",
        "left: 2 configurations, none with a run timed yet to project from",
    ]
    assert not runs.exists()  # not even the runs directory
    assert main([*argv, "--seeds", "2"]) == 0
    out = capsys.readouterr().out
    assert "tuning stage: 4 designed candidates per configuration" in out and "4 done" in out
    studies = _tuning_studies(runs)
    assert main([*argv, "--seeds", "2", "--status"]) == 0
    status = capsys.readouterr().out.splitlines()
    n = sum(len(_candidates(ts)) for ts in studies.values())
    assert (
        status[-1]
        == f"tuned-smoke: 2 configurations (2 tuned; {n} tuning candidates done); cells 4 of 4 done"
    )
    assert any(line.split()[:2] == ["lora-proj-r8", "tuned:"] for line in status)
    assert len(studies) == 2  # one per configuration, seeds share it
    head = _candidates(next(t for name, t in studies.items() if "-tune-head-" in name))
    lora = _candidates(next(t for name, t in studies.items() if "-tune-lora-proj-r8-" in name))
    design = [f"d{i:02d}" for i in range(4)]
    # The same designed candidates for every configuration: identical (lr, head_lr) pairs, and the
    # probe (which has only a head) at the same head rates.
    assert set(design) <= set(head) and set(design) <= set(lora)
    assert all(set(head[d].params) == {"head_lr"} for d in design)
    assert all(set(lora[d].params) == {"lr", "head_lr"} for d in design)
    assert [head[d].params["head_lr"] for d in design] == [lora[d].params["head_lr"] for d in design]
    assert [lora[d].params for d in design] == [
        {"lr": c.lr, "head_lr": c.head_lr}
        for c in protocol.design(protocol.TuneSpec(candidates=4), ("lr", "head_lr"))
    ]
    # The fallback: the probe's selected head rate with the adapter at rest reproduces the probe's
    # validation accuracy exactly (same seed, same head initialisation, same data order).
    probe_sel = next(
        r["tuning"] for r in load_records(runs, "tuned-smoke") if r["config"]["method"] == "head"
    )
    fallback = lora["fallback"]
    assert fallback.params == {"lr": 0.0, "head_lr": probe_sel["head_lr"]}
    assert fallback.value == probe_sel["best_val_acc"] == head[probe_sel["best_candidate"]].value
    assert (
        fallback.user_attrs["trainable_params"]
        == head[probe_sel["best_candidate"]].user_attrs["trainable_params"]
    )
    seeds = load_records(runs, "tuned-smoke")
    assert len(seeds) == 4
    for rec in seeds:  # the seeds run at the selected values, and say so
        sel = rec["tuning"]
        assert sel["mode"] == "tuned" and sel["protocol"] == "design" and sel["study"] in studies
        trials = _candidates(studies[sel["study"]])
        assert not any(c.startswith("s") for c in trials)  # refine: every neighbour was selectable
        assert sel["trials"] == len(trials) and max(t.value for t in trials.values()) == sel["best_val_acc"]
        # The neighbour rule: no neighbour of the selection scores above it (a local optimum).
        assert sel["edge"] == [] and all(
            n["val_acc"] <= sel["best_val_acc"] for n in sel["sensitivity"].values()
        )
        designed = [c for c in trials if not c.startswith("n")]  # the curve's pool
        best = trials[sel["best_candidate"]]
        assert rec["config"]["head_lr"] == best.params["head_lr"] == sel["head_lr"]
        # Selection at the judged budget: the selected trial trained the seed-0 cell itself (the
        # profile's images, epochs and early stopping), so seed 0 reuses it and its validation
        # accuracy is the selection's value.
        assert (rec["config"]["epochs"], rec["config"]["train_size"]) == (3, 2000)
        assert RunConfig.from_dict(best.user_attrs["config"]).replace(
            seed=rec["config"]["seed"]
        ) == RunConfig.from_dict(rec["config"])
        if rec["config"]["seed"] == 0:
            assert (
                rec["run"]["reused_from"] == sel["record"]
                and rec["metrics"]["val_acc"] == sel["best_val_acc"]
            )
            assert "infer_unmerged_rel" in rec["metrics"]  # the ledger is measured for the cell
        assert len(sel["curve"]) == len(designed)
        assert sel["curve"][-1] == max(trials[c].value for c in designed) <= sel["best_val_acc"]
        assert set(sel["sensitivity"]) >= {"head_lr-", "head_lr+"}
    tuning_records = load_records(runs, "tuned-smoke-tune")
    assert len(tuning_records) == sum(len(_candidates(ts)) for ts in studies.values())  # one per candidate
    # Resumed: nothing is re-tuned, nothing re-run.
    assert main(argv + ["--seeds", "2"]) == 0
    out = capsys.readouterr().out
    assert "  tune " not in out and "4 done" in out
    assert {k: len(v) for k, v in _tuning_studies(runs).items()} == {k: len(v) for k, v in studies.items()}
    # The leaderboard shows the tuned rates, the tuning evidence and the charts; no tuning row.
    out_md = tmp_path / "lb.md"
    assert (
        main(["leaderboard", "--runs-dir", str(runs), "--study", "tuned-smoke", "--output", str(out_md)]) == 0
    )
    md = out_md.read_text()
    assert "## Tuning evidence" in md and "## Containment checks" in md and "tuning margin" in md
    for chart in ("lr_sensitivity", "tuning_curves"):
        assert (runs / "charts" / "tuned-smoke" / f"{chart}.png").is_file()
    # Fixed-rate mode on request: the grid's [lr] rates, and the record says so.
    assert main([*argv, "--no-tune", "--only", "head"]) == 0
    fixed = [r for r in load_records(runs, "tuned-smoke") if r["tuning"]["mode"] == "fixed"]
    assert len(fixed) == 1 and fixed[0]["config"]["lr"] == 5e-3
    capsys.readouterr()
    assert main([*argv, "--no-tune", "--only", "head", "--status"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith("(1 rates fixed); cells 1 of 1 done")


def test_status_projects_what_is_left_from_each_configurations_own_run_times():
    """A tuned row's seed cells cost what its selected candidate took (its tuning seed's cell reuses
    that run); a row still tuning has as many candidates left as the tuned rows took (median), at
    its own median so far, then its seeds at that cost."""
    from optuna.trial import create_trial

    from bench.progress import _Left

    def timed(hours: float, seed: int = 0):
        start = dt.datetime(2026, 12, 6)
        t = create_trial(state=TrialState.COMPLETE, value=0.8, user_attrs={"config": {"seed": seed}})
        t.datetime_start, t.datetime_complete = start, start + dt.timedelta(hours=hours)
        return t

    tuned = optuna.create_study()
    for hours in (0.2, 1.0, 0.3):
        tuned.add_trial(timed(hours))
    tuned.set_user_attr("selection", {"trials": 20, "best_trial": 1})
    tuning = optuna.create_study()
    for hours in (0.5, 0.5, 0.7):
        tuning.add_trial(timed(hours))
    left = _Left()
    # seeds 0-3 of the tuned row left: seed 0 reuses the 1-hour selected run, the other three cost 1 h
    left.tuned(tuned, [RunConfig(name="a", method="full", policy="full", seed=s) for s in range(4)])
    left.tuning_now.append((tuning, 3, 5))  # 3 candidates done, 5 seed cells to run
    left.unmeasured = 1
    # tuning (20 - 3) x 0.5 h; seed cells 3 x 1 h + 4 x 0.5 h
    assert left.line() == (
        "left, projected from each configuration's own run times: ~13.5 worker-hours (tuning ~8.5, "
        "seed cells ~5.0); 1 configuration with no run timed yet not counted"
    )
    assert _Left().line() is None  # nothing left
    # a row past the tuned rows' median (20) still has the candidate it is running: 1 x 0.5 h
    past = _Left()
    past.tuned(tuned, [])
    past.tuning_now.append((tuning, 25, 1))
    assert past.line() == (
        "left, projected from each configuration's own run times: ~0.5 worker-hours (tuning ~0.5, "
        "seed cells ~0.0)"
    )


@pytest.mark.slow
def test_killed_tuning_stage_resumes_without_rerunning_candidates(tmp_path, tiny_grid):
    grid = tiny_grid(TUNED_GRID, "killed")
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "bench", "run", "grid", "--grid", str(grid), "--runs-dir", str(runs)]
    cmd += ["--no-progress"]
    env = {**os.environ, "LORAFIT_HEARTBEAT_S": "1", "LORAFIT_GRACE_S": "3", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline, seen = time.time() + 120, 0
    for line in proc.stdout:  # killed inside the tuning stage, after a few finished candidates
        seen += line.startswith("  tune ")
        if seen >= 6 or time.time() > deadline:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not load_records(runs, "killed-smoke"), "the grid's cells had not started"
    before = {name: _candidates(ts) for name, ts in _tuning_studies(runs).items()}
    assert sum(len(c) for c in before.values()) >= 5  # the last printed one may not be stored yet
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    for name, trials in _tuning_studies(runs).items():
        finished = [t for t in trials if "candidate" in t.user_attrs and t.state == TrialState.COMPLETE]
        ids = [t.user_attrs["candidate"] for t in finished]
        assert len(ids) == len(set(ids)), f"{name}: a candidate ran twice"
        for cid, t in before.get(name, {}).items():  # finished ones kept, not re-run
            assert _candidates(trials)[cid].number == t.number
    assert len(load_records(runs, "killed-smoke")) == 2


@pytest.mark.parametrize(
    "last, elsewhere",
    [
        ("failed for its worker just now", False),  # the heartbeat check failed a dead worker's trial
        ("recorded failure just now", True),  # a live worker's diverged candidate
        ("complete just now", True),
    ],
)
@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # fail_stale_trials
def test_a_crashed_workers_tuning_study_is_taken_over_at_once(last, elsewhere):
    """A study counts as tuned elsewhere while another worker shows signs of life in it; the moment
    its dead worker's trial was failed is none (it made a resumed stage skip the row)."""
    from optuna.trial import create_trial

    from bench import tuning
    from bench.trials import RECORDED

    study = optuna.create_study()
    now = dt.datetime.now()
    hour_ago = now - dt.timedelta(hours=1)
    done = create_trial(state=TrialState.COMPLETE, value=0.5)
    done.datetime_start = done.datetime_complete = hour_ago
    state = TrialState.COMPLETE if last.startswith("complete") else TrialState.FAIL
    latest = create_trial(state=state, value=0.5 if state == TrialState.COMPLETE else None)
    latest.datetime_start, latest.datetime_complete = hour_ago, now
    if last.startswith("recorded"):
        latest.set_user_attr(RECORDED, True)
    for t in (done, latest):
        study.add_trial(t)
    study.set_user_attr("claimed_at", hour_ago.timestamp())
    study.set_user_attr("owner", "another worker")
    assert tuning._tuned_elsewhere(study) is elsewhere


def test_a_rows_seed_cells_run_after_its_selection_and_while_waiting_for_another_worker(monkeypatch):
    """A row's seed cells run as soon as it is tuned, before the next row's tuning (a run cut short
    leaves whole rows); while the row left is tuned by another worker, this one runs a cell that
    waits (here one another worker held) instead of idling; then every cell comes back at its
    selection."""
    from types import SimpleNamespace

    from bench import tuning

    cells = [RunConfig(name=n, method=n, policy=n, seed=s) for n in ("full", "scratch") for s in (0, 1)]
    selected = {"head_lr": 0.03, "extensions": {}, "best_val_acc": 0.8, "best_candidate": "d00", "trials": 16}
    selected |= {"margin": 0.0, "fallback": False}
    events = []

    def tune(cfg, *args):
        if cfg.method == "scratch" and events.count("wait") < 2:  # another worker tunes it
            events.append("wait")
            return None
        events.append(f"tuned {cfg.method}")
        return dict(selected, lr=0.01 if cfg.method == "full" else 0.02)

    pending = {(c.name, c.seed) for c in cells}

    def meanwhile(ready):
        held = set() if "wait" in events else {("full", 1)}  # another worker's, until it lets go
        todo = [c.config for c in ready if (c.config.name, c.config.seed) in pending - held]
        if todo:
            pending.discard((todo[0].name, todo[0].seed))
            events.append((todo[0].name, todo[0].seed, todo[0].lr))
        return bool(todo)

    monkeypatch.setattr(tuning, "tune", tune)
    monkeypatch.setattr(tuning.time, "sleep", lambda s: pytest.fail("a worker with a cell to run idled"))
    ctx = SimpleNamespace(between_runs=lambda: None, log=lambda *a: None)
    spec = SimpleNamespace(candidates=16)
    plan = tuning.tune_cells(cells, spec, ctx, "g", None, show_progress=False, meanwhile=meanwhile)
    assert events == [
        "tuned head",  # the probe full contains, which the grid lacks: tuned, runs no cells
        "tuned full",
        ("full", 0, 0.01),
        "wait",
        "wait",
        ("full", 1, 0.01),
        "tuned scratch",
        ("scratch", 0, 0.02),
        ("scratch", 1, 0.02),
    ]
    assert [(c.config.name, c.config.lr) for c in plan] == [("full", 0.01)] * 2 + [("scratch", 0.02)] * 2
    # nothing to run meanwhile (no row tuned yet): it waits
    events.clear()
    pending.update((c.name, c.seed) for c in cells[2:])
    monkeypatch.setattr(tuning.time, "sleep", lambda s: events.append("sleep"))
    plan = tuning.tune_cells(cells[2:], spec, ctx, "g", None, show_progress=False, meanwhile=meanwhile)
    assert len(plan) == 2
    assert events == [
        "wait",
        "sleep",
        "wait",
        "sleep",
        "tuned scratch",
        ("scratch", 0, 0.02),
        ("scratch", 1, 0.02),
    ]


def test_a_drain_requested_during_a_rows_last_candidate_stops_the_worker_before_its_seed_cells(monkeypatch):
    """The drain check comes before each seed cell run after a selection, as before each candidate."""
    from types import SimpleNamespace

    from bench import tuning
    from bench.drain import Drained

    selected = {"lr": 0.01, "head_lr": 0.03, "extensions": {}, "best_val_acc": 0.8, "best_candidate": "d00"}
    selected |= {"trials": 16, "margin": 0.0, "fallback": False}
    drained = []
    monkeypatch.setattr(tuning, "tune", lambda *a: drained.append(True) or selected)  # requested meanwhile

    def between_runs():
        if drained:
            raise Drained("g")

    ctx = SimpleNamespace(between_runs=between_runs, log=lambda *a: None)
    cells = [RunConfig(name="head", method="head", policy="head", seed=0)]
    ran = []
    with pytest.raises(Drained):
        tuning.tune_cells(cells, SimpleNamespace(candidates=16), ctx, "g", None, False, ran.append)
    assert ran == []


@pytest.mark.slow
def test_two_workers_share_the_tuning_stage_without_changing_its_candidates(tmp_path, tiny_grid):
    """Each configuration is claimed by one worker and tuned as one worker would: every candidate
    once, one selection per configuration, every cell run once."""
    grid = tiny_grid(TUNED_GRID, "pair")
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "bench", "run", "grid", "--grid", str(grid), "--runs-dir", str(runs)]
    cmd += ["--no-progress", "--threads", "1"]
    env = {**os.environ, "LORAFIT_HEARTBEAT_S": "1", "LORAFIT_GRACE_S": "3", "PYTHONUNBUFFERED": "1"}
    workers = [
        subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ]
    seen = []
    for line in workers[0].stdout:  # the second one starts once the first tunes its first configuration
        seen.append(line)
        if line.startswith("tuning ") and not line.startswith("tuning stage"):
            break
    workers.append(
        subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    )
    outs = [w.communicate(timeout=300)[0] for w in workers]
    outs[0] = "".join(seen) + outs[0]
    assert [w.returncode for w in workers] == [0, 0], outs
    studies = _tuning_studies(runs)
    assert len(studies) == 2
    for trials in studies.values():
        ids = [t.user_attrs["candidate"] for t in trials if t.state == TrialState.COMPLETE]
        assert len(ids) == len(set(ids)) and {f"d{i:02d}" for i in range(4)} <= set(ids)
    selections = {json.dumps(r["tuning"], sort_keys=True) for r in load_records(runs, "pair-smoke")}
    records = load_records(runs, "pair-smoke")
    assert len(records) == 2 and len({r["run"]["id"] for r in records}) == 2 and len(selections) == 2
    assert any("waiting" in out for out in outs), outs  # the first to finish waits for the other


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
        self.conv1.register_forward_pre_hook(self._record)

    def _record(self, module, args):
        if self.training:
            self.seen.append(args[0][:, 0, 0, 0].detach().clone())


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


@pytest.mark.parametrize(
    "table, message",
    [
        ({"trials": 8}, "first tuning protocol.*use candidates"),
        ({"pruner": "median"}, "first tuning protocol"),
        ({"candidates": 12}, "power of two"),
        ({"lr": 1e-3}, "pair"),
        ({"head_lr": [1e-1, 1e-3]}, "0 < low < high"),
        ({"budget": 3}, "unknown key"),
    ],
)
def test_tune_spec_rejects_bad_tables(table, message):
    with pytest.raises(LorafitError, match=message):
        protocol.TuneSpec.from_table(table)
