"""Context: where a run reads and writes, what it runs on, and the caches one process keeps.

None of it is part of a result's identity (that is the RunConfig): the runs directory, the data
directory, the device, the feature-cache budget, and the in-process caches of loaded datasets and
pretrained backbones, which the Context owns so that two contexts never share stale state.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from lorafit import data
from lorafit.config import RunConfig
from lorafit.features import FeatureCache
from lorafit.train import pick_device


def say(line: str) -> None:
    """Print a line above any progress bars (tqdm.write), flushed so logs follow it live."""
    tqdm.write(line)
    sys.stdout.flush()


@dataclass
class Context:
    runs_dir: Path
    data_dir: Path | None = None
    device: str | None = None
    cache_budget_mb: float = 2048
    # Called between two runs (candidates or cells); raises to stop the worker there (bench.drain).
    between_runs: Callable[[], None] = field(default=lambda: None, repr=False)
    log: Callable[[str], None] = field(default=say, repr=False)
    features: FeatureCache | None = field(default=None, repr=False)
    splits: dict = field(default_factory=dict, repr=False)  # load arguments -> data.Splits
    backbones: dict = field(default_factory=dict, repr=False)  # digest -> (model, info)
    protocols: dict = field(default_factory=dict, repr=False)  # (dataset, protocol) -> resolved

    def __post_init__(self) -> None:
        self.runs_dir = Path(self.runs_dir)
        if self.features is None and self.cache_budget_mb > 0:
            self.features = FeatureCache(self.cache_budget_mb, self.runs_dir / "features")

    @property
    def torch_device(self) -> torch.device:
        return pick_device(self.device)

    def resolve(self, cfg: RunConfig) -> RunConfig:
        """cfg with its target's protocol resolved (once per dataset and protocol in this context:
        "auto" becomes official, resplit or synthetic), after checking that the target and source
        files are there (torchvision downloads them when no data directory was named).
        LorafitError when they are not."""
        for name, protocol in ((cfg.target, cfg.protocol), (cfg.source, "auto")):
            if (name, protocol) not in self.protocols:
                self.protocols[(name, protocol)] = data.resolve_protocol(name, protocol, self.data_dir)
        return cfg.replace(protocol=self.protocols[(cfg.target, cfg.protocol)])

    def _load(self, name: str, protocol: str, seed: int, sizes: tuple[int, int, int]) -> data.Splits:
        key = (name, protocol, seed, sizes)
        if key not in self.splits:
            if len(self.splits) >= 8:  # a grid touches two or three; keep memory bounded
                self.splits.pop(next(iter(self.splits)))
            self.splits[key] = data.load(
                name, data_dir=self.data_dir, protocol=protocol, seed=seed, sizes=sizes
            )
        return self.splits[key]

    def target(self, cfg: RunConfig) -> data.Splits:
        """The adaptation data of `cfg` (cfg.protocol was resolved once, when the run was set up)."""
        return self._load(
            cfg.target, cfg.protocol, cfg.data_seed, (cfg.train_size, cfg.val_size, cfg.test_size)
        )

    def source(self, cfg: RunConfig) -> data.Splits:
        """The pretraining data of `cfg`'s backbone."""
        return self.target(cfg.pretraining())
