"""Named freeze policies: which parameters train. The new head `fc` always trains.

    scratch  random init (the caller does not load the backbone), everything trainable
    full     pretrained init, everything trainable (adapters too, if any were injected)
    head     linear probe: only fc
    lora     adapters + fc
    conv2    the seed post's policy: conv2 + adapters + fc; conv1, conv3, proj frozen (was "seed")
    bitfit   every bias + adapters + fc

Which tensors are "adapters" is asked of the adapter registry (lorafit.adapters), not read off names.
"""

from __future__ import annotations

from torch import nn

from lorafit import adapters
from lorafit.errors import LorafitError
from lorafit.model import SeedCNN

POLICIES = ("scratch", "full", "head", "lora", "conv2", "bitfit")


def _trains(policy: str, name: str, is_adapter: bool) -> bool:
    if policy in ("scratch", "full"):
        return True
    if name.startswith("fc."):
        return True
    if policy == "head":
        return False
    if is_adapter:
        return True
    if policy == "conv2":
        return name.startswith("conv2.")
    if policy == "bitfit":
        return name.endswith(".bias")
    return False  # lora


def apply(model: SeedCNN, policy: str) -> list[str]:
    """Set requires_grad for `policy`; return the names of the trainable parameters."""
    if policy not in POLICIES:
        raise LorafitError(f"unknown freeze policy {policy!r}; choose one of {', '.join(POLICIES)}")
    adapter_ids = {id(p) for p in adapters.trainable_parameters(model)}
    trainable = []
    for name, param in model.named_parameters():
        param.requires_grad_(_trains(policy, name, id(param) in adapter_ids))
        if param.requires_grad:
            trainable.append(name)
    return trainable


def at_rest(model: SeedCNN) -> list[str]:
    """Freeze everything but the new head `fc` (a run with lr = 0): the adapters keep their
    identity initialisation and the backbone its weights, so the model is the linear probe's."""
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith("fc."))
    return [n for n, p in model.named_parameters() if p.requires_grad]


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
