"""The training budget: how long a run trains, and why it stopped.

    cosine   the learning rates decay to 0 over `epochs` (a budget fixed in advance); with
             `patience` > 0 the run stops after that many epochs without a better validation
             accuracy. Stops: "budget" (every epoch ran) or "patience".
    plateau  train until validation stops improving, with no epoch count in advance: constant
             rates; after `patience` epochs without an improvement of more than PLATEAU_DELTA the
             rates are cut by PLATEAU_FACTOR (torch's ReduceLROnPlateau), at most PLATEAU_DECAYS
             times, and the plateau after the last cut ends the run. `epochs` is only a cap.
             Stops: "plateau" or "cap" (the cap was reached first: the record says so).

Either way the best epoch's weights are kept (lorafit.train.fit). `time_to` reads a run's curve
for the ledger's time-to-accuracy: epochs, images and seconds to 99% of its best validation.
"""

from __future__ import annotations

import torch

PLATEAU_FACTOR = 0.1
PLATEAU_DECAYS = 2
PLATEAU_DELTA = 0.001  # validation accuracy; 5 images of 5,000


class Budget:
    """Drives one run's schedule: `step()` after every optimizer step, `end_epoch(val_acc)` after
    every validation; the latter returns why the run stops now, or None to go on."""

    def __init__(
        self, opt: torch.optim.Optimizer, schedule: str, epochs: int, patience: int, steps: int
    ) -> None:
        self.opt, self.schedule, self.epochs, self.patience = opt, schedule, epochs, patience
        self.decays, self.best, self.stale, self.epoch = 0, -1.0, 0, 0
        if schedule == "plateau":
            # ReduceLROnPlateau cuts on the (patience + 1)-th bad epoch; ours on the patience-th.
            self.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt,
                mode="max",
                factor=PLATEAU_FACTOR,
                patience=patience - 1,
                threshold=PLATEAU_DELTA,
                threshold_mode="abs",
                eps=0.0,
            )
        else:
            self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps)

    def step(self) -> None:
        if self.schedule == "cosine":
            self.sched.step()

    def _rates(self) -> list[float]:
        return [g["lr"] for g in self.opt.param_groups]

    def end_epoch(self, val_acc: float) -> str | None:
        self.epoch += 1
        if self.schedule == "plateau":
            before = self._rates()
            self.sched.step(val_acc)
            if self._rates() != before:  # a plateau: cut the rates, or stop after the last cut
                self.decays += 1
                if self.decays > PLATEAU_DECAYS:
                    for group, rate in zip(self.opt.param_groups, before):
                        group["lr"] = rate  # the record keeps the rates the run ended at
                    return "plateau"
            return "cap" if self.epoch >= self.epochs else None
        if val_acc > self.best:
            self.best, self.stale = val_acc, 0
        else:
            self.stale += 1
        if self.patience and self.stale >= self.patience:
            return "patience"
        return "budget" if self.epoch >= self.epochs else None


def time_to(curve: list[dict], images_per_epoch: int, fraction: float = 0.99) -> dict:
    """Epochs, images and training seconds until validation first reached `fraction` of its best
    (None without a curve)."""
    out = {"epochs_to_99": None, "images_to_99": None, "seconds_to_99": None}
    accs = [c["val_acc"] for c in curve]
    if not accs:
        return out
    goal = fraction * max(accs)
    first = next(i for i, a in enumerate(accs) if a >= goal)
    out["epochs_to_99"] = first + 1
    out["images_to_99"] = (first + 1) * images_per_epoch
    out["seconds_to_99"] = sum(c["seconds"] for c in curve[: first + 1])
    return out
