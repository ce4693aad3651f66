"""Native LoRA's registry entries (the registry itself: lorafit/registry.py), and the functions
every entry is used through: place, merge and count adapters on a network.

An entry says which base layers a method wraps and how, which parameters it adds (freeze
policies train exactly those: trainability is asked of the registry, never read off a name),
whether and how it merges into the base weights, its closed-form parameter count, and the largest
rank its update can have on a layer. Adding a method is one `register(AdapterMethod(...))` call
and its tests.

Placements name where adapters go: the backbone's placement groups (lorafit.backbones), each
resolving to module paths. On the seed CNN:

    proj -> proj        conv1/conv2/conv3 -> convN.conv        convs -> the three convs
    all  -> convs + proj                   post-proj -> adapter (the slot between relu(proj) and fc)

A method takes a placement when it wraps every layer there (its `layer_types`), and, where its
entry lists `placements`, only those.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from lorafit import backbones
from lorafit.errors import LorafitError
from lorafit.lora import SHAPES, LoRAConv2d, LoRALinear, SeedResidualLoRA, check_rank_alpha
from lorafit.model import head_module
from lorafit.registry import (  # noqa: F401  (re-exported: the registry's names are the API)
    ADAPTERS,
    BASELINES,
    CONV_PLACEMENTS,
    PLACEMENTS,
    SLOTS,
    AdapterMethod,
    AdapterSettings,
    methods,
    register,
)


# ----------------------------------------------------------------------------- native LoRA
def _lora_wrap(base: nn.Module, s: AdapterSettings, model: nn.Module) -> nn.Module:
    if isinstance(base, nn.Linear):
        return LoRALinear(base, s.rank, s.alpha, s.dropout, s.rslora)
    return LoRAConv2d(base, s.rank, s.alpha, s.shape, s.dropout, s.rslora)


def _conv_fan_in(conv: nn.Conv2d, shape: str) -> int:
    kh, kw = conv.kernel_size
    return conv.in_channels * (kh * kw if shape == "kxk" else 1)


def _lora_count(base: nn.Module, s: AdapterSettings, model: nn.Module) -> int:
    if isinstance(base, nn.Linear):
        return s.rank * (base.in_features + base.out_features)
    return s.rank * (_conv_fan_in(base, s.shape) + base.out_channels)


def _lora_max_rank(base: nn.Module, s: AdapterSettings) -> int:
    """B A is out x in (Linear), C_out x C_in (1x1 branch) or C_out x C_in k^2 (kxk)."""
    if isinstance(base, nn.Linear):
        return min(s.rank, base.in_features, base.out_features)
    return min(s.rank, _conv_fan_in(base, s.shape), base.out_channels)


register(
    AdapterMethod(
        name="lora",
        description="LoRA: W + (alpha/r) B A on Linear, 1x1 or kxk branch on Conv2d; B starts at zero",
        placements=None,
        layer_types=(nn.Linear, nn.Conv2d),
        wrap=_lora_wrap,
        trainable=lambda m: [m.lora_A.weight, m.lora_B.weight],
        param_count=_lora_count,
        max_rank=_lora_max_rank,
        merge=lambda m, model: m.merge(),
        unmerge=lambda m, model: m.unmerge(),
        default_alpha=float,
        delta=lambda m, model: m.delta_weight().flatten(1),
    )
)


# ------------------------------------------------------------ the seed post's residual adapter
register(
    AdapterMethod(
        name="residual",
        description="the seed post's residual adapter h + (alpha/r) h B^T A^T after relu(proj); "
        "folds into fc",
        placements=("post-proj",),
        layer_types=(nn.Identity,),
        wrap=lambda base, s, model: SeedResidualLoRA(head_module(model).in_features, s.rank, s.alpha).to(
            head_module(model).weight.device
        ),
        trainable=lambda m: [m.lora_A, m.lora_B],
        param_count=lambda base, s, model: 2 * s.rank * head_module(model).in_features,
        max_rank=lambda base, s: s.rank,  # A and B are dim x r with r <= dim checked at injection
        merge=lambda m, model: m.merge(head_module(model)),
        unmerge=lambda m, model: m.unmerge(head_module(model)),
        default_alpha=lambda rank: 1.0,  # the seed post's own convention (scale 1/r)
        delta=lambda m, model: m.delta_matrix(),
    )
)


# ------------------------------------------------------------------------------- placing
def get_module(model: nn.Module, path: str) -> nn.Module:
    return model.get_submodule(path)


def _set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def method_entry(method: str) -> AdapterMethod:
    if method not in ADAPTERS:
        raise LorafitError(f"unknown adapter method {method!r}; choose one of {', '.join(ADAPTERS)}")
    return ADAPTERS[method]


def check_placement(method: str, placement: str, backbone: str = backbones.DEFAULT) -> None:
    """LorafitError unless `method` may take `placement` on `backbone` (baselines take none). The
    layers' kinds do not depend on the widths, so the backbone's default shape model answers."""
    if not _check_name(method, placement, backbone):
        return
    model, takes = backbones.shape_model(backbone), ADAPTERS[method].takes
    for path in _check_kinds(method, placement, model):
        why = takes(get_module(model, path)) if takes else None
        if why:
            raise LorafitError(f"method {method} cannot be placed on {placement!r}: {path}: {why}")


def _check_name(method: str, placement: str, backbone: str) -> bool:
    """The placement exists on `backbone` and the method's entry allows it; False for a baseline
    (nothing to place)."""
    names = backbones.placements(backbone)
    if placement not in names:
        raise LorafitError(f"unknown placement {placement!r} on {backbone}; choose one of {', '.join(names)}")
    if method in BASELINES:
        if placement != "none":
            raise LorafitError(f"method {method} has no adapter: placement must be none, not {placement!r}")
        return False
    entry = method_entry(method)
    if entry.placements is not None and placement not in entry.placements:
        raise LorafitError(
            f"method {method} cannot be placed on {placement!r}; it takes {', '.join(entry.placements)}"
            f"{_note(entry)}"
        )
    return True


def _note(entry: AdapterMethod) -> str:
    return f" ({entry.placement_note})" if entry.placement_note else ""


def _check_kinds(method: str, placement: str, model: nn.Module) -> list[str]:
    """Every layer `placement` names on `model` is of a kind the method wraps; returns their paths."""
    entry, note = ADAPTERS[method], _note(ADAPTERS[method])
    paths = backbones.resolve(model, placement)
    for path in paths:
        base = get_module(model, path)
        if not isinstance(base, entry.layer_types):
            kinds = ", ".join(t.__name__ for t in entry.layer_types)
            raise LorafitError(
                f"method {method} cannot be placed on {placement!r}: it wraps {kinds}, and {path} "
                f"is a {type(base).__name__}{note}"
            )
    return paths


def placements_of(method: str, backbone: str = backbones.DEFAULT) -> tuple[str, ...]:
    """The placements `method` takes on `backbone` (none for a baseline)."""
    if method in BASELINES:
        return ("none",)
    taken = []
    for placement in backbones.placements(backbone)[1:]:
        try:
            check_placement(method, placement, backbone)
        except LorafitError:
            continue
        taken.append(placement)
    return tuple(taken)


def inject(
    model: nn.Module, method: str, placement: str, settings: AdapterSettings | None = None
) -> list[str]:
    """Wrap the layers `placement` names with `method`'s adapters (in place); return their paths.

    Baseline methods (and placement "none") inject nothing."""
    check_placement(method, placement, backbones.backbone_of(model))  # allowed on this backbone
    if method in BASELINES:
        return []
    s = settings or AdapterSettings()
    check_rank_alpha(s.rank, s.alpha)
    if s.shape not in SHAPES:
        raise LorafitError(f"unknown conv LoRA shape {s.shape!r}; choose one of {', '.join(SHAPES)}")
    entry = ADAPTERS[method]
    paths = _check_kinds(method, placement, model)  # this model's layers, not a shape model's
    for path in paths:  # the entry's check refuses what its `takes` does, with these settings
        _check(entry, path, get_module(model, path), s)
    for path in paths:
        _set_module(model, path, entry.wrap(get_module(model, path), s, model))
        model.adapted[path] = method
    return paths


def _check(entry: AdapterMethod, path: str, base: nn.Module, settings: AdapterSettings) -> None:
    if entry.check is None:
        return
    try:
        entry.check(base, settings)
    except LorafitError as e:
        raise LorafitError(f"method {entry.name} on {path}: {e}") from None


def adapted_modules(model: nn.Module) -> list[tuple[str, AdapterMethod, nn.Module]]:
    """(path, method entry, module) for every adapter `inject` placed, in placement order."""
    return [(path, ADAPTERS[name], get_module(model, path)) for path, name in model.adapted.items()]


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters the adapters added (what freeze policies train besides their own choice)."""
    return [p for _, entry, module in adapted_modules(model) for p in entry.trainable(module)]


def adapter_state(model: nn.Module) -> dict[str, object]:
    """The adapter tensors alone, by state-dict name: what a user ships beside the backbone."""
    ids = {id(p) for p in trainable_parameters(model)}
    return {name: p.detach() for name, p in model.named_parameters() if id(p) in ids}


def without_adapters(model: nn.Module) -> nn.Module | None:
    """A copy of `model` with every adapter taken out: its base layers (`base_layer`, as LoRA's
    and PEFT's layers keep them; an empty slot for a method that fills the nn.Identity slot) and
    the same trained weights elsewhere. The base an adapter's cost is measured against; None when
    an adapter keeps its base layer some other way."""
    bare = copy.deepcopy(model)
    for path, entry, module in adapted_modules(bare):
        if hasattr(module, "base_layer"):
            _set_module(bare, path, module.base_layer)
        elif entry.layer_types == (nn.Identity,):
            _set_module(bare, path, nn.Identity())
        else:
            return None
    bare.adapted = {}
    return bare


def mergeable(model: nn.Module) -> bool:
    return all(entry.merge is not None for _, entry, _ in adapted_modules(model))


def merge(model: nn.Module) -> None:
    """Merge every adapter into its base weights (the residual adapter into `fc`)."""
    for path, entry, module in adapted_modules(model):
        if entry.merge is None:
            raise LorafitError(f"method {entry.name} cannot merge ({path})")
        entry.merge(module, model)


def unmerge(model: nn.Module) -> None:
    """Undo `merge`: base weights restored, adapter branches active again."""
    for _, entry, module in adapted_modules(model):
        if entry.unmerge is not None:
            entry.unmerge(module, model)


@torch.no_grad()
def effective_ranks(model: nn.Module, threshold: float = 0.01) -> dict[str, int | None]:
    """Per adapted layer, the rank of the learned update: singular values above `threshold` times
    the largest (0 for an update that is still zero; None when the method exposes no update)."""
    ranks: dict[str, int | None] = {}
    for path, entry, module in adapted_modules(model):
        if entry.delta is None:
            ranks[path] = None
            continue
        s = torch.linalg.svdvals(entry.delta(module, model).detach().float().cpu())
        ranks[path] = int((s > threshold * s.max()).sum()) if s.numel() and s.max() > 0 else 0
    return ranks


def base_layer(module: nn.Module) -> nn.Module:
    return getattr(module, "base_layer", module)


def count(model: nn.Module, method: str, placement: str, settings: AdapterSettings) -> int:
    """Closed-form number of adapter parameters `inject` would add to `model` (not modified)."""
    if method in BASELINES:
        return 0
    entry = method_entry(method)
    bases = {p: base_layer(get_module(model, p)) for p in backbones.resolve(model, placement)}
    for path, base in bases.items():
        _check(entry, path, base, settings)  # what inject would refuse, count refuses too (a dry run)
    return sum(entry.param_count(base, settings, model) for base in bases.values())


def rank_bounds(model: nn.Module, method: str, placement: str, settings: AdapterSettings) -> dict[str, int]:
    """Per adapted layer, the largest rank the learned update can have (<= the nominal rank)."""
    if method in BASELINES:
        return {}
    entry = method_entry(method)
    return {
        p: entry.max_rank(base_layer(get_module(model, p)), settings)
        for p in backbones.resolve(model, placement)
    }


# After the native entries, so the registry lists lora and seed first. Not a cycle: peft_methods
# imports lorafit.registry, never this module.
from lorafit import peft_methods  # noqa: E402,F401  (registers the PEFT-backed methods)
