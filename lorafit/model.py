"""The seed post's CNN, with module names that placements and freeze policies address.

    input            [N,  1, 28, 28]
    conv1 (3x3, pad 1) + ReLU + maxpool2  -> [N, w1, 14, 14]
    conv2 (3x3, pad 1) + ReLU + maxpool2  -> [N, w2,  7,  7]
    conv3 (3x3, pad 1) + ReLU + maxpool2  -> [N, w3,  3,  3]
    flatten                                -> [N, 9*w3]
    proj  Linear(9*w3 -> 256) + ReLU       -> [N, 256]
    fc    Linear(256 -> classes)           -> [N, classes]

With the default widths (32, 64, 128) and 10 classes the model has
    conv1 320 + conv2 18,496 + conv3 73,856 + proj 295,168 + fc 2,570 = 390,410 parameters;
with the 62-class EMNIST head, fc has 15,934 and the model 403,774.
"""

from __future__ import annotations

import torch
from torch import nn

from lorafit.errors import LorafitError

CONV_NAMES = ("conv1", "conv2", "conv3")
# The forward pass as a sequence of named stages ("proj" includes its ReLU).
STAGES = ("conv1", "conv2", "conv3", "flatten", "proj", "adapter", "fc")


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
        # The seed post's residual adapter sits between relu(proj) and fc; identity until injected.
        self.adapter: nn.Module = nn.Identity()
        self.fc = nn.Linear(hidden, num_classes)
        # module path -> adapter method, filled by lorafit.adapters.inject (merge and freeze read it)
        self.adapted: dict[str, str] = {}

    def stage(self, name: str, x: torch.Tensor) -> torch.Tensor:
        if name == "proj":
            return torch.relu(self.proj(x))
        return getattr(self, name)(x)

    def run_stages(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Apply STAGES[start:stop]; the trainer uses it to run only the part after a frozen prefix."""
        for name in STAGES[start:stop]:
            x = self.stage(name, x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run_stages(x)


def replace_head(model: SeedCNN, num_classes: int) -> SeedCNN:
    """Give `model` a fresh `fc` for `num_classes` classes (in place; returns the model)."""
    if num_classes < 2:
        raise LorafitError(f"num_classes must be >= 2, got {num_classes}")
    old = model.fc
    model.fc = nn.Linear(old.in_features, num_classes).to(old.weight.device, old.weight.dtype)
    return model
