"""The backbone registry (timm's `register_model`): one entry per network the suite adapts.

An entry gives the constructor (classes, widths -> module), the input it takes, its head, its
stages (children applied in forward order, so the frozen-prefix feature cache works for any
entry), its placement groups (named sets of module paths, as regular expressions matched against
the whole path like PEFT's string `target_modules`), the freeze policies only it has, and its
source-task pretraining recipe. Placements, policies, counts, rank bounds, merges, the ledger
and the charts all ask the entry. Adding a backbone is one `register(Backbone(...))` and its
tests; `custom` makes the entry for a user's own model ("bring your own model").

    seed-cnn      the seed post's CNN (lorafit.model.SeedCNN), 404k parameters with 62 classes
    residual-cnn  a small residual CNN with BatchNorm (lorafit.model.ResidualCNN), 81k
    resnet18      torchvision's resnet18, stem adapted to 28x28x1 (lorafit.model.resnet18_28), 11.2M
"""

from __future__ import annotations

import functools
import importlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from lorafit.errors import LorafitError
from lorafit.model import ResidualCNN, SeedCNN, resnet18_28, run_stages

DEFAULT = "seed-cnn"
INPUT = "[N, 1, 28, 28] uint8 images, MNIST-normalised"


@dataclass(frozen=True)
class Backbone:
    name: str
    description: str
    build: Callable[[int, tuple[int, ...]], nn.Module]  # (classes, widths) -> network
    groups: Mapping[str, tuple[str, ...]]  # placement -> module-path patterns (re.fullmatch)
    widths: tuple[int, ...] = ()  # the default widths; () for a network that takes none
    fixed_widths: bool = False  # True: widths cannot change (e.g. torchvision's constructor)
    # Freeze policies only this network has: parameter name -> trains (besides adapters and head).
    policies: Mapping[str, Callable[[str], bool]] = field(default_factory=dict)
    # Its source-task pretraining recipe: RunConfig pretrain_* values over the profile's.
    pretrain: Mapping[str, float | int] = field(default_factory=dict)
    # Sizes for a profile where the profile's own would be too slow for this network:
    # profile -> RunConfig size/epoch values (the same for every row on it; the record has them).
    sizes: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    weights: str = ""  # a state-dict file: the network is already trained (no pretraining here)
    factory: str = ""  # a user's model: the module:function that builds it
    input: str = INPUT


BACKBONES: dict[str, Backbone] = {}


def register(entry: Backbone) -> Backbone:
    if entry.name in BACKBONES:
        raise ValueError(f"backbone {entry.name!r} is already registered")
    BACKBONES[entry.name] = entry
    return entry


def entry(name: str) -> Backbone:
    if name not in BACKBONES:
        raise LorafitError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    return BACKBONES[name]


def defaults(name: str, profile: str) -> dict:
    """What the entry sets over a profile's defaults: its pretraining recipe, its sizes there."""
    e = entry(name)
    return {**e.pretrain, **e.sizes.get(profile, {})}


def placements(name: str) -> tuple[str, ...]:
    """Every placement a run on backbone `name` may take: "none", then its groups."""
    return ("none", *entry(name).groups)


def build(name: str, num_classes: int, widths: tuple[int, ...] = ()) -> nn.Module:
    """A fresh network of backbone `name` (widths () = its default), tagged with its backbone."""
    e = entry(name)
    model = e.build(num_classes, tuple(widths) or e.widths)
    model.backbone = name
    if not hasattr(model, "adapted"):
        model.adapted = {}
    return model


@functools.cache
def shape_model(name: str, widths: tuple[int, ...] = ()) -> nn.Module:
    """A network for reading layer shapes; built once, without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        return build(name, 10, widths)


def backbone_of(model: nn.Module) -> str:
    return getattr(model, "backbone", DEFAULT)


def is_conv_placement(name: str, placement: str) -> bool:
    """Whether `placement` holds a conv layer (where a conv adapter's shape means something);
    True for any placement of a backbone this process has not registered (a record's)."""
    if placement == "none":
        return False
    if name not in BACKBONES or placement not in BACKBONES[name].groups:
        return True
    model = shape_model(name)
    return any(isinstance(model.get_submodule(p), nn.Conv2d) for p in resolve(model, placement))


def resolve(model: nn.Module, placement: str) -> list[str]:
    """The module paths `placement` names on `model`, in module order: every module whose whole
    path matches one of the group's patterns, except modules inside one already matched (an
    adapter's own base layer and branches)."""
    if placement == "none":
        return []
    groups = entry(backbone_of(model)).groups
    if placement not in groups:
        raise LorafitError(
            f"unknown placement {placement!r} on {backbone_of(model)}; choose one of "
            f"{', '.join(placements(backbone_of(model)))}"
        )
    patterns = [re.compile(p) for p in groups[placement]]
    found: list[str] = []
    for path, _ in model.named_modules():
        if (
            path
            and not any(path.startswith(f + ".") for f in found)
            and any(p.fullmatch(path) for p in patterns)
        ):
            found.append(path)
    return found


def norm_layers(model: nn.Module) -> list[nn.Module]:
    """BatchNorm, GroupNorm and LayerNorm layers (what the `norm` policy trains)."""
    kinds = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)
    return [m for m in model.modules() if isinstance(m, kinds)]


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


# ----------------------------------------------------------------------------- the entries
_SEED_CONVS = r"conv[123]\.conv"
register(
    Backbone(
        name="seed-cnn",
        description="the seed post's CNN: three 3x3 convs, a 256-wide proj, fc; no normalisation",
        build=lambda classes, widths: SeedCNN(classes, widths),
        widths=(32, 64, 128),
        groups={
            "proj": ("proj",),
            **{c: (rf"{c}\.conv",) for c in ("conv1", "conv2", "conv3")},
            "convs": (_SEED_CONVS,),
            "all": (_SEED_CONVS, "proj"),
            "post-proj": ("adapter",),
        },
        policies={"conv2": lambda name: name.startswith("conv2.")},  # the seed post's policy
    )
)

# The convs of a torchvision basic block (both networks use it): conv1, conv2 and the 1x1 downsample.
_BLOCK = r"\.(conv[12]|downsample\.0)"
register(
    Backbone(
        name="residual-cnn",
        description="a small residual CNN with BatchNorm: a conv stem and three basic blocks "
        "(the second and third downsample), global average pool, fc",
        build=lambda classes, widths: ResidualCNN(classes, widths),
        widths=(16, 32, 64),
        groups={
            "stem": (r"stem\.conv",),
            "stage1": (rf"stage1{_BLOCK}",),
            "stage2": (rf"stage2{_BLOCK}",),
            "stage3": (rf"stage3{_BLOCK}",),
            "early": (r"stem\.conv", rf"stage1{_BLOCK}"),
            "shortcuts": (r"stage[23]\.downsample\.0",),  # the 1x1 convs (OFT takes only these)
            "convs": (r"stem\.conv", rf"stage[123]{_BLOCK}"),
        },
    )
)

_LAYER = rf"\.\d+{_BLOCK}"  # a stage of resnet18 is two numbered blocks
register(
    Backbone(
        name="resnet18",
        description="torchvision's resnet18 (its own constructor), stem adapted to 28x28x1: "
        "3x3 stride-1 conv1, no max-pool",
        build=lambda classes, widths: resnet18_28(classes),
        widths=(64, 128, 256, 512),
        fixed_widths=True,
        groups={
            "stem": ("conv1",),
            **{f"stage{i}": (rf"layer{i}{_LAYER}",) for i in range(1, 5)},
            "early": ("conv1", rf"layer1{_LAYER}"),
            "shortcuts": (r"layer[2-4]\.0\.downsample\.0",),  # the 1x1 convs (OFT takes only these)
            "convs": ("conv1", rf"layer[1-4]{_LAYER}"),
        },
        pretrain={"pretrain_lr": 1e-3},
        # 11.2M parameters: ~240 training images/s on 2 cores (AMX bf16), 24x the seed CNN's
        # cost, so its smoke and local runs are smaller (docs/usage.md "Backbones").
        sizes={
            "smoke": dict(
                pretrain_size=512, pretrain_epochs=1, train_size=256, val_size=128, test_size=256, epochs=1
            ),
            "local": dict(pretrain_size=12000, pretrain_epochs=1, train_size=6000, val_size=2000),
        },
    )
)


# --------------------------------------------------------------------- bring your own model
def _import(factory: str) -> Callable[..., nn.Module]:
    module_name, _, attr = factory.partition(":")
    if not module_name or not attr:
        raise LorafitError(f"factory {factory!r} must be module:function (e.g. mypkg.nets:small_cnn)")
    try:
        target = importlib.import_module(module_name)
        for part in attr.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as e:
        raise LorafitError(f"no such callable {factory!r} ({type(e).__name__}: {e})") from None
    except Exception as e:  # the user's module failed while importing: their input, in one line
        raise LorafitError(f"importing {factory!r} raised {type(e).__name__}: {e}") from None
    if not callable(target):
        raise LorafitError(f"{factory!r} is not callable")
    return target


def custom(
    name: str,
    factory: str,
    groups: Mapping[str, list[str] | tuple[str, ...] | str],
    head: str = "fc",
    weights: str = "",
    stages: tuple[str, ...] = (),
) -> Backbone:
    """The entry for a user's model: `factory` (module:function) takes the number of classes and
    returns an nn.Module whose `head` is its classifier (an nn.Linear); `groups` maps placement
    names to module-path patterns; `weights` a state-dict file when the model is already trained
    on the source task (else it is pretrained like every entry); `stages` the children its
    forward applies in order, when it is such a sequence (enables the frozen-prefix cache).
    Checked now, on a built model: every bad input is one LorafitError line, and leaves no entry
    of that name (an earlier reading's included)."""
    BACKBONES.pop(name, None)  # re-reading the same grid file registers it again
    make = _import(factory)
    if weights and not Path(weights).is_file():
        raise LorafitError(f"backbone {name}: weights file {weights} not found")
    patterns = {g: (p,) if isinstance(p, str) else tuple(p) for g, p in groups.items()}
    if not patterns or "none" in patterns or any(not p for p in patterns.values()):
        raise LorafitError(
            f"backbone {name}: give at least one placement group (not 'none'), each with patterns"
        )

    def build_custom(classes: int, widths: tuple[int, ...]) -> nn.Module:
        try:
            model = make(classes)
        except Exception as e:  # the user's code: its failure is their input's, in one line
            raise LorafitError(
                f"backbone {name}: {factory}({classes}) raised {type(e).__name__}: {e}"
            ) from None
        if not isinstance(model, nn.Module):
            raise LorafitError(
                f"backbone {name}: {factory} returned a {type(model).__name__}, not an nn.Module"
            )
        model.head_name, model.stage_names = head, tuple(stages)
        return model

    made = Backbone(
        name=name,
        description=f"a user's model: {factory}",
        build=build_custom,
        groups=patterns,
        weights=weights,
        factory=factory,
    )
    BACKBONES[name] = made
    try:
        _check_custom(made)
    except LorafitError:
        BACKBONES.pop(name, None)
        raise
    shape_model.cache_clear()
    return made


def _check_custom(made: Backbone) -> None:
    with torch.random.fork_rng(devices=[]):
        model = build(made.name, 10)
    head = getattr(model, model.head_name, None)
    if not isinstance(head, nn.Linear):
        kind = type(head).__name__ if head is not None else "missing"
        raise LorafitError(f"backbone {made.name}: head {model.head_name!r} must be an nn.Linear, got {kind}")
    for group, patterns in made.groups.items():
        for p in patterns:
            try:
                regex = re.compile(p)
            except re.error as e:
                raise LorafitError(
                    f"backbone {made.name}: group {group!r}: bad pattern {p!r} ({e})"
                ) from None
            if not any(regex.fullmatch(path) for path, _ in model.named_modules() if path):
                raise LorafitError(f"backbone {made.name}: group {group!r}: pattern {p!r} matches no module")
        if model.head_name in resolve(model, group):
            raise LorafitError(f"backbone {made.name}: group {group!r} includes the head {model.head_name!r}")
    if model.stage_names:
        missing = [s for s in model.stage_names if not isinstance(getattr(model, s, None), nn.Module)]
        if missing or model.stage_names[-1] != model.head_name:
            raise LorafitError(
                f"backbone {made.name}: stages must be child modules ending with the head "
                f"{model.head_name!r}" + (f"; not modules: {', '.join(missing)}" if missing else "")
            )
        model.eval()
        x = torch.randn(2, 1, 28, 28)
        with torch.no_grad():
            if not torch.allclose(run_stages(model, x), model(x), atol=1e-5):
                raise LorafitError(f"backbone {made.name}: its stages do not reproduce its forward")
