"""Study files and `python -m bench study`: validation, resume, pruning, the Pareto front."""

import json

import optuna
import pytest

from bench.__main__ import main
from bench.studies import load_study_file, study_files
from lorafit.errors import LorafitError

PRUNE_STUDY = """
[study]
description = "pruning check"
objectives = ["val_acc"]
directions = ["maximize"]
sampler = "random"
pruner = "median"
seed = 1
trials = 7
profile = "smoke"

[fixed]
name = "prune"
method = "lora"
placement = "proj"
rank = 4
policy = "lora"
train_size = 600
epochs = 3

[[param]]
name = "lr"
low = 1e-5
high = 3e-2
log = true
"""


@pytest.mark.parametrize("name", sorted(study_files()))
def test_shipped_study_files_are_valid(name):
    _, spec = load_study_file(name)
    assert spec["study"]["description"]


def test_the_required_studies_exist():
    names = set(study_files())
    assert {"lr_full", "lr_head", "lr_lora", "lr_scratch", "lr_seed", "pareto", "rank_alpha"} <= names
    _, pareto = load_study_file("pareto")
    assert pareto["study"]["directions"] == ["maximize", "minimize"]


BAD = {
    "unknown section": ("[study]\n[space]\n", "unknown section"),
    "unknown objective": ('[study]\nobjectives = ["speed"]\ndirections = ["maximize"]', "unknown objective"),
    "length mismatch": (
        '[study]\nobjectives = ["val_acc"]\ndirections = ["maximize", "minimize"]',
        "equal length",
    ),
    "pruned multi": (
        '[study]\nobjectives = ["val_acc", "trainable_params"]\ndirections = ["maximize", "minimize"]\npruner = "median"',
        "single objective",
    ),
    "bad sampler": ('[study]\nsampler = "grid"', "unknown sampler"),
    "no range": (
        '[fixed]\nname = "x"\nmethod = "head"\npolicy = "head"\n[[param]]\nname = "lr"',
        "choices or low/high",
    ),
    "late condition": (
        '[fixed]\nname = "x"\nmethod = "head"\npolicy = "head"\n[[param]]\nname = "lr"\nlow = 0.1\nhigh = 0.2\nwhen = {rank = 2}',
        "not declared before",
    ),
    "bad fixed": (
        '[fixed]\nname = "x"\nmethod = "lora"\nplacement = "fc"\npolicy = "lora"\nrank = 2',
        "unknown placement",
    ),
    "bad profile": ('[study]\nprofile = "giant"', "unknown profile"),
    "malformed": ("[study", "malformed TOML"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_study_files_exit_2_with_one_line(case, tmp_path, capsys):
    text, message = BAD[case]
    path = tmp_path / "bad.toml"
    path.write_text(text)
    assert main(["study", str(path), "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "runs").exists()


def test_unknown_study_name(capsys, tmp_path):
    assert main(["study", "nope", "--runs-dir", str(tmp_path)]) == 2
    assert "unknown study 'nope'" in capsys.readouterr().err


def test_list(capsys):
    assert main(["study", "--list"]) == 0
    out = capsys.readouterr().out
    assert "pareto" in out and "rank_alpha" in out and "INVALID" not in out


def test_study_runs_prunes_and_resumes(tmp_path, capsys):
    path = tmp_path / "prunes.toml"
    path.write_text(PRUNE_STUDY)
    runs = tmp_path / "runs"
    argv = ["study", str(path), "--runs-dir", str(runs), "--no-progress"]
    assert main(argv + ["--trials", "5"]) == 0
    storage = f"sqlite:///{runs / 'optuna.db'}"
    study = optuna.load_study(study_name="prunes-smoke", storage=storage)
    states = [t.state.name for t in study.get_trials()]
    assert len(states) == 5 and "COMPLETE" in states
    assert main(argv + ["--trials", "5"]) == 0  # resumes: nothing left to do
    assert len(study.get_trials()) == 5
    assert main(argv) == 0  # the file's 7 trials
    trials = study.get_trials()
    assert len(trials) == 7
    assert len({t.params["lr"] for t in trials}) == 7  # the resumed run drew new values
    completed = [t for t in trials if t.state.name == "COMPLETE"]
    records = sorted((runs / "records" / "prunes-smoke").glob("*.json"))
    assert len(records) == len(completed)  # completed trials leave a record, like grid cells
    rec = json.loads(records[0].read_text())
    assert rec["run"]["study"] == "prunes-smoke" and rec["run"]["status"] == "complete"
    out = capsys.readouterr().out
    best = max(completed, key=lambda t: t.value)
    assert f"[lr]\nlora = {best.params['lr']:.3g}" in out  # --best-style output after the run


def test_median_pruner_stops_a_bad_trial(tmp_path):
    path = tmp_path / "prunes.toml"
    path.write_text(PRUNE_STUDY)
    runs = tmp_path / "runs"
    runs.mkdir()
    study = optuna.create_study(
        study_name="prunes-smoke", storage=f"sqlite:///{runs / 'optuna.db'}", direction="maximize"
    )
    for lr in (0.01, 0.005, 0.003, 1e-5):  # three that learn, then one that cannot
        study.enqueue_trial({"lr": lr})
    assert main(["study", str(path), "--runs-dir", str(runs), "--trials", "4", "--no-progress"]) == 0
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3 + ["PRUNED"]
    assert "below the pruner" in trials[-1].user_attrs["pruned"]
    assert len(trials[-1].intermediate_values) < 3  # stopped before its last epoch


def test_repeated_configuration_reuses_the_completed_trial(tmp_path, capsys):
    path = tmp_path / "repeat.toml"
    path.write_text(PRUNE_STUDY.replace("low = 1e-5\nhigh = 3e-2\nlog = true", "choices = [0.01]"))
    runs = tmp_path / "runs"
    assert main(["study", str(path), "--runs-dir", str(runs), "--trials", "2", "--no-progress"]) == 0
    first, second = optuna.load_study(
        study_name="repeat-smoke", storage=f"sqlite:///{runs / 'optuna.db'}"
    ).get_trials()
    assert second.user_attrs["reused_from"] == first.number and second.values == first.values
    assert len(list((runs / "records" / "repeat-smoke").glob("*.json"))) == 1  # trained once


def test_pareto_study_has_a_front_and_best_prints_cells(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["study", "pareto", "--trials", "4", "--runs-dir", str(runs), "--no-progress"]) == 0
    study = optuna.load_study(study_name="pareto-smoke", storage=f"sqlite:///{runs / 'optuna.db'}")
    assert len(study.directions) == 2 and study.best_trials
    capsys.readouterr()
    assert main(["study", "pareto", "--best", "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# from study pareto-smoke") and "[[cell]]" in out and "method = " in out


def test_best_before_any_trial_is_a_clean_error(tmp_path, capsys):
    assert main(["study", "rank_alpha", "--best", "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert "has no trials" in err and "--profile smoke" in err and len(err.strip().splitlines()) == 1


def test_best_and_list_find_a_smoke_run_of_a_local_study(tmp_path, capsys):
    """lr_head defaults to the local profile; after a smoke run, --best and --list find that run."""
    runs = str(tmp_path / "runs")
    assert (
        main(["study", "lr_head", "--profile", "smoke", "--trials", "2", "--runs-dir", runs, "--no-progress"])
        == 0
    )
    capsys.readouterr()
    assert main(["study", "lr_head", "--best", "--runs-dir", runs]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# from study lr_head-smoke") and "[lr]" in out and "head = " in out
    assert main(["study", "--list", "--runs-dir", runs]) == 0
    assert "in storage: lr_head-smoke (2 trials)" in capsys.readouterr().out


def test_a_refused_combination_is_pruned_with_its_reason(tmp_path, capsys):
    """A sampled rank above conv1's bound (1x1 branch: rank 1) ends its trial pruned with the reason;
    the study goes on. The file's dry run (first choices) refuses a space whose first choice is bad."""
    spec = (
        '[study]\nsampler = "random"\ntrials = 4\n[fixed]\nname = "b"\nmethod = "head"\npolicy = "head"\n'
        'lr = 1e-3\n[[param]]\nname = "method"\nchoices = ["head", "lora"]\n'
        '[[override]]\nwhen = { method = "lora" }\nset = { placement = "conv1", rank = 4, policy = "lora" }\n'
    )
    path = tmp_path / "bound.toml"
    path.write_text(spec)
    runs = tmp_path / "runs"
    assert main(["study", str(path), "--runs-dir", str(runs), "--no-progress"]) == 0
    trials = optuna.load_study(
        study_name="bound-smoke", storage=f"sqlite:///{runs / 'optuna.db'}"
    ).get_trials()
    refused = [t for t in trials if "refused" in t.user_attrs]
    assert refused and all(t.state.name == "PRUNED" for t in refused)
    assert "conv1.conv allows 1" in refused[0].user_attrs["refused"]
    assert any(t.state.name == "COMPLETE" for t in trials)
    bad = tmp_path / "bad.toml"
    bad.write_text(spec.replace('choices = ["head", "lora"]', 'choices = ["lora", "head"]'))
    with pytest.raises(LorafitError, match="conv1.conv allows 1"):
        load_study_file(str(bad))
