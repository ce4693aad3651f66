"""The budget-rule experiment (2026-12-07): seed-to-seed spread and level of a few grid rows under
candidate training-budget rules, each at the rates the third edition's tuning stage selected (for
the local rule, plateau patience 2), seeds 0-9 (seeds 5-9 pretrain their own backbones, as a grid
seed does). Not a grid study: a one-off measurement behind docs/results.md's "The budget rule
fails its own check"; its records are in records/, one line per run in runs.jsonl.

Rules: pN[cM] = plateau, patience N, cap M epochs (default 30: the local rule is p2);
cosN = cosine over N epochs, no early stop (the best epoch's weights are kept either way).

    python results/local/budget-rules/rules.py ROW[,ROW] RULE[,RULE] SEED[,SEED] [DATA_DIR]
    e.g. python results/local/budget-rules/rules.py rcnn-head p2,p4c60,cos40 0,1,2,3,4,5,6,7,8,9
"""

import glob
import json
import re
import sys
import time
from pathlib import Path

import torch

from bench.context import Context
from bench.runner import run_cell
from lorafit.config import RunConfig

HERE = Path(__file__).resolve().parent
GRID = HERE.parent / "records" / "grid-local"  # the rows' selected configurations (seed 0's cell)


def setting(rule: str) -> dict:
    if rule.startswith("cos"):
        return dict(schedule="cosine", epochs=int(rule[3:]), patience=0)
    m = re.fullmatch(r"p(\d+)(?:c(\d+))?", rule)
    return dict(schedule="plateau", patience=int(m[1]), epochs=int(m[2] or 30))


def main(rows: list[str], rules: list[str], seeds: list[int], data_dir: str) -> None:
    torch.set_num_threads(1)
    ctx = Context(runs_dir=HERE, data_dir=data_dir)
    path = HERE / "runs.jsonl"
    done = (
        {(d["row"], d["rule"], d["seed"]) for d in map(json.loads, path.open())} if path.exists() else set()
    )
    with path.open("a") as out:
        for row in rows:
            base = json.load(open(glob.glob(str(GRID / f"{row}-s0-*.json"))[0]))
            for rule in rules:
                for s in seeds:
                    if (row, rule, s) in done:
                        continue
                    cfg = RunConfig.from_dict(base["config"]).replace(seed=s, **setting(rule))
                    t = time.time()
                    r = run_cell(
                        cfg, ctx, study=f"exp-{rule}", run_id=f"{row}-{rule}-s{s}", with_ledger=False
                    )
                    m = r["metrics"]
                    line = dict(
                        row=row,
                        rule=rule,
                        seed=s,
                        test=m.get("test_acc"),
                        val=m.get("val_acc"),
                        epochs=m.get("epochs_trained"),
                        stop=m.get("stop_reason"),
                        train_s=m.get("train_s"),
                        wall=time.time() - t,
                        error=r["run"]["error"],
                    )
                    print(line, flush=True)
                    out.write(json.dumps(line) + "\n")
                    out.flush()


if __name__ == "__main__":
    data = sys.argv[4] if len(sys.argv) > 4 else "../shared/data"
    main(sys.argv[1].split(","), sys.argv[2].split(","), [int(s) for s in sys.argv[3].split(",")], data)
