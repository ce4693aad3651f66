"""RunConfig: everything that determines one run's result, frozen, hashable, and recorded as is.

It flows unchanged from the CLI / grid cell / study trial to the trainer and into the record.
Runtime choices that should not change the numbers (device, runs directory, cache budget) are not
part of it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import asdict, dataclass, fields

from lorafit import adapters, backbones, freeze
from lorafit.errors import LorafitError
from lorafit.lora import SHAPES
from lorafit.names import RENAMED, modern

# Fields added after records existed: left out of the digests at these values, so the ids of
# older records (and their tuning studies) stay what they were.
ADDED_LATER = {"backbone": backbones.DEFAULT, "schedule": "cosine"}
SCHEDULES = ("cosine", "plateau")  # lorafit.train.fit says what each does


@dataclass(frozen=True)
class RunConfig:
    name: str  # the grid cell / study label, e.g. "lora-proj"
    method: str  # scratch | full | head, or an adapter method (lorafit.adapters)
    placement: str = "none"  # where adapters go: a placement group of the backbone
    shape: str = "1x1"  # conv adapter shape: 1x1 | kxk
    rank: int = 0  # 0 when no adapter
    alpha: float = 1.0
    policy: str = "full"  # freeze policy (lorafit.freeze.policies(backbone))
    seed: int = 0  # model init, batch order, and the backbone's pretraining seed
    # data
    profile: str = "smoke"
    source: str = "glyphs-digits"
    target: str = "glyphs-chars"
    protocol: str = "auto"  # resolved to official | resplit | synthetic before a run
    data_seed: int = 0  # fixes the partition, shared by all cells
    train_size: int = 0  # 0 = everything the split has
    val_size: int = 0
    test_size: int = 0
    rslora: bool = False  # scale alpha/sqrt(rank) instead of alpha/rank (rsLoRA)
    # adaptation
    lr: float = 1e-3  # the adapter's (or the backbone's) rate; 0: all but the new head at rest
    head_lr: float = 0.0  # the new head's rate; 0 = lr
    epochs: int = 3  # cosine: the schedule's length; plateau: the cap
    batch_size: int = 128
    weight_decay: float = 0.0
    patience: int = 0  # cosine: early stopping (0 = none); plateau: epochs without improvement
    schedule: str = "cosine"  # cosine over `epochs` | plateau (train until it stops improving)
    # pretraining on the source task (the shared backbone)
    pretrain_epochs: int = 2
    pretrain_lr: float = 2e-3
    pretrain_batch_size: int = 128
    pretrain_size: int = 0
    backbone: str = backbones.DEFAULT  # the network (lorafit.backbones)
    widths: tuple[int, ...] = ()  # () = the backbone's default widths

    def __post_init__(self) -> None:
        for key in RENAMED:  # old spellings (records, grid files) are read as the new ones
            object.__setattr__(self, key, modern(key, getattr(self, key)))
        if not isinstance(self.backbone, str) or self.backbone not in backbones.BACKBONES:
            raise LorafitError(
                f"{self.name}: unknown backbone {self.backbone!r}; "
                f"choose one of {', '.join(backbones.BACKBONES)}"
            )
        object.__setattr__(self, "widths", tuple(self.widths) or backbones.entry(self.backbone).widths)
        # 8 and 8.0 are one setting: store float fields as floats so the hash and id agree.
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(f.default, float) and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, f.name, float(value))
        validate(self)

    def replace(self, **changes) -> RunConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise LorafitError(f"unknown run setting(s): {', '.join(unknown)}")
        d = dict(d)
        if "widths" in d:
            d["widths"] = tuple(d["widths"])
        return cls(**d)

    @property
    def adapter_settings(self) -> adapters.AdapterSettings:
        return adapters.AdapterSettings(
            rank=self.rank, alpha=self.alpha, shape=self.shape, rslora=self.rslora
        )

    def digest(self) -> str:
        return _digest(identity(self.to_dict()))

    @property
    def label(self) -> str:
        """How tables, logs and ids name the configuration: name-rN (name alone without a rank)."""
        return label(self.name, self.rank)

    @property
    def effective_head_lr(self) -> float:
        """The new head's rate: head_lr, or lr where head_lr is 0."""
        return head_rate(self.lr, self.head_lr)

    @property
    def tuning_key(self) -> str:
        """The configuration's identity for tuning: everything but the seed and the rates."""
        d = {k: v for k, v in identity(self.to_dict()).items() if k not in ("seed", "lr", "head_lr")}
        return _digest(d)[:8]

    @property
    def cell_id(self) -> str:
        """Stable, readable id: label, seed and a hash of everything else."""
        return f"{self.label}-s{self.seed}-{self.digest()[:8]}"

    def pretraining(self) -> RunConfig:
        """The source-task run that trains this configuration's shared backbone."""
        return RunConfig(
            name="pretrain",
            method="scratch",
            policy="scratch",
            seed=self.seed,
            profile=self.profile,
            source=self.source,
            target=self.source,
            protocol="auto",
            data_seed=self.data_seed,
            train_size=self.pretrain_size,
            lr=self.pretrain_lr,
            epochs=self.pretrain_epochs,
            batch_size=self.pretrain_batch_size,
            pretrain_epochs=self.pretrain_epochs,
            pretrain_lr=self.pretrain_lr,
            pretrain_batch_size=self.pretrain_batch_size,
            pretrain_size=self.pretrain_size,
            backbone=self.backbone,
            widths=self.widths,
        )

    def pretrain_dict(self) -> dict:
        """The settings the shared backbone depends on (its cache key); not the target's."""
        return identity(
            {
                "backbone": self.backbone,
                "source": self.source,
                "data_seed": self.data_seed,
                "widths": list(self.widths),
                "seed": self.seed,
                "epochs": self.pretrain_epochs,
                "lr": self.pretrain_lr,
                "batch_size": self.pretrain_batch_size,
                "size": self.pretrain_size,
            }
        )


def label(name: str, rank: int | None) -> str:
    """name-rN, or the name alone for a configuration without a rank (records use it too)."""
    return f"{name}-r{rank}" if rank else str(name)


def head_rate(lr: float, head_lr: float | None) -> float:
    """The new head's rate: head_lr, or lr where head_lr is 0 (records use it too)."""
    return head_lr or lr


def identity(d: dict) -> dict:
    """A config dict without the fields added later at their defaults (what ids are computed on)."""
    return {k: v for k, v in d.items() if not (k in ADDED_LATER and v == ADDED_LATER[k])}


def _digest(d: dict) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


def validate(cfg: RunConfig) -> None:
    """Raise LorafitError for settings that cannot run (one line each)."""
    for f in fields(cfg):
        value, default = getattr(cfg, f.name), f.default
        if isinstance(default, bool) or default is None:
            continue
        if isinstance(default, int) and (not isinstance(value, int) or isinstance(value, bool)):
            raise LorafitError(f"{cfg.name}: {f.name} must be an integer, got {value!r}")
        if isinstance(default, float) and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            raise LorafitError(f"{cfg.name}: {f.name} must be a number, got {value!r}")
        if isinstance(default, str) and not isinstance(value, str):
            raise LorafitError(f"{cfg.name}: {f.name} must be a string, got {value!r}")
    if cfg.method not in adapters.methods():
        raise LorafitError(
            f"{cfg.name}: unknown method {cfg.method!r}; choose one of {', '.join(adapters.methods())}"
        )
    entry = backbones.entry(cfg.backbone)
    if entry.fixed_widths and cfg.widths != entry.widths:
        raise LorafitError(
            f"{cfg.name}: {cfg.backbone} has fixed widths {list(entry.widths)}, got {list(cfg.widths)}"
        )
    try:
        adapters.check_placement(cfg.method, cfg.placement, cfg.backbone)
        freeze.check(cfg.policy, cfg.backbone)
    except LorafitError as e:
        raise LorafitError(f"{cfg.name}: {e}") from None
    if cfg.schedule not in SCHEDULES:
        raise LorafitError(
            f"{cfg.name}: unknown schedule {cfg.schedule!r}; choose one of {', '.join(SCHEDULES)}"
        )
    if cfg.schedule == "plateau" and cfg.patience < 1:
        raise LorafitError(f"{cfg.name}: schedule plateau needs patience >= 1")
    if cfg.shape not in SHAPES:
        raise LorafitError(f"{cfg.name}: unknown shape {cfg.shape!r}; choose one of {', '.join(SHAPES)}")
    if cfg.placement != "none" and (not isinstance(cfg.rank, int) or cfg.rank < 1):
        raise LorafitError(
            f"{cfg.name}: rank must be an integer >= 1 for placement {cfg.placement!r}, got {cfg.rank!r}"
        )
    if not cfg.alpha > 0:
        raise LorafitError(f"{cfg.name}: alpha must be > 0, got {cfg.alpha!r}")
    if cfg.lr < 0 or not cfg.pretrain_lr > 0 or cfg.head_lr < 0:
        raise LorafitError(f"{cfg.name}: learning rates must be >= 0 (head_lr 0 means lr)")
    if cfg.lr == 0 and not (cfg.head_lr > 0 and cfg.method not in ("head", "scratch")):
        raise LorafitError(
            f"{cfg.name}: lr = 0 (all but the head at rest) needs a pretrained backbone and head_lr > 0"
        )
    if not isinstance(cfg.rslora, bool):
        raise LorafitError(f"{cfg.name}: rslora must be true or false, got {cfg.rslora!r}")
    for key in ("epochs", "batch_size", "pretrain_epochs", "pretrain_batch_size"):
        if getattr(cfg, key) < 1:
            raise LorafitError(f"{cfg.name}: {key} must be >= 1, got {getattr(cfg, key)}")
    for key in ("train_size", "val_size", "test_size", "pretrain_size", "patience", "seed", "data_seed"):
        if getattr(cfg, key) < 0:
            raise LorafitError(f"{cfg.name}: {key} must be >= 0, got {getattr(cfg, key)}")
    if (cfg.method == "scratch") != (cfg.policy == "scratch"):
        raise LorafitError(f"{cfg.name}: method scratch and policy scratch go together")
    check_rank(cfg)


def check_rank(cfg: RunConfig) -> None:
    """Refuse, before anything runs, settings the method cannot take on its layers (its registry
    `check`, as a dry run) and a configuration that is secretly another: a nominal rank above what
    an adapted layer allows (e.g. a 1x1 LoRA on conv1, whose single input channel bounds its
    update to rank 1, is the same configuration at every rank)."""
    if cfg.method not in adapters.ADAPTERS:
        return
    model = backbones.shape_model(cfg.backbone, tuple(cfg.widths))
    try:
        adapters.count(model, cfg.method, cfg.placement, cfg.adapter_settings)  # the method's own checks
    except LorafitError as e:
        raise LorafitError(f"{cfg.name}: {e}") from None
    bounds = adapters.rank_bounds(model, cfg.method, cfg.placement, cfg.adapter_settings)
    low = {path: bound for path, bound in bounds.items() if bound < cfg.rank}
    if low:
        where = ", ".join(f"{path} allows {bound}" for path, bound in low.items())
        raise LorafitError(
            f"{cfg.name}: rank {cfg.rank} exceeds what the layer allows ({where}): the update's "
            f"rank cannot exceed min(rank, its matrix's sides); lower the rank or use shape kxk"
        )


# What a grid cell or a study's [fixed] section may set: everything but the seed (the grid's
# --seeds), the profile and the protocol (resolved from the data once per run).
CELL_FIELDS = tuple(f.name for f in fields(RunConfig) if f.name not in ("seed", "profile", "protocol"))


def cell_config(fields: dict, defaults: dict | None = None) -> RunConfig:
    """The RunConfig of one grid cell or study trial, by the same rules for both.

    `defaults` (profile settings) < the backbone's pretraining recipe and its sizes for the
    profile (lorafit.backbones.defaults) < `fields`; a string field may template the others
    ("lora-{placement}"); an unset alpha is the adapter method's default (alpha = rank, i.e.
    scale 1, for LoRA; 1 for the seed post's adapter); name defaults to the method.
    """
    network, profile = fields.get("backbone", backbones.DEFAULT), (defaults or {}).get("profile", "")
    known = isinstance(network, str) and network in backbones.BACKBONES
    own = backbones.defaults(network, profile) if known else {}
    merged = {**(defaults or {}), **own, **fields}  # the backbone's recipe and sizes over the profile's
    for key, value in list(merged.items()):
        if isinstance(value, str) and "{" in value:
            try:
                merged[key] = value.format(**merged)
            except (KeyError, IndexError, ValueError) as e:
                raise LorafitError(
                    f"{key} = {value!r}: bad template ({type(e).__name__}: {e}); a template may "
                    f"only name settings every run has"
                ) from None
    method = merged.get("method")
    if "alpha" not in merged:
        entry = adapters.ADAPTERS.get(method)
        rank = merged.get("rank", 0)
        merged["alpha"] = entry.default_alpha(rank) if entry and isinstance(rank, int) and rank > 0 else 1.0
    merged.setdefault("name", str(method))
    try:
        return RunConfig.from_dict(merged)
    except TypeError as e:
        raise LorafitError(f"{merged.get('name')}: {e}") from None
