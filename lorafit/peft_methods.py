"""PEFT-backed adapter methods: DoRA, LoHa, LoKr, IA3 and OFT as adapter registry entries.

Each entry builds the method's PEFT config and lets PEFT inject it (`peft.inject_adapter_in_model`)
into a one-layer holder module, so the adapted layer is PEFT's own tuner layer (its forward, its
`merge()`/`unmerge()`); lorafit only places it, counts it and asks it what it trains. `peft` is
imported on first use, not when the registry loads (it costs seconds to import).

    method  PEFT config                      rank ->              alpha ->       placements
    dora    LoraConfig(use_dora=True)        r                    lora_alpha     proj, conv1..3, convs, all
    loha    LoHaConfig                       r                    alpha          proj, conv1..3, convs, all
    lokr    LoKrConfig                       r                    alpha          proj, conv1..3, convs, all
    ia3     IA3Config (scales outputs)       must be 1 (none)     must be 1      proj, conv1..3, convs, all
    oft     OFTConfig(r=0)                   oft_block_size       must be 1      proj

Hyper-parameters. `rank` is each method's size parameter: LoRA's r for DoRA; the r of both
low-rank factor pairs whose Hadamard product is the update for LoHa; for LoKr the r of the
low-rank factorisation of the Kronecker product's second factor (PEFT's default
decompose_factor=-1 splits each dimension near its square root; where r >= half the larger
factor dimension PEFT keeps that factor full and r only sets the scale alpha/r). For OFT it is the
block size b of the block-diagonal rotation (PEFT's `oft_block_size`; its `r`, the number of blocks,
is then fan_in / b): b must divide the layer's fan_in and be >= 2, since PEFT would otherwise
silently pick another size. IA3 learns one scale per output channel and has no size or scale:
it takes rank 1 and alpha 1 only, so a grid cannot run the same IA3 configuration under several
ranks. OFT has no alpha either. `alpha` is the method's alpha where it has one (scale alpha/r;
the default alpha is the rank, scale 1, as for native LoRA). The conv `shape` setting is native
LoRA's: PEFT's conv adapters have their own (DoRA's A copies the base kernel, like kxk; LoHa and
LoKr factor the whole C_out x C_in*k*k weight), so it is ignored here. `dropout` and `rslora` map to
DoRA's lora_dropout and use_rslora; the other methods refuse them.

Effective ranks (`delta`): the merged minus the base weight of a merged copy of the layer.

Identity at initialisation: all five (B = 0 for DoRA, with the magnitude set to the weight's
column norms; one factor zero for LoHa and LoKr; scales 1 for IA3; zero skew parameters, R = I, for
OFT). All five merge: merge/unmerge call PEFT's on the layer.

Where PEFT 0.21 fails on conv layers, the entry refuses with one line; tests/test_peft_methods.py
checks each refusal against the installed PEFT (and fails when a refused case starts working):

    OFT on a k x k Conv2d (k > 1): PEFT's unmerged forward unfolds the input into k x k patches,
        rotates them and folds them back, summing the overlaps, so it is not the base conv at
        initialisation and merged != unmerged. OFT therefore takes Linear and 1x1 convs
        only (on the seed CNN `proj`; its convs are 3x3). PEFT also fails on grouped convs and
        refuses dilated ones for OFT.
    DoRA: groups > 1 cannot merge (PEFT raises); dilation > 1 fails in forward (the LoRA branch
        ignores the dilation); padding_mode other than zeros merges to a different output (the
        branch pads with zeros).
    LoHa, LoKr: padding_mode other than zeros merges to a different output (the update is
        convolved with zero padding).
    The `seed` placement (an nn.Identity activation slot) is no layer PEFT wraps.

`max_rank` is the largest rank the method's weight update can have on the layer: min(r^2, out,
fan_in) for LoHa (a Hadamard product of two rank-r matrices); rank(w1) x rank(w2) bounds for
LoKr; and min(out, fan_in) for DoRA (the magnitude rescales every output row, so the update is
not low-rank; its directional LoRA part alone has rank <= r), IA3 (rows of W rescaled) and OFT
(W times a rotation). fan_in is in_features, or C_in/groups * k_h * k_w for a conv.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from lorafit.errors import LorafitError, first_line
from lorafit.registry import AdapterMethod, AdapterSettings, register

ADAPTER = "default"  # the PEFT adapter name every injected layer uses
_SEED_NOTE = "PEFT wraps Linear and Conv2d layers; 'post-proj' is an nn.Identity activation slot"

# Conv2d features PEFT 0.21 gets wrong per method (see the module docstring): feature -> why.
CONV_LIMITS: dict[str, dict[str, str]] = {
    "dora": {
        "groups": "PEFT cannot merge DoRA into a grouped conv",
        "dilation": "PEFT's DoRA branch ignores the dilation (forward fails)",
        "padding_mode": "PEFT's DoRA branch pads with zeros, so merged != unmerged",
    },
    "loha": {"padding_mode": "PEFT convolves the LoHa update with zero padding, so merged != unmerged"},
    "lokr": {"padding_mode": "PEFT convolves the LoKr update with zero padding, so merged != unmerged"},
    "ia3": {},
    "oft": {
        "kernel": "PEFT's OFT Conv2d forward is not the base conv at init for k x k kernels",
        "groups": "PEFT's OFT sizes its rotation for ungrouped convs (forward fails)",
        "dilation": "PEFT refuses OFT on dilated convs",
    },
}


def conv_features(conv: nn.Conv2d) -> list[str]:
    """The CONV_LIMITS features this conv has."""
    found = []
    if conv.groups != 1:
        found.append("groups")
    if any(d != 1 for d in conv.dilation):
        found.append("dilation")
    if conv.padding_mode != "zeros":
        found.append("padding_mode")
    if tuple(conv.kernel_size) != (1, 1):
        found.append("kernel")
    return found


def _takes(method: str) -> Callable[[nn.Module], str | None]:
    """The first conv feature PEFT gets wrong for `method` on this layer, as a reason (None: none)."""

    def takes(base: nn.Module) -> str | None:
        if not isinstance(base, nn.Conv2d):
            return None
        for feature in conv_features(base):
            why = CONV_LIMITS[method].get(feature)
            if why:
                return f"cannot take a Conv2d with {_describe(base, feature)}: {why}"
        return None

    return takes


def _describe(conv: nn.Conv2d, feature: str) -> str:
    return {
        "groups": f"groups={conv.groups}",
        "dilation": f"dilation={tuple(conv.dilation)}",
        "padding_mode": f"padding_mode={conv.padding_mode!r}",
        "kernel": f"kernel {tuple(conv.kernel_size)}",
    }[feature]


# ------------------------------------------------------------------------------- shapes
def _out_fan_in(base: nn.Module) -> tuple[int, int]:
    """(out, fan_in) of the weight as a matrix: Linear out x in, Conv2d C_out x C_in/groups*kh*kw."""
    w = base.weight
    return w.shape[0], w[0].numel()


def _kernel_area(base: nn.Module) -> int:
    return base.kernel_size[0] * base.kernel_size[1] if isinstance(base, nn.Conv2d) else 1


def _lokr_shapes(base: nn.Module, rank: int) -> tuple[tuple[int, int], tuple[int, int, int], bool]:
    """PEFT's LoKr layout (defaults: decompose_both False, decompose_factor -1, no effective conv):
    w1 is (a, c) and full; w2 is (b, d*k) full, or (b, r) @ (r, d*k) when decomposed; the update is
    kron(w1, w2) with out = a*b, in = c*d, k the kernel area."""
    from peft.tuners.lokr.layer import factorization

    if isinstance(base, nn.Conv2d):
        in_dim, out_dim = base.in_channels // base.groups, base.out_channels
    else:
        in_dim, out_dim = base.in_features, base.out_features
    a, b = factorization(out_dim, -1)
    c, d = factorization(in_dim, -1)
    k = _kernel_area(base)
    decomposed = rank < max(b, d) / 2
    return (a, c), (b, d, k), decomposed


# ------------------------------------------------------------------------------- closed-form counts
def _dora_count(base: nn.Module, s: AdapterSettings, model) -> int:
    out, fan_in = _out_fan_in(base)
    return s.rank * (fan_in + out) + out  # A, B and the magnitude vector


def _loha_count(base: nn.Module, s: AdapterSettings, model) -> int:
    out, fan_in = _out_fan_in(base)
    return 2 * s.rank * (out + fan_in)  # w1_a, w1_b, w2_a, w2_b


def _lokr_count(base: nn.Module, s: AdapterSettings, model) -> int:
    (a, c), (b, d, k), decomposed = _lokr_shapes(base, s.rank)
    return a * c + (s.rank * (b + d * k) if decomposed else b * d * k)


def _ia3_count(base: nn.Module, s: AdapterSettings, model) -> int:
    return _out_fan_in(base)[0]  # one scale per output


def _oft_count(base: nn.Module, s: AdapterSettings, model) -> int:
    _, fan_in = _out_fan_in(base)
    b = s.rank
    return (fan_in // b) * (b * (b - 1) // 2)  # fan_in/b blocks, each a b x b skew-symmetric matrix


# ------------------------------------------------------------------------------- rank bounds
def _full_rank(base: nn.Module, s: AdapterSettings) -> int:
    return min(_out_fan_in(base))


def _loha_max_rank(base: nn.Module, s: AdapterSettings) -> int:
    return min(s.rank**2, *_out_fan_in(base))


def _lokr_max_rank(base: nn.Module, s: AdapterSettings) -> int:
    (a, c), (b, d, k), decomposed = _lokr_shapes(base, s.rank)
    w2 = min(b, d * k, s.rank) if decomposed else min(b, d * k)
    return min(a, c) * w2


# ------------------------------------------------------------------------------- PEFT configs
def peft_config(method: str, s: AdapterSettings, target_modules: list[str]):
    """The PEFT config of `method` with `s`, targeting `target_modules` (names in the model PEFT
    injects into)."""
    import peft

    targets = list(target_modules)
    if method == "dora":
        return peft.LoraConfig(
            r=s.rank,
            lora_alpha=s.alpha,
            use_dora=True,
            lora_dropout=s.dropout,
            use_rslora=s.rslora,
            target_modules=targets,
        )
    if method == "loha":
        return peft.LoHaConfig(r=s.rank, alpha=s.alpha, target_modules=targets)
    if method == "lokr":
        return peft.LoKrConfig(r=s.rank, alpha=s.alpha, target_modules=targets)
    if method == "ia3":
        return peft.IA3Config(target_modules=targets, feedforward_modules=[])
    if method == "oft":
        return peft.OFTConfig(r=0, oft_block_size=s.rank, target_modules=targets)
    raise KeyError(method)


class _Holder(nn.Module):
    """A one-layer model for PEFT to inject into; the adapted layer is taken out again."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer


def _wrap(method: str) -> Callable[[nn.Module, AdapterSettings, object], nn.Module]:
    def wrap(base: nn.Module, s: AdapterSettings, model) -> nn.Module:
        import peft

        holder = _Holder(base)
        try:
            peft.inject_adapter_in_model(peft_config(method, s, ["layer"]), holder, adapter_name=ADAPTER)
        except (ValueError, TypeError, NotImplementedError, RuntimeError) as e:
            raise LorafitError(
                f"PEFT {peft.__version__} cannot apply {method} to {type(base).__name__}: {first_line(e)}"
            ) from None
        layer = holder.layer
        if method == "dora" and isinstance(base, nn.Conv2d):
            layer.register_forward_pre_hook(_keep_contiguous)
        return layer

    return wrap


def _keep_contiguous(module: nn.Module, args=None) -> None:
    """Give the adapter's parameters the default layout again after `model.to(memory_format=
    torch.channels_last)` (the trainer's layout) converted the 4-d ones: PEFT's DoRA computes its conv
    update with `lora_A.weight.view(r, -1)`, which fails on a channels_last weight. Same Parameter
    objects, so optimizers keep them."""
    for p in adapter_parameters(module):
        if not p.is_contiguous():
            p.data = p.data.contiguous()


def adapter_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The parameters PEFT added to `module` for the adapter: those under the layer's own list of
    adapter attributes (`adapter_layer_names`), for the adapter lorafit injected."""
    params: dict[int, nn.Parameter] = {}
    for attr in dict.fromkeys(module.adapter_layer_names):
        container = getattr(module, attr, None)
        if container is None or ADAPTER not in container:
            continue
        item = container[ADAPTER]
        for p in [item] if isinstance(item, nn.Parameter) else item.parameters():
            params.setdefault(id(p), p)
    return list(params.values())


@torch.no_grad()
def _merge(module: nn.Module, model) -> None:
    if not module.merged:
        _keep_contiguous(module)
        module.merge()


@torch.no_grad()
def _unmerge(module: nn.Module, model) -> None:
    if module.merged:
        _keep_contiguous(module)
        module.unmerge()


@torch.no_grad()
def _delta(module: nn.Module, model) -> torch.Tensor:
    """The learned update as a matrix: merged minus base weight, from a merged copy (the layer
    itself is left as it is)."""
    base = module
    if module.merged:  # its base layer holds the merge: take the base weight from an unmerged copy
        base = copy.deepcopy(module)
        _unmerge(base, model)
    merged = copy.deepcopy(base)
    _merge(merged, model)
    return (merged.get_base_layer().weight - base.get_base_layer().weight).flatten(1)


# ------------------------------------------------------------------------------- checks
def _check(method: str) -> Callable[[nn.Module, AdapterSettings], None]:
    takes = _takes(method)

    def check(base: nn.Module, s: AdapterSettings) -> None:
        if method in ("ia3", "oft") and s.alpha != 1:
            raise LorafitError(f"{method} has no alpha; leave alpha unset (1.0), got {s.alpha!r}")
        if method == "ia3" and s.rank != 1:
            raise LorafitError(f"ia3 has no rank (one scale per output channel); set rank = 1, got {s.rank}")
        if method != "dora" and (s.dropout or s.rslora):
            raise LorafitError(f"{method} takes no dropout or rslora setting")
        why = takes(base)
        if why:
            raise LorafitError(why)
        if method == "oft":
            _, fan_in = _out_fan_in(base)
            b = s.rank
            if b < 2 or fan_in % b:
                fits = [k for k in range(2, min(fan_in, 64) + 1) if fan_in % k == 0]
                raise LorafitError(
                    f"OFT block size (rank) {b} must be >= 2 and divide the layer's fan_in {fan_in}; "
                    f"block sizes that fit: {', '.join(map(str, fits)) or 'none'}"
                )

    return check


def _entry(
    name: str,
    description: str,
    param_count,
    max_rank,
    default_alpha: Callable[[int], float] = float,
    placements: tuple[str, ...] | None = None,
    layer_types: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d),
    placement_note: str = _SEED_NOTE,
) -> AdapterMethod:
    return register(
        AdapterMethod(
            name=name,
            description=description,
            placements=placements,
            layer_types=layer_types,
            wrap=_wrap(name),
            trainable=adapter_parameters,
            param_count=param_count,
            max_rank=max_rank,
            merge=_merge,
            unmerge=_unmerge,
            default_alpha=default_alpha,
            delta=_delta,
            check=_check(name),
            takes=_takes(name),
            placement_note=placement_note,
        )
    )


_entry(
    "dora",
    "PEFT DoRA: magnitude m times the direction of W + (alpha/r) B A; B starts at zero",
    _dora_count,
    _full_rank,
)
_entry(
    "loha",
    "PEFT LoHa: W + (alpha/r) (A1 B1) * (A2 B2), a Hadamard product of two rank-r products",
    _loha_count,
    _loha_max_rank,
)
_entry(
    "lokr",
    "PEFT LoKr: W + (alpha/r) kron(W1, A2 B2), a Kronecker product with a low-rank second factor",
    _lokr_count,
    _lokr_max_rank,
)
_entry(
    "ia3",
    "PEFT IA3: a learned scale per output channel (rank 1, no alpha)",
    _ia3_count,
    _full_rank,
    default_alpha=lambda rank: 1.0,
)
_entry(
    "oft",
    "PEFT OFT: W times a block-diagonal rotation of its inputs; rank is the block size",
    _oft_count,
    _full_rank,
    default_alpha=lambda rank: 1.0,
    placement_note="PEFT's OFT forward on k x k conv layers is not the base conv at initialisation; "
    "it takes Linear and 1x1 Conv2d layers",
)
