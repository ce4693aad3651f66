"""The adapter registry itself: the settings an adapter reads, the entry a method registers, and
the placements (where adapters go on the seed CNN). No method lives here: native LoRA is
registered by lorafit.adapters, PEFT's methods by lorafit.peft_methods, and both import this
module (not each other), so the registry has no import cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from lorafit.model import CONV_NAMES, SeedCNN

BASELINES = ("scratch", "full", "head")  # methods without an adapter
_CONVS = tuple(f"{c}.conv" for c in CONV_NAMES)
SLOTS: dict[str, tuple[str, ...]] = {
    "none": (),
    "proj": ("proj",),
    **{c: (f"{c}.conv",) for c in CONV_NAMES},
    "convs": _CONVS,
    "all": (*_CONVS, "proj"),
    "post-proj": ("adapter",),
}
PLACEMENTS = tuple(SLOTS)
CONV_PLACEMENTS = ("conv1", "conv2", "conv3", "convs", "all")  # where a conv shape means something


@dataclass(frozen=True)
class AdapterSettings:
    """A method's hyper-parameters (the RunConfig fields an adapter reads)."""

    rank: int = 8
    alpha: float = 1.0
    shape: str = "1x1"  # conv LoRA only: 1x1 branch or kxk (PEFT's shape)
    dropout: float = 0.0
    rslora: bool = False


@dataclass(frozen=True)
class AdapterMethod:
    name: str
    description: str
    placements: tuple[str, ...]  # the placements it may take
    layer_types: tuple[type[nn.Module], ...]  # the base modules it wraps
    wrap: Callable[[nn.Module, AdapterSettings, SeedCNN], nn.Module]  # base layer -> adapted module
    trainable: Callable[[nn.Module], list[nn.Parameter]]  # what it adds; trained by every policy
    param_count: Callable[[nn.Module, AdapterSettings, SeedCNN], int]  # closed form, from the base
    max_rank: Callable[[nn.Module, AdapterSettings], int]  # largest rank its update can have there
    merge: Callable[[nn.Module, SeedCNN], None] | None = None  # None: cannot merge
    unmerge: Callable[[nn.Module, SeedCNN], None] | None = None
    default_alpha: Callable[[int], float] = float  # alpha when a run does not set one (rank: scale 1)
    delta: Callable[[nn.Module, SeedCNN], torch.Tensor] | None = None  # the learned update, as a matrix
    # Optional: raise LorafitError (one line) when the method cannot take this base layer with these
    # settings (sizes, layer features); inject calls it on every layer before wrapping any, count too.
    check: Callable[[nn.Module, AdapterSettings], None] | None = None
    placement_note: str = ""  # optional: why it takes only `placements`, added to check_placement's refusal


ADAPTERS: dict[str, AdapterMethod] = {}


def register(method: AdapterMethod) -> AdapterMethod:
    if method.name in ADAPTERS or method.name in BASELINES:
        raise ValueError(f"adapter method {method.name!r} is already registered")
    ADAPTERS[method.name] = method
    return method


def methods() -> tuple[str, ...]:
    """Every method a run may name: the baselines, then the registered adapters."""
    return BASELINES + tuple(ADAPTERS)
