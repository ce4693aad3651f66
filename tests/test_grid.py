"""`python -m bench run grid`: the grid file, the smoke grid end to end, resume, and bad input."""

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
from grids import TINY_GRID

from bench.__main__ import DEFAULT_GRID, main
from bench.grid import load_grid, load_tuning
from bench.records import load_records
from lorafit import backbones, names
from lorafit.adapters import AdapterSettings, count
from lorafit.config import RunConfig
from lorafit.errors import LorafitError
from lorafit.model import SeedCNN

ROOT = Path(__file__).resolve().parents[1]
RECORD_KEYS = {
    "run": {"id", "study", "trial", "created_at", "git_sha", "status", "error"},
    "metrics": {
        "test_acc",
        "test_balanced_acc",
        "test_macro_f1",
        "source_acc_after",
        "trainable_params",
        "total_params",
        "adapter_bytes",
        "train_s",
        "images_per_s",
        "peak_mem_mb",
        "adapter_file_bytes",  # the parameter ledger
        "infer_unmerged_rel",
        "infer_merged_rel",
    },
    "env": {
        "python",
        "torch",
        "torchvision",
        "optuna",
        "device",
        "cpu",
        "gpu",
        "protocol",
        "target_files",
        "source_files",
    },
}


def _lora(placement: str, rank: int) -> RunConfig:
    shape = "kxk" if placement == "convs" else "1x1"
    return RunConfig(name="lora", method="lora", placement=placement, rank=rank, shape=shape, policy="lora")


PEFT_METHODS = ("dora", "loha", "lokr", "oft", "ia3")


@pytest.mark.parametrize("network", ["seed-cnn", "residual-cnn"])
def test_local_runs_each_peft_method_at_the_size_nearest_lora_r8(network):
    """The local profile's row cut (docs/results.md "Third edition"): each PEFT method once per
    placement, at the size whose adapter count is nearest LoRA r8's there; every other row runs
    on local exactly as in the smoke and paper profiles (which keep the brackets)."""
    model = backbones.shape_model(network)
    everything = [c for c in load_grid(DEFAULT_GRID, "smoke") if c.backbone == network]
    local = [c for c in load_grid(DEFAULT_GRID, "local", seeds=1, tuned=True) if c.backbone == network]

    def size(c: RunConfig) -> int:
        return count(model, c.method, c.placement, c.adapter_settings)

    def lora_r8(placement: str) -> int:
        (r8,) = [
            c
            for c in everything
            if (c.method, c.placement, c.rank, c.policy) == ("lora", placement, 8, "lora")
        ]
        return size(r8)

    pairs = {(c.method, c.placement) for c in everything if c.method in PEFT_METHODS}
    assert pairs and pairs == {(c.method, c.placement) for c in local if c.method in PEFT_METHODS}
    for method, placement in pairs:
        kept = [c.rank for c in local if (c.method, c.placement) == (method, placement)]
        sizes = [c for c in everything if (c.method, c.placement) == (method, placement)]
        nearest = min(sizes, key=lambda c: abs(size(c) - lora_r8(placement)))
        assert kept == [nearest.rank], (method, placement)

    def others(cells: list[RunConfig]) -> list[str]:
        return sorted(c.name + f"-r{c.rank}-{c.policy}" for c in cells if c.method not in PEFT_METHODS)

    assert others(local) == others(everything)


@pytest.mark.parametrize(
    ("profile", "networks"),
    [("smoke", {"seed-cnn", "residual-cnn", "resnet18"}), ("local", {"seed-cnn", "residual-cnn"})],
)
def test_each_profile_runs_the_backbones_its_edition_covers(profile, networks):
    """ResNet-18 is too slow for local on 2 cores (docs/results.md): a bare `--profile local` must
    not queue its rows behind the two backbones the third edition covers."""
    assert {c.backbone for c in load_grid(DEFAULT_GRID, profile, seeds=1, tuned=True)} == networks


def test_grid_file_declares_the_ablation():
    every = load_grid(DEFAULT_GRID, "smoke")
    cells = [c for c in every if c.backbone == "seed-cnn"]
    names = sorted({c.name for c in cells})
    assert {
        "scratch",
        "full",
        "head",
        "seed-post",
        "lora-proj",
        "lora-conv1-kxk",
        "lora-conv2",
        "lora-conv3",
        "lora-convs-kxk",
        "lora-proj-conv2",
        "lora-proj-bitfit",
        *(f"{m}-{p}" for m in ("dora", "loha", "lokr", "ia3") for p in ("proj", "convs")),
        "oft-proj",  # OFT takes proj only
    } == set(names)
    assert sorted(c.rank for c in cells if c.name == "lora-proj") == [1, 2, 4, 8, 16, 32, 64]
    assert sorted(c.rank for c in cells if c.name == "lora-convs-kxk") == [4, 8]  # bound 9 on conv1
    # The method section brackets LoRA's budgets on the same placement (adapter parameters).
    model = SeedCNN(62)

    def budget(c) -> int:
        return count(model, c.method, c.placement, c.adapter_settings)

    for placement, lo, hi in (("proj", 4, 16), ("convs", 4, 8)):
        lora = [
            budget(c) for c in cells if c.method == "lora" and c.placement == placement and c.policy == "lora"
        ]
        want = [b for b in lora if budget(_lora(placement, lo)) <= b <= budget(_lora(placement, hi))]
        for method in ("dora", "loha"):
            sizes = sorted(budget(c) for c in cells if c.method == method and c.placement == placement)
            assert len(sizes) >= 2 and sizes[0] <= min(want) * 1.1 and sizes[-1] >= max(want) * 0.9
    assert all(c.seed == 0 for c in cells)  # smoke: one seed
    assert len(load_grid(DEFAULT_GRID, "paper", seeds=5, tuned=True)) == 5 * len(every)  # every row
    assert {c.seed for c in load_grid(DEFAULT_GRID, "local", tuned=True)} == set(range(5))  # 5 paired seeds
    assert len({c.lr for c in cells}) > 1  # fixed mode: each method has its own rate
    # One section per other backbone: probe, full, scratch and LoRA on each of its placement groups.
    for network in ("residual-cnn", "resnet18"):
        rows = [c for c in every if c.backbone == network]
        assert {c.method for c in rows} >= {"head", "full", "scratch", "lora", "dora", "oft"}
        groups = {c.placement for c in rows if c.method == "lora" and c.rank == 8 and c.policy == "lora"}
        assert groups == set(backbones.placements(network)[1:])
    # The smoke profile runs at fixed rates; local and paper tune every configuration.
    assert load_tuning(DEFAULT_GRID, "smoke") is None
    local, paper = load_tuning(DEFAULT_GRID, "local"), load_tuning(DEFAULT_GRID, "paper")
    assert local == paper and local.candidates >= 16
    assert (
        local.lr[0] <= 1e-5 and local.lr[1] >= 1e-1 and local.head_lr[0] <= 1e-3 and local.head_lr[1] >= 1e-1
    )
    for extra in sorted((ROOT / "studies" / "grids").glob("*.toml")):  # every shipped grid parses
        # the same design; the checks that ran the first form of the neighbour rule pin it
        assert replace(load_tuning(extra, "local"), refine=local.refine) == local, extra
    seed = next(c for c in cells if c.name == "seed-post")
    assert (seed.placement, seed.policy, seed.rank, seed.alpha) == ("post-proj", "conv2", 8, 1.0)
    assert next(c for c in cells if c.name == "lora-proj" and c.rank == 16).alpha == 16.0  # scale 1


def _trials(runs: Path, study: str):
    return optuna.load_study(study_name=study, storage=f"sqlite:///{runs / 'optuna.db'}").get_trials()


def test_smoke_grid_end_to_end_and_resume(tmp_path, tiny_grid, capsys):
    runs = tmp_path / "runs"
    grid = tiny_grid()
    argv = ["run", "grid", "--grid", str(grid), "--runs-dir", str(runs), "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    # pretrained here, or copied from the session's shared backbone cache (another test made it)
    assert "4 done" in out and ("pretraining backbone" in out or "from the shared backbone cache" in out)
    records = sorted((runs / "records" / "tiny-smoke").glob("*.json"))
    assert len(records) == 4
    for path in records:
        rec = json.loads(path.read_text())
        for section, keys in RECORD_KEYS.items():
            assert keys <= set(rec[section]), (section, keys - set(rec[section]))
        assert rec["run"]["status"] == "complete" and rec["run"]["error"] is None
        assert rec["config"]["protocol"] == "synthetic" and rec["env"]["protocol"] == "synthetic"
        assert 0.05 < rec["metrics"]["test_acc"] <= 1  # 62 classes: chance is 0.016
        assert 0 <= rec["metrics"]["source_acc_after"] <= 1
        assert len(rec["curve"]) == rec["config"]["epochs"]
        assert len(rec["analysis"]["confusion"]) == 62
        m = rec["metrics"]
        if rec["config"]["method"] in ("head", "full", "scratch"):  # no adapter: nothing to ship or time
            assert m["adapter_file_bytes"] is None and m["infer_unmerged_rel"] is None
        else:  # a saved file holds at least its float32 tensors; every method here merges
            cfg = rec["config"]
            settings = AdapterSettings(rank=cfg["rank"], alpha=cfg["alpha"], shape=cfg["shape"])
            adapter_only = count(SeedCNN(62), cfg["method"], cfg["placement"], settings)
            assert m["adapter_file_bytes"] > 4 * adapter_only
            assert m["infer_unmerged_rel"] > 0 and m["infer_merged_rel"] > 0
    assert len(list((runs / "backbones").glob("*.pt"))) == 1
    # Honest ranks: every learned update's effective rank is recorded, and fixed rates say so.
    by_name = {r["config"]["name"]: r for r in (json.loads(p.read_text()) for p in records)}
    ranks = by_name["lora-proj"]["analysis"]["adapters"]
    assert ranks == {"proj": {"method": "lora", "nominal_rank": 2, "rank_bound": 2, "effective_rank": 2}}
    assert by_name["lora-proj"]["metrics"]["effective_rank_min"] == 2
    assert by_name["head"]["analysis"]["adapters"] == {} and by_name["head"]["tuning"] == {"mode": "fixed"}
    assert 1 <= by_name["seed-post"]["analysis"]["adapters"]["adapter"]["effective_rank"] <= 8
    trials = _trials(runs, "tiny-smoke")
    assert sorted(t.state.name for t in trials) == ["COMPLETE"] * 4
    # A second invocation finds nothing to do: no new trial, no new record, no pretraining.
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "4 done" in out and "pretraining" not in out
    assert len(_trials(runs, "tiny-smoke")) == 4
    assert sorted((runs / "records" / "tiny-smoke").glob("*.json")) == records
    # More seeds later: only the new cells run, and they reuse their configuration's inference timing
    # (the ledger depends on the architecture only); the smoke profile times 256 images.
    assert main(argv + ["--seeds", "2"]) == 0
    assert len(_trials(runs, "tiny-smoke")) == 8
    by_seed = {}
    for rec in load_records(runs, "tiny-smoke"):
        by_seed.setdefault(rec["config"]["name"], {})[rec["config"]["seed"]] = rec
    for name, seeds in by_seed.items():
        first, second = seeds[0]["metrics"], seeds[1]["metrics"]
        assert "ledger_from" not in first and second["ledger_from"] == seeds[0]["run"]["id"], name
        assert second["infer_unmerged_rel"] == first["infer_unmerged_rel"] and first["ledger_images"] == 256


def test_a_cell_runs_only_in_its_profiles(tiny_grid):
    path = tiny_grid(
        '[lr]\nhead = 1e-3\nfull = 1e-3\n[[cell]]\nname = "head"\nmethod = "head"\npolicy = "head"\n'
        '[[cell]]\nname = "full"\nmethod = "full"\npolicy = "full"\nprofiles = ["paper"]'
    )
    assert {c.name for c in load_grid(path, "smoke")} == {"head"}
    assert {c.name for c in load_grid(path, "paper")} == {"head", "full"}


def test_backbone_option_runs_only_that_backbones_cells(tmp_path):
    runs = tmp_path / "runs"
    argv = ["run", "grid", "--runs-dir", str(runs), "--no-progress", "--only", "head"]
    assert main([*argv, "--backbone", "residual-cnn"]) == 0
    records = load_records(runs)
    assert [r["config"]["name"] for r in records] == ["rcnn-head"]


BAD_GRIDS = {
    "malformed": ("[[cell]\nname = 1", "malformed TOML"),
    "unknown key": (
        '[lr]\nlora = 1e-3\n[[cell]]\nname = "x"\nmethod = "lora"\nplacement = "proj"\nrank = 2\npolicy = "lora"\nranks = 3',
        "unknown key",
    ),
    "unknown section": (
        '[defaults]\nseeds = 2\n[[cell]]\nname = "x"\nmethod = "head"\npolicy = "head"',
        "unknown section",
    ),
    "unknown placement": (
        '[lr]\nlora = 1e-3\n[[cell]]\nname = "x"\nmethod = "lora"\nplacement = "fc"\nrank = 2\npolicy = "lora"',
        "unknown placement",
    ),
    "unknown policy": (
        '[lr]\nlora = 1e-3\n[[cell]]\nname = "x"\nmethod = "lora"\nplacement = "proj"\nrank = 2\npolicy = "frozen"',
        "unknown freeze policy",
    ),
    "unknown shape": (
        '[lr]\nlora = 1e-3\n[[cell]]\nname = "x"\nmethod = "lora"\nplacement = "convs"\nshape = "3x3"\nrank = 2\npolicy = "lora"',
        "unknown shape",
    ),
    "rank 0": (
        '[lr]\nlora = 1e-3\n[[cell]]\nname = "x"\nmethod = "lora"\nplacement = "proj"\nrank = 0\npolicy = "lora"',
        "rank must be",
    ),
    "string lr": (
        '[lr]\nlora = "fast"\n[[cell]]\nname = "x"\nmethod = "lora"\nplacement = "proj"\nrank = 2\npolicy = "lora"',
        "lr must be a number",
    ),
    "no lr": ('[[cell]]\nname = "x"\nmethod = "head"\npolicy = "head"', "no learning rate"),
    "no cells": ("[lr]\nhead = 1e-3", "no [[cell]]"),
    "unknown lr profile": (
        '[lr]\nhead = 1e-3\n[lr.huge]\nhead = 1e-2\n[[cell]]\nname = "x"\nmethod = "head"\npolicy = "head"',
        "unknown method(s) or profile(s) huge",
    ),
    "degenerate rank": (
        '[lr]\nlora = 1e-3\n[[cell]]\nname = "x"\nmethod = "lora"\nplacement = "conv1"\nrank = 4\npolicy = "lora"',
        "rank 4 exceeds what the layer allows (conv1.conv allows 1)",
    ),
    "degenerate kxk rank": (
        '[lr]\nlora = 1e-3\n[[cell]]\nname = "x"\nmethod = "lora"\nplacement = "convs"\nshape = "kxk"\nrank = 16\npolicy = "lora"',
        "conv1.conv allows 9",
    ),
    "bad tune key": (
        '[tune]\nbudget = 3\n[[cell]]\nname = "x"\nmethod = "head"\npolicy = "head"',
        "[tune] has unknown key",
    ),
    "bad tune range": (
        '[tune]\nlr = [1e-2, 1e-4]\n[[cell]]\nname = "x"\nmethod = "head"\npolicy = "head"',
        "0 < low < high",
    ),
    "bad tune profile": (
        '[tune]\nprofiles = ["huge"]\n[[cell]]\nname = "x"\nmethod = "head"\npolicy = "head"',
        "unknown profile",
    ),
    "a size the method cannot take": (
        '[lr]\nia3 = 1e-3\n[[cell]]\nname = "x"\nmethod = "ia3"\nplacement = "proj"\nrank = 2\npolicy = "lora"',
        "ia3 has no rank",
    ),
    "bad cell profiles": (
        '[lr]\nhead = 1e-3\n[[cell]]\nname = "x"\nmethod = "head"\npolicy = "head"\nprofiles = ["huge"]',
        "profiles must be a list of smoke, local, paper",
    ),
    "method on the wrong placement": (
        '[lr]\nlora = 1e-3\n[[cell]]\nname = "x"\nmethod = "lora"\nplacement = "post-proj"\nrank = 2\npolicy = "lora"',
        "cannot be placed on 'post-proj'",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_GRIDS))
def test_bad_grid_files_exit_2_with_one_line(case, tmp_path, tiny_grid, capsys):
    text, message = BAD_GRIDS[case]
    runs = tmp_path / "runs"
    code = main(["run", "grid", "--grid", str(tiny_grid(text)), "--runs-dir", str(runs)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not runs.exists()  # nothing written


@pytest.mark.parametrize(
    "args,message",
    [
        (["--profile", "huge"], "unknown profile"),
        (["--grid", "no-such-grid.toml"], "file not found"),
        (["--seeds", "0"], "--seeds must be >= 1"),
        (["--seeds", "two"], "--seeds must be an integer"),
        (["--profile", "local", "--data-dir", "/nonexistent/data"], "--data-dir"),
        (["--profile", "local", "--data-dir", "EMPTY"], "--profile smoke"),
        (["--storage", "postgresql://nobody@127.0.0.1:1/none"], "cannot open storage"),
        (["--storage", "redis://localhost"], "unsupported storage URL"),
        (["--runs-dir", "FILE/runs"], "not writable"),
        (["--only", "nothing-matches"], "matches no cell"),
        (["--backbone", "seed-cnn,resnet50"], "no cell of this grid uses resnet50 on profile smoke"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args, message, tmp_path, capsys):
    (tmp_path / "FILE").write_text("a file, not a folder")
    (tmp_path / "EMPTY").mkdir()
    args = [a.replace("FILE", str(tmp_path / "FILE")).replace("EMPTY", str(tmp_path / "EMPTY")) for a in args]
    runs = tmp_path / "runs"
    try:
        code = main(["run", "grid", "--runs-dir", str(runs), *args])
    except SystemExit as e:  # argparse's own checks exit directly
        code = e.code
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert "Traceback" not in err
    assert not runs.exists() or not any(runs.rglob("*"))


@pytest.mark.slow
def test_cli_process_exit_status_and_no_traceback(tmp_path):
    """The real entry point, as a user runs it."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "run",
            "grid",
            "--profile",
            "nope",
            "--runs-dir",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: unknown profile 'nope'; choose one of smoke, local, paper"
    ]
    help_ = subprocess.run(
        [sys.executable, "-m", "bench", "run", "--help"], capture_output=True, text=True, cwd=ROOT
    )
    assert help_.returncode == 0 and "--profile" in help_.stdout and "--storage" in help_.stdout


def test_load_grid_rejects_empty_list(tmp_path, tiny_grid):
    path = tiny_grid(
        '[lr]\nlora = 1e-3\n[[cell]]\nname = "x"\nmethod = "lora"\nplacement = "proj"\nrank = []\npolicy = "lora"'
    )
    with pytest.raises(LorafitError, match="empty list"):
        load_grid(path, "smoke")


@pytest.mark.slow
def test_output_to_a_file_has_no_progress_bar_escapes(tmp_path, tiny_grid):
    """In a log file (not a terminal) the grid prints its one-line summaries and the next command,
    without tqdm's bars or their cursor escapes, even without --no-progress."""
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "bench", "run", "grid", "--grid", str(tiny_grid()), "--runs-dir", str(runs)]
    proc = subprocess.run([*cmd, "--only", "head"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    both = proc.stdout + proc.stderr
    assert "\x1b[" not in both and "\r" not in both and "it/s" not in both and "ep/s" not in both
    assert "head-s0-" in proc.stdout and " complete " in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == (
        f"next: python -m bench leaderboard --runs-dir {runs} --study tiny-smoke"
    )


def test_old_spellings_of_the_seed_post_are_read_as_the_new_ones(tmp_path, capsys, monkeypatch):
    """Method, placement and policy "seed" (before the rename) still parse, as residual, post-proj
    and conv2, with one line on stderr per renamed value; old records too (RunConfig.from_dict)."""
    monkeypatch.setattr(names, "_told", set())  # the note is printed once per process
    old = tmp_path / "old.toml"
    old.write_text(
        '[lr]\nseed = 3e-3\n[[cell]]\nname = "seed-post"\nmethod = "seed"\nplacement = "seed"\nrank = 8\n'
        'alpha = 1.0\npolicy = "seed"\n'
    )
    (cell,) = load_grid(old, "smoke")
    assert (cell.method, cell.placement, cell.policy, cell.lr) == ("residual", "post-proj", "conv2", 3e-3)
    shipped = next(c for c in load_grid(DEFAULT_GRID, "smoke") if c.name == "seed-post")
    assert cell == shipped.replace(lr=3e-3)
    notes = capsys.readouterr().err.splitlines()
    assert notes == [
        "note: method 'seed' is now spelled 'residual'; the old spelling is read as the new one",
        "note: placement 'seed' is now spelled 'post-proj'; the old spelling is read as the new one",
        "note: policy 'seed' is now spelled 'conv2'; the old spelling is read as the new one",
    ]
    assert RunConfig.from_dict({**cell.to_dict(), "method": "seed", "policy": "seed"}) == cell


def test_a_second_runs_dir_copies_the_backbone_from_the_shared_cache(
    tmp_path, tiny_grid, monkeypatch, capsys
):
    monkeypatch.setenv("LORAFIT_CACHE_DIR", str(tmp_path / "cache"))
    grid = tiny_grid(
        TINY_GRID.split("[[cell]]")[0] + '[[cell]]\nname = "head"\nmethod = "head"\npolicy = "head"\n'
    )
    for runs in ("a", "b"):
        assert (
            main(["run", "grid", "--grid", str(grid), "--runs-dir", str(tmp_path / runs), "--no-progress"])
            == 0
        )
    first, second = capsys.readouterr().out.split("1 done", 1)
    assert "pretraining backbone" in first and "pretraining" not in second
    assert "copied from the shared backbone cache" in second
    (a,), (b,) = ((tmp_path / r / "backbones").glob("*.pt") for r in ("a", "b"))
    assert a.name == b.name and a.read_bytes() == b.read_bytes()
    (rec_a,), (rec_b,) = (load_records(tmp_path / r, "tiny-smoke") for r in ("a", "b"))
    assert rec_a["metrics"]["test_acc"] == rec_b["metrics"]["test_acc"]
