"""The budget-rule experiment (2026-12-07): seed-to-seed spread and level of a few grid rows under
candidate training-budget rules, each at the rates the third edition's tuning stage selected (for
the local rule, plateau patience 2), seeds 0-9 (seeds 5-9 pretrain their own backbones, as a grid
seed does). Not a grid study: a one-off measurement behind docs/results.md's "The budget rule
fails its own check"; its records are in records/ (one study per rule), and it resumes from them.

Rules: pN[cM] = plateau, patience N, cap M epochs (default 30: the local rule is p2);
cosN = cosine over N epochs, no early stop (the best epoch's weights are kept either way).

    python results/local/budget-rules/rules.py ROW[,ROW] RULE[,RULE] SEED[,SEED] [DATA_DIR]
    e.g. python results/local/budget-rules/rules.py rcnn-head p2,p4c60,cos40 0,1,2,3,4,5,6,7,8,9
    python results/local/budget-rules/rules.py      # the table: seeds, mean, sd, median epochs
"""

import json
import re
import sys
from pathlib import Path

import pandas as pd
import torch

from bench.context import Context
from bench.records import load_records
from bench.runner import run_cell
from lorafit.config import RunConfig

HERE = Path(__file__).resolve().parent
# The rows' selected configurations under patience 2 (seed 0's cell), archived with that edition.
GRID = HERE.parents[1] / "local-plateau2" / "records" / "grid-local"


def setting(rule: str) -> dict:
    if rule.startswith("cos"):
        return dict(schedule="cosine", epochs=int(rule[3:]), patience=0)
    m = re.fullmatch(r"p(\d+)(?:c(\d+))?", rule)
    return dict(schedule="plateau", patience=int(m[1]), epochs=int(m[2] or 30))


def main(rows: list[str], rules: list[str], seeds: list[int], data_dir: str) -> None:
    torch.set_num_threads(1)
    ctx = Context(runs_dir=HERE, data_dir=data_dir)
    for row in rows:
        base = json.loads(next(GRID.glob(f"{row}-s0-*.json")).read_text())
        for rule in rules:
            for s in seeds:
                run_id = f"{row}-{rule}-s{s}"
                if (HERE / "records" / f"exp-{rule}" / f"{run_id}.json").exists():
                    continue  # resume: the record is the result
                cfg = RunConfig.from_dict(base["config"]).replace(seed=s, **setting(rule))
                m = run_cell(cfg, ctx, study=f"exp-{rule}", run_id=run_id, with_ledger=False)["metrics"]
                print(run_id, m.get("test_acc"), m.get("epochs_trained"), m.get("stop_reason"), flush=True)


def summary() -> pd.DataFrame:
    """Per row and rule, from the records: seeds, mean and sd of test accuracy (%), median epochs."""
    runs = pd.DataFrame(
        {
            "row": r["config"]["name"],
            "rule": r["run"]["study"].removeprefix("exp-"),
            "test": 100 * r["metrics"]["test_acc"],
            "epochs": r["metrics"]["epochs_trained"],
        }
        for r in load_records(HERE)
        if r["run"]["study"].startswith("exp-")  # not studies/grids/budget_rules.toml's grid
    )
    return runs.groupby(["row", "rule"]).agg(
        seeds=("test", "size"), mean=("test", "mean"), sd=("test", "std"), epochs=("epochs", "median")
    )


if __name__ == "__main__":
    if len(sys.argv) == 1:
        print(summary().round(2).to_string())
    else:
        data = sys.argv[4] if len(sys.argv) > 4 else "../shared/data"
        main(sys.argv[1].split(","), sys.argv[2].split(","), [int(x) for x in sys.argv[3].split(",")], data)
