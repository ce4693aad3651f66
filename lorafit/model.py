"""The networks the backbone registry (lorafit.backbones) builds, with module names that
placements and freeze policies address. Every network is applied as a sequence of named child
modules (`stage_names`), so the trainer can run only the part after a frozen prefix.

The seed post's CNN (`seed-cnn`):

    input            [N,  1, 28, 28]
    conv1 (3x3, pad 1) + ReLU + maxpool2  -> [N, w1, 14, 14]
    conv2 (3x3, pad 1) + ReLU + maxpool2  -> [N, w2,  7,  7]
    conv3 (3x3, pad 1) + ReLU + maxpool2  -> [N, w3,  3,  3]
    flatten                                -> [N, 9*w3]
    proj  Linear(9*w3 -> 256), act ReLU    -> [N, 256]
    fc    Linear(256 -> classes)           -> [N, classes]

With the default widths (32, 64, 128) and 10 classes the model has
    conv1 320 + conv2 18,496 + conv3 73,856 + proj 295,168 + fc 2,570 = 390,410 parameters;
with the 62-class EMNIST head, fc has 15,934 and the model 403,774.

A small residual CNN with BatchNorm (`residual-cnn`), ResNet's basic block at three widths:

    stem    3x3 conv (1 -> w1, no bias) + BN + ReLU             -> [N, w1, 28, 28]
    stage1  basic block w1 -> w1, stride 1                       -> [N, w1, 28, 28]
    stage2  basic block w1 -> w2, stride 2 (1x1 conv downsample) -> [N, w2, 14, 14]
    stage3  basic block w2 -> w3, stride 2 (1x1 conv downsample) -> [N, w3,  7,  7]
    pool    global average, flatten, fc Linear(w3 -> classes)

A basic block is torchvision's: relu(bn2(conv2(relu(bn1(conv1(x))))) + downsample(x)) with 3x3
convs (no bias), the module names resnet18's own.
With widths (16, 32, 64) and 10 classes it has 77,754 parameters (the closed form is
`residual_cnn_params`); with 62 classes 81,134.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet18
from torchvision.models.resnet import BasicBlock, conv1x1

from lorafit.errors import LorafitError

# The seed CNN's forward pass as a sequence of named stages.
STAGES = ("conv1", "conv2", "conv3", "flatten", "proj", "act", "adapter", "fc")


def run_stages(model: nn.Module, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
    """Apply the network's stages[start:stop] (child modules, in forward order); a network without
    stages (a user's model whose forward is not a sequence of children) runs its forward."""
    stages = getattr(model, "stage_names", ())
    if not stages:
        return model(x)
    for name in stages[start:stop]:
        x = getattr(model, name)(x)
    return x


class ConvBlock(nn.Module):
    """3x3 conv (padding 1) -> ReLU -> 2x2 max-pool; the conv is `.conv` so adapters can wrap it."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.relu(self.conv(x)))


class SeedCNN(nn.Module):
    """conv1 -> conv2 -> conv3 -> flatten -> proj (256) -> ReLU -> [adapter] -> fc."""

    stage_names = STAGES
    head_name = "fc"

    def __init__(
        self, num_classes: int = 10, widths: tuple[int, int, int] = (32, 64, 128), hidden: int = 256
    ) -> None:
        super().__init__()
        if num_classes < 2 or hidden < 1 or len(widths) != 3 or min(widths) < 1:
            raise LorafitError(f"bad model shape: classes={num_classes} widths={widths} hidden={hidden}")
        w1, w2, w3 = widths
        self.conv1 = ConvBlock(1, w1)
        self.conv2 = ConvBlock(w1, w2)
        self.conv3 = ConvBlock(w2, w3)
        self.flatten = nn.Flatten()
        self.proj = nn.Linear(w3 * 3 * 3, hidden)
        self.act = nn.ReLU()
        # The seed post's residual adapter sits between relu(proj) and fc; identity until injected.
        self.adapter: nn.Module = nn.Identity()
        self.fc = nn.Linear(hidden, num_classes)
        # module path -> adapter method, filled by lorafit.adapters.inject (merge and freeze read it)
        self.adapted: dict[str, str] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_stages(self, x)


class ConvBN(nn.Sequential):
    """conv (no bias) -> BatchNorm -> ReLU, named conv / bn / relu."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()


def basic_block(c_in: int, c_out: int, stride: int) -> BasicBlock:
    """torchvision's ResNet basic block; a 1x1 conv + BN `downsample` where the shape changes."""
    block = BasicBlock(c_in, c_out, stride)
    if stride != 1 or c_in != c_out:  # made after the block's convs, as initialisations are drawn
        block.downsample = nn.Sequential(conv1x1(c_in, c_out, stride), nn.BatchNorm2d(c_out))
    return block


class ResidualCNN(nn.Module):
    """stem -> stage1 -> stage2 -> stage3 -> global average pool -> fc (see the module docstring)."""

    stage_names = ("stem", "stage1", "stage2", "stage3", "pool", "flatten", "fc")
    head_name = "fc"

    def __init__(self, num_classes: int = 10, widths: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        if num_classes < 2 or len(widths) != 3 or min(widths) < 1:
            raise LorafitError(f"bad model shape: classes={num_classes} widths={widths}")
        w1, w2, w3 = widths
        self.stem = ConvBN(1, w1)
        self.stage1 = basic_block(w1, w1, 1)
        self.stage2 = basic_block(w1, w2, 2)
        self.stage3 = basic_block(w2, w3, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(w3, num_classes)
        self.adapted: dict[str, str] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return run_stages(self, x)


def residual_cnn_params(num_classes: int, widths: tuple[int, int, int]) -> int:
    """The closed-form parameter count of ResidualCNN (convs without bias; BN weight + bias)."""
    w1, w2, w3 = widths

    def block(c_in: int, c_out: int) -> int:
        shortcut = c_in * c_out + 2 * c_out if c_in != c_out else 0
        return 9 * c_in * c_out + 9 * c_out * c_out + 4 * c_out + shortcut

    return 9 * w1 + 2 * w1 + block(w1, w1) + block(w1, w2) + block(w2, w3) + w3 * num_classes + num_classes


# torchvision's ResNet-18 applied as children; torch.flatten in its forward becomes `flatten`.
RESNET_STAGES = (
    "conv1",
    "bn1",
    "relu",
    "maxpool",
    "layer1",
    "layer2",
    "layer3",
    "layer4",
    "avgpool",
    "flatten",
    "fc",
)


def resnet18_28(num_classes: int = 10) -> nn.Module:
    """torchvision's resnet18, built by its own constructor, with the stem adapted to 28x28
    single-channel images: a 3x3 stride-1 conv1 (1 -> 64) and no max-pool, as CIFAR ResNets do
    (the 7x7 stride-2 stem and pool would leave 7x7 maps after the stem and 1x1 after layer4)."""
    model = resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(1, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    model.flatten = nn.Flatten()
    model.stage_names, model.head_name, model.adapted = RESNET_STAGES, "fc", {}
    return model


def head_name(model: nn.Module) -> str:
    """The attribute that holds the network's classifier (`head_name`; fc where it sets none)."""
    return getattr(model, "head_name", "fc")


def head_module(model: nn.Module) -> nn.Linear:
    return getattr(model, head_name(model))


def set_head(model: nn.Module, head: nn.Module) -> None:
    setattr(model, head_name(model), head)


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Give `model` a fresh head (its `head_name` attribute names it) for `num_classes` classes (in
    place; returns the model)."""
    if num_classes < 2:
        raise LorafitError(f"num_classes must be >= 2, got {num_classes}")
    old = head_module(model)
    new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    set_head(model, new.to(old.weight.device, old.weight.dtype))
    return model
