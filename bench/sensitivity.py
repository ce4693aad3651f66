"""The epoch-sensitivity check: does twice the training budget move a row?

`python -m bench run grid --budget-check` trains a representative subset of the grid's rows again
at SCALE times the training budget (epochs and patience: for the plateau schedule its cap and
patience, for cosine its length and early-stopping patience) at the rates the 1x tuning stage
selected, on the same paired seeds, into the study <grid>-<profile>-2x. The rows (per backbone
and target, from the 1x records): the probe, full fine-tuning, scratch, the seed post, LoRA on proj
(on a backbone without one, the placement whose rank it sweeps) at rank 8 and at its best other
rank, the best and the worst LoRA placement besides that one, and the best row of every other
adapter method. The leaderboard pairs each with its 1x row
(bench.reporting.epochs.sensitivity_table): a row fails when 2x raises it by more than its own
95% half-width (the 1x budget held it back); a fall beyond it is marked, not failed.
"""

from __future__ import annotations

import pandas as pd

from bench.plan import Cell
from bench.reporting.aggregate import aggregate, config_key, setup_of
from lorafit.config import RunConfig
from lorafit.errors import LorafitError

SCALE = 2
SUFFIX = f"-{SCALE}x"


def scaled(cfg: RunConfig, scale: int = SCALE) -> RunConfig:
    return cfg.replace(epochs=cfg.epochs * scale, patience=cfg.patience * scale)


def unscaled(config: dict, scale: int = SCALE) -> dict:
    """The 1x configuration (a record's config dict) a scaled one was trained from."""
    return {**config, "epochs": config["epochs"] // scale, "patience": config.get("patience", 0) // scale}


def rank_sweep_placement(lora: pd.DataFrame) -> str | None:
    """Where the setup sweeps LoRA's rank: `proj` on the seed CNN, else the placement with the most
    ranks (the residual CNN's stage3), so "LoRA at two ranks" exists on every backbone."""
    ranks = lora.groupby("placement")["rank"].nunique()
    if ranks.empty:
        return None
    return "proj" if "proj" in ranks.index else str(ranks.idxmax())  # a tie: the first by name


def representative(part: pd.DataFrame) -> list[str]:
    """The labels of one setup's representative rows (`part`: its aggregate rows). "Best" and "worst"
    are by mean validation accuracy: which rows are checked is chosen without the test split."""
    done = part[part["acc_mean"].notna()].sort_values("val_mean", ascending=False, kind="stable")
    chosen: list[str] = []

    def take(rows: pd.DataFrame, n: int = 1) -> None:
        chosen.extend(label for label in rows["label"].head(n) if label not in chosen)

    for method in ("head", "full", "scratch", "residual"):
        take(done[done["method"].eq(method)])
    lora = done[done["method"].eq("lora") & done["policy"].eq("lora")]
    sweep = rank_sweep_placement(lora)
    swept = lora[lora["placement"].eq(sweep)]
    take(swept[swept["rank"].eq(8)])
    take(swept[swept["rank"].ne(8)])
    elsewhere = lora[~lora["placement"].eq(sweep)]
    if elsewhere["rank"].eq(8).any():  # the placement question is asked at rank 8
        elsewhere = elsewhere[elsewhere["rank"].eq(8)]
    take(elsewhere)
    take(elsewhere.iloc[::-1])  # the worst placement
    for method in sorted(set(done["method"]) - {"head", "full", "scratch", "residual", "lora"}):
        take(done[done["method"].eq(method)])
    return chosen


def plan(cells: list[Cell], records: list[dict], grid_study: str) -> list[Cell]:
    """The 2x cells: the representative rows' cells (rates as tuned at 1x), scaled."""
    agg = aggregate(records)
    if agg.empty:
        raise LorafitError(
            f"--budget-check needs the grid's 1x results: no records in study {grid_study}; "
            f"run the same command without --budget-check first"
        )
    wanted = {(s, label) for s in agg["setup"].unique() for label in representative(agg[agg["setup"].eq(s)])}
    keys = {(s, k) for s, k, lab in zip(agg["setup"], agg["key"], agg["label"]) if (s, lab) in wanted}
    chosen = []
    for cell in cells:
        fake = {"config": cell.config.to_dict(), "run": {}, "env": {"protocol": cell.config.protocol}}
        if (setup_of(fake), config_key(fake)) in keys:
            chosen.append(Cell(scaled(cell.config), {**cell.tuning, "budget_scale": SCALE}))
    if not chosen:
        raise LorafitError(f"--budget-check: none of this grid's cells has a 1x result in study {grid_study}")
    return chosen
