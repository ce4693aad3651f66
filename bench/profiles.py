"""Profiles: the sizes and epochs of each kind of run, in one place.

smoke  synthetic glyphs (digits -> 62 characters), tiny: the whole grid, one seed, offline
local  real MNIST -> EMNIST byclass on 2 CPU cores: the whole grid, 5 seeds.
       Uses the official EMNIST protocol when the byclass train files are present, otherwise a
       stratified re-split of the byclass test split (every record says which).
paper  official MNIST -> EMNIST byclass train/test at full size, longer pretraining (GPU recommended)
"""

from __future__ import annotations

from lorafit.errors import LorafitError

PROFILES: dict[str, dict] = {
    "smoke": dict(
        source="glyphs-digits",
        target="glyphs-chars",
        protocol="auto",
        seeds=1,
        train_size=2000,
        val_size=500,
        test_size=1000,
        schedule="cosine",  # a fixed 3-epoch pipeline test, not a converged result
        epochs=3,
        batch_size=128,
        patience=0,
        pretrain_size=3000,
        pretrain_epochs=2,
        pretrain_batch_size=128,
        pretrain_lr=2e-3,
        ledger_images=256,  # the parameter ledger's inference timing (not a RunConfig field)
    ),
    "local": dict(
        source="mnist",
        target="emnist-byclass",
        protocol="auto",
        seeds=5,
        train_size=30000,
        val_size=5000,
        test_size=0,
        # The budget rule (docs/protocol.md "Training budget"): a 20-epoch cosine schedule, no early
        # stop, the best epoch's weights kept; chosen by studies/grids/budget_rules.toml, where it was
        # the shortest candidate whose 2x check passed on both probes. (The first and second editions
        # ran 5 cosine epochs with patience 2; the third edition's first run, archived in
        # results/local-plateau2/, a plateau rule with patience 2, which failed its own check.)
        schedule="cosine",
        epochs=20,
        batch_size=256,
        patience=0,
        pretrain_size=0,
        pretrain_epochs=2,
        pretrain_batch_size=128,
        pretrain_lr=2e-3,
        ledger_images=1024,
    ),
    "paper": dict(
        source="mnist",
        target="emnist-byclass",
        protocol="official",
        seeds=3,
        train_size=0,
        val_size=0,
        test_size=0,
        schedule="cosine",  # the local rule; its own --budget-check says whether it holds at full size
        epochs=20,
        batch_size=256,
        patience=0,
        pretrain_size=0,
        pretrain_epochs=10,
        pretrain_batch_size=128,
        pretrain_lr=2e-3,
        ledger_images=1024,
    ),
}

# The RunConfig fields a profile sets.
CONFIG_KEYS = (
    "source",
    "target",
    "protocol",
    "train_size",
    "val_size",
    "test_size",
    "epochs",
    "batch_size",
    "patience",
    "schedule",
    "pretrain_size",
    "pretrain_epochs",
    "pretrain_batch_size",
    "pretrain_lr",
)


def profile(name: str) -> dict:
    if name not in PROFILES:
        raise LorafitError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    return PROFILES[name]


def config_defaults(name: str) -> dict:
    """The RunConfig fields of profile `name`."""
    p = profile(name)
    return {"profile": name, **{k: p[k] for k in CONFIG_KEYS}}
