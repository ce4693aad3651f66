"""The adapter registry itself: the settings an adapter reads, the entry a method registers, and
the seed CNN's placements (every backbone's are its entry's groups, lorafit.backbones). No
method lives here: native LoRA is registered by lorafit.adapters, PEFT's methods by
lorafit.peft_methods, and both import this module (not each other), so the registry has no
import cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from lorafit import backbones

BASELINES = ("scratch", "full", "head")  # methods without an adapter
# The seed CNN's placements and the module paths they resolve to.
PLACEMENTS = backbones.placements(backbones.DEFAULT)
SLOTS: dict[str, tuple[str, ...]] = {
    p: tuple(backbones.resolve(backbones.shape_model(backbones.DEFAULT), p)) for p in PLACEMENTS
}
CONV_PLACEMENTS = tuple(p for p in PLACEMENTS if backbones.is_conv_placement(backbones.DEFAULT, p))


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
    placements: tuple[str, ...] | None  # the placements it may take; None: any whose layers it wraps
    layer_types: tuple[type[nn.Module], ...]  # the base modules it wraps
    wrap: Callable[[nn.Module, AdapterSettings, nn.Module], nn.Module]  # base layer -> adapted module
    trainable: Callable[[nn.Module], list[nn.Parameter]]  # what it adds; trained by every policy
    param_count: Callable[[nn.Module, AdapterSettings, nn.Module], int]  # closed form, from the base
    max_rank: Callable[[nn.Module, AdapterSettings], int]  # largest rank its update can have there
    merge: Callable[[nn.Module, nn.Module], None] | None = None  # None: cannot merge
    unmerge: Callable[[nn.Module, nn.Module], None] | None = None
    default_alpha: Callable[[int], float] = float  # alpha when a run does not set one (rank: scale 1)
    delta: Callable[[nn.Module, nn.Module], torch.Tensor] | None = None  # the learned update, as a matrix
    # Optional: raise LorafitError (one line) when the method cannot take this base layer with these
    # settings (sizes, layer features); inject calls it on every layer before wrapping any, count too.
    check: Callable[[nn.Module, AdapterSettings], None] | None = None
    # Optional: why the method cannot wrap this layer whatever its settings (None: it can);
    # check_placement asks it of every layer a placement names; `check` must refuse it too.
    takes: Callable[[nn.Module], str | None] | None = None
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
