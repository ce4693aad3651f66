"""Named freeze policies: which parameters train, and what BatchNorm does. The new head always
trains.

    scratch     random init (the caller does not load the backbone), everything trainable
    full        pretrained init, everything trainable (adapters too, if any were injected)
    head        linear probe: only the head
    lora        adapters + head
    bitfit      every bias + adapters + head
    norm        the normalisation layers' affine parameters + adapters + head (networks with them)
    lora-stats  as lora, but BatchNorm re-estimates its running statistics on the target
    + the backbone's own (lorafit.backbones): conv2 on the seed CNN, the seed post's policy
      (conv2 + adapters + head; conv1, conv3, proj frozen)

BatchNorm rule: under full and scratch every BatchNorm trains as usual (batch statistics,
running statistics updated). Under every policy that freezes backbone weights, BatchNorm keeps
the source task's running statistics (evaluation mode while training), so a frozen layer stays
the function that was pretrained and its features can be cached; `lora-stats` is the other
choice, offered as a policy. A run at rest (lr = 0) keeps them too.

Which tensors are "adapters" is asked of the adapter registry (lorafit.adapters), not read off names.
"""

from __future__ import annotations

from torch import nn

from lorafit import adapters, backbones
from lorafit.errors import LorafitError
from lorafit.model import head_name

POLICIES = ("scratch", "full", "head", "lora", "bitfit", "norm", "lora-stats")
ADAPTS_STATS = ("scratch", "full", "lora-stats")  # where BatchNorm's running statistics move
NEEDS = {"norm": "normalisation layers", "lora-stats": "BatchNorm layers"}  # else it is lora


def policies(backbone: str = backbones.DEFAULT) -> tuple[str, ...]:
    """Every policy a run on `backbone` may name."""
    return POLICIES + tuple(backbones.entry(backbone).policies)


def check(policy: str, backbone: str = backbones.DEFAULT) -> None:
    """LorafitError for a policy the backbone does not have, or one that would secretly be `lora`
    on it (norm without normalisation layers, lora-stats without BatchNorm)."""
    names = policies(backbone)
    if policy not in names:
        raise LorafitError(
            f"unknown freeze policy {policy!r} on {backbone}; choose one of {', '.join(names)}"
        )
    model = backbones.shape_model(backbone)
    has = {"norm": backbones.norm_layers(model), "lora-stats": backbones.batch_norms(model)}
    if policy in NEEDS and not has[policy]:
        raise LorafitError(f"policy {policy} on {backbone} would be policy lora: it has no {NEEDS[policy]}")


def _trains(policy: str, name: str, is_adapter: bool, is_norm: bool, head: str, backbone: str) -> bool:
    if policy in ("scratch", "full"):
        return True
    if name.startswith(head + "."):
        return True
    if policy == "head":
        return False
    if is_adapter:
        return True
    if policy == "bitfit":
        return name.endswith(".bias")
    if policy == "norm":
        return is_norm
    extra = backbones.entry(backbone).policies.get(policy)
    return extra(name) if extra else False  # lora, lora-stats


def apply(model: nn.Module, policy: str) -> list[str]:
    """Set requires_grad and the BatchNorm rule for `policy`; return the trainable parameters' names."""
    backbone = backbones.backbone_of(model)
    if policy not in policies(backbone):
        raise LorafitError(f"unknown freeze policy {policy!r}; choose one of {', '.join(policies(backbone))}")
    adapter_ids = {id(p) for p in adapters.trainable_parameters(model)}
    norm_ids = {id(p) for m in backbones.norm_layers(model) for p in m.parameters(recurse=False)}
    head = head_name(model)
    trainable = []
    for name, param in model.named_parameters():
        param.requires_grad_(
            _trains(policy, name, id(param) in adapter_ids, id(param) in norm_ids, head, backbone)
        )
        if param.requires_grad:
            trainable.append(name)
    model.bn_stats = "adapt" if policy in ADAPTS_STATS else "fixed"
    return trainable


def at_rest(model: nn.Module) -> list[str]:
    """Freeze everything but the new head (a run with lr = 0): the adapters keep their identity
    initialisation, the backbone its weights and BatchNorm its statistics, so the model is the
    linear probe's."""
    head = head_name(model)
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(head + "."))
    model.bn_stats = "fixed"
    return [n for n, p in model.named_parameters() if p.requires_grad]


def stats_adapt(model: nn.Module) -> bool:
    """The BatchNorm rule `apply` / `at_rest` set: True where running statistics move in training
    (a model no policy was applied to trains as PyTorch does)."""
    return getattr(model, "bn_stats", "adapt") == "adapt"


def train_mode(model: nn.Module) -> nn.Module:
    """model.train(), except BatchNorm layers under a policy that keeps their statistics."""
    model.train()
    if not stats_adapt(model):
        for bn in backbones.batch_norms(model):
            bn.eval()
    return model


def stats_move(model: nn.Module) -> bool:
    """Whether training changes the model's BatchNorm running statistics."""
    return stats_adapt(model) and bool(backbones.batch_norms(model))


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
