"""A grid cell as it runs: its RunConfig (protocol and rates resolved) and how its rates were
chosen, carried together from the tuning stage to the worker that runs it and into its record."""

from __future__ import annotations

from dataclasses import dataclass, field

from lorafit.config import RunConfig

FIXED = {"mode": "fixed"}  # rates set in the grid file ([lr]), not tuned


@dataclass(frozen=True)
class Cell:
    config: RunConfig
    tuning: dict = field(default_factory=lambda: dict(FIXED))  # the tuning stage's selection

    @property
    def id(self) -> str:
        return self.config.cell_id

    @property
    def seed(self) -> int:
        return self.config.seed

    @classmethod
    def at(cls, cfg: RunConfig, selection: dict) -> Cell:
        """cfg's cell at the rates a tuning selection chose, carrying the selection."""
        return cls(cfg.replace(lr=selection["lr"], head_lr=selection["head_lr"]), selection)
