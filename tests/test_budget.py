"""The training budget rule (lorafit.budget): when each schedule stops and why, and time to accuracy."""

import importlib.metadata

import numpy as np
import pandas as pd
import pytest
import torch

from bench.__main__ import main
from bench.records import load_records
from bench.reporting.epochs import GAINS, LOWER, WITHIN, budget_verdict, replaced_rival, verdict
from bench.reporting.leaderboard import render_markdown
from bench.sensitivity import representative
from lorafit.budget import PLATEAU_DECAYS, PLATEAU_FACTOR, Budget, time_to
from lorafit.config import RunConfig
from lorafit.errors import LorafitError


def _opt(lr: float = 1e-2) -> torch.optim.Optimizer:
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def _run(budget: Budget, accs: list[float]) -> tuple[str | None, int]:
    for epoch, acc in enumerate(accs, 1):
        why = budget.end_epoch(acc)
        if why:
            return why, epoch
    return None, len(accs)


def test_plateau_cuts_the_rate_then_stops_after_the_last_cut():
    opt = _opt()
    budget = Budget(opt, "plateau", epochs=100, patience=2, steps=10)
    # better for 3 epochs, then flat: cut after 2 stale epochs (5), again (7), stop at the third (9)
    rates = []
    for acc in [0.5, 0.6, 0.7] + [0.7] * 20:
        why = budget.end_epoch(acc)
        rates.append(opt.param_groups[0]["lr"])
        if why:
            break
    assert (why, len(rates)) == ("plateau", 3 + 2 * (PLATEAU_DECAYS + 1))
    assert rates[4] == pytest.approx(1e-2 * PLATEAU_FACTOR) and rates[6] == pytest.approx(
        1e-2 * PLATEAU_FACTOR**2
    )
    assert rates[-1] == rates[-2]  # the run ends at the rates it trained with


def test_plateau_ignores_improvements_below_its_delta_and_stops_at_the_cap():
    assert _run(Budget(_opt(), "plateau", epochs=4, patience=2, steps=1), [0.1, 0.2, 0.3, 0.4, 0.5]) == (
        "cap",
        4,
    )
    tiny = [0.5 + 1e-4 * i for i in range(20)]  # "improving" by 0.0001 per epoch: a plateau
    assert _run(Budget(_opt(), "plateau", epochs=100, patience=2, steps=1), tiny) == ("plateau", 7)


def test_cosine_stops_on_patience_or_at_its_budget():
    assert _run(Budget(_opt(), "cosine", epochs=5, patience=2, steps=1), [0.5, 0.6, 0.6, 0.55, 0.7]) == (
        "patience",
        4,
    )
    assert _run(Budget(_opt(), "cosine", epochs=3, patience=0, steps=1), [0.5, 0.4, 0.3]) == ("budget", 3)


def test_time_to_99_percent_of_the_best_validation():
    curve = [{"val_acc": a, "seconds": 2.0} for a in (0.5, 0.793, 0.8, 0.795)]
    assert time_to(curve, 100) == {"epochs_to_99": 2, "images_to_99": 200, "seconds_to_99": 4.0}
    assert time_to([], 100)["epochs_to_99"] is None


def test_plateau_needs_patience():
    with pytest.raises(LorafitError, match="plateau needs patience"):
        RunConfig(name="x", method="full", schedule="plateau", patience=0)
    with pytest.raises(LorafitError, match="unknown schedule"):
        RunConfig(name="x", method="full", schedule="linear")
    # The new field is left out of the ids at its default: older records keep theirs.
    old = RunConfig(name="x", method="full")
    assert (
        old.cell_id
        == RunConfig.from_dict({k: v for k, v in old.to_dict().items() if k != "schedule"}).cell_id
    )
    assert RunConfig(name="x", method="full", schedule="plateau", patience=2).cell_id != old.cell_id


def test_the_epoch_sensitivity_check_pairs_2x_with_1x(tiny_grid, tmp_path, capsys):
    """run grid, then run grid --budget-check: the representative rows at 2x (epochs and patience),
    the 1x rates, the same seeds; the leaderboard pairs them in its own table."""
    grid, runs = str(tiny_grid()), str(tmp_path / "runs")
    assert main(["run", "grid", "--grid", grid, "--runs-dir", runs, "--no-progress", "--seeds", "2"]) == 0
    assert (
        main(
            [
                "run",
                "grid",
                "--grid",
                grid,
                "--runs-dir",
                runs,
                "--no-progress",
                "--seeds",
                "2",
                "--budget-check",
            ]
        )
        == 0
    )
    records = load_records(tmp_path / "runs")
    base = {
        (r["config"]["name"], r["config"]["seed"]): r for r in records if r["run"]["study"] == "tiny-smoke"
    }
    checks = [r for r in records if r["run"]["study"] == "tiny-smoke-2x"]
    assert {r["env"]["peft"] for r in records} == {importlib.metadata.version("peft")}
    # head, seed post, LoRA on proj at r2 (no r8 here: its best other rank), the best and the worst
    # other placement (conv3 alone: once)
    assert {r["config"]["name"] for r in checks} == {"head", "seed-post", "lora-proj", "lora-conv3"}
    for r in checks:
        one = base[(r["config"]["name"], r["config"]["seed"])]
        assert r["config"]["epochs"] == 2 * one["config"]["epochs"] and r["tuning"]["budget_scale"] == 2
        assert r["config"]["lr"] == one["config"]["lr"] and r["metrics"]["epochs_trained"] == 6
    md = render_markdown(records, "cmd")
    assert "## Epoch sensitivity (2× the training budget)" in md
    table = md.split("## Epoch sensitivity")[1].split("\n\n")[2]
    assert len(table.splitlines()) == 2 + 4 and "seed-post-r8" in table
    # The summary's comparisons asked again at 2x: the seed post's and the placement's (conv3 vs proj)
    again = md.split("## The summary's comparisons at 2× the budget")[1].split("\n\n")[2].splitlines()
    assert len(again) == 2 + 2 and "− seed-post-r8" in again[2] and "lora-conv3" in again[3]
    assert all(line.split(" | ")[-2] == "2" for line in again[2:])  # both seeds pair
    assert "of 4 configurations" in md.split("## Results")[0]  # the 2x records are not rows
    # The command it prints next names the 1x study, whose leaderboard reads the check beside it.
    hint = f"next: python -m bench leaderboard --runs-dir {runs} --study tiny-smoke"
    assert hint in capsys.readouterr().out
    out = tmp_path / "board.md"
    assert main(["leaderboard", "--runs-dir", runs, "--study", "tiny-smoke", "--output", str(out)]) == 0
    board = out.read_text()
    assert board.split("## Epoch sensitivity")[1].split("\n\n")[2] == table
    head = board.split("## Results")[0]
    assert head.count("- **What**") == 1 and "studies: tiny-smoke, tiny-smoke-2x" in head
    (compute,) = [line for line in head.splitlines() if line.startswith("- **Compute**")]
    assert "tuning stage" not in compute  # the tiny grid's rates are fixed
    assert f"seeds {len(base)} runs" in compute and f"epoch-sensitivity check {len(checks)} runs" in compute
    # The check alone has no 1x rows to pair with: a one-line pointer to its study.
    alone = tmp_path / "x.md"
    assert main(["leaderboard", "--runs-dir", runs, "--study", "tiny-smoke-2x", "--output", str(alone)]) == 2
    assert not alone.exists()
    assert "pass --study tiny-smoke (its leaderboard includes" in capsys.readouterr().err


@pytest.mark.parametrize(
    "placements, expected",
    [
        (
            {"proj": (1, 8, 16), "conv2": (8,), "conv3": (8,)},
            ["proj-r8", "proj-r1", "conv2-r8", "conv3-r8"],
        ),
        (  # no proj: the rank is swept on stage3
            {"stem": (8,), "stage2": (8,), "stage3": (2, 8, 16), "shortcuts": (2, 8)},
            ["stage3-r8", "stage3-r2", "stem-r8", "shortcuts-r8"],
        ),
    ],
)
def test_the_check_takes_lora_at_two_ranks_on_every_backbone(placements, expected):
    """LoRA at rank 8 and its best other rank where the rank is swept (on a backbone without proj,
    the placement with the most ranks), then the best and the worst other placement at rank 8, all
    ranked by validation accuracy (here the test split ranks them the other way round)."""
    labels = [(p, r) for p, ranks in placements.items() for r in ranks]
    val = np.linspace(0.79, 0.71, len(labels))
    rows = [("head", "head", "—", 0, 0.70, 0.70), ("full", "full", "—", 0, 0.80, 0.80)] + [
        (f"{p}-r{r}", "lora", p, r, test, v) for (p, r), v, test in zip(labels, val, val[::-1])
    ]
    part = pd.DataFrame(rows, columns=["label", "method", "placement", "rank", "acc_mean", "val_mean"])
    part = part.assign(policy="lora").sort_values("acc_mean", ascending=False)
    assert representative(part) == ["head", "full", *expected]


@pytest.mark.parametrize(
    "half_width, diff, expected",
    [
        (0.0035, 0.0030, WITHIN),
        (0.0035, -0.0035, WITHIN),  # exactly the half-width: within
        (0.0035, 0.0055, GAINS),  # the 1x budget held the row back: it fails
        (0.0072, 0.0052, GAINS),  # a row wider than the 0.5-point target is judged by the target
        (0.0072, 0.0048, WITHIN),
        (0.0035, -0.0055, LOWER),  # longer training at the 1x rates costs it: marked, not failed
        (float("nan"), 0.01, None),  # one seed: no half-width to judge by
        (0.0035, float("nan"), None),  # no 2x run
    ],
)
def test_the_budget_check_fails_a_row_only_when_2x_raises_it_beyond_its_half_width_or_the_target(
    half_width, diff, expected
):
    assert budget_verdict(pd.Series({"acc_ci": half_width}), diff) == expected


@pytest.mark.parametrize(
    "p_1x, diff_1x, p_2x, diff_2x, n, expected",
    [
        (0.01, 0.02, 0.01, 0.01, 5, "holds"),
        (0.01, 0.02, 0.01, -0.01, 5, "reversed"),
        (0.50, 0.00, 0.60, 0.00, 5, "no difference at either"),
        (0.01, 0.02, 0.20, 0.01, 5, "not at 2×"),
        (0.50, 0.00, 0.01, 0.01, 5, "only at 2×"),
        (0.01, 0.02, float("nan"), 0.01, 1, "—"),  # one seed at 2x: not judged
    ],
)
def test_what_2x_says_about_a_finding(p_1x, diff_1x, p_2x, diff_2x, n, expected):
    longer = pd.Series({"n": n, "p_holm": p_2x, "diff": diff_2x})
    assert verdict(p_1x, diff_1x, longer) == expected


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ("r16", "seed-post", ""),  # the summary's own pair
        ("seed-post", "r16", ""),  # either way round
        ("r8", "seed-post", " (in place of r16)"),
        ("x", "y", " (not one of the summary's)"),
    ],
)
def test_a_2x_comparison_names_the_rival_it_replaced(a, b, expected):
    comp = pd.DataFrame([{"kind": "seed", "a": "r16", "b": "seed-post"}])
    assert replaced_rival(pd.Series({"kind": "seed", "a": a, "b": b}), comp) == expected


def test_a_drained_budget_check_names_the_study_it_was_running(tiny_grid, tmp_path, monkeypatch, capsys):
    """The drain request is counted on the 1x grid, but the stopped worker ran <grid>-2x."""
    from bench import drain

    argv = ["run", "grid", "--grid", str(tiny_grid()), "--runs-dir", str(tmp_path), "--no-progress"]
    assert main([*argv, "--only", "head"]) == 0

    def asked_at_once(storage, grid_study, start=None):
        def check():
            raise drain.Drained(grid_study)

        return check

    monkeypatch.setattr(drain, "watcher", asked_at_once)
    capsys.readouterr()
    assert main([*argv, "--only", "head", "--budget-check"]) == drain.STATUS
    assert "grid tiny-smoke-2x: stopped on request (--drain)" in capsys.readouterr().err


def test_the_leaderboard_header_says_how_long_runs_trained():
    import pandas as pd

    from bench.reporting.header import _budget

    plateau = pd.DataFrame(
        {
            "config.batch_size": [256],
            "config.patience": [2],
            "config.epochs": [30],
            "config.schedule": ["plateau"],
        }
    )
    assert _budget(plateau) == "trained to a plateau (batch 256, patience 2, cap 30 epochs)"
    old = plateau.drop(columns="config.schedule").assign(**{"config.epochs": [5]})  # records before the rule
    assert _budget(old) == "5 adaptation epochs (batch 256, patience 2)"
    cosine = plateau.assign(
        **{"config.schedule": ["cosine"], "config.epochs": [20], "config.patience": [0]},
        **{"metrics.stop_reason": ["budget"]},
    )
    assert _budget(cosine) == (
        "a 20-epoch cosine schedule (batch 256, no early stopping, the best epoch's weights kept; "
        "stopped: 1 at the schedule's end)"
    )
    early = cosine.assign(**{"config.patience": [3], "metrics.stop_reason": ["patience"]})
    assert "early stopping after 3 epochs without a better validation accuracy" in _budget(early)
    assert _budget(early).endswith("stopped: 1 early)")
