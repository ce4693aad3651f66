"""LoRA adapters for the seed CNN, PEFT-style: each wraps its frozen base layer as `base_layer`,
adds a low-rank branch whose B starts at zero (so the adapted model equals the base at init), and
can `merge()` the update into the base weights and `unmerge()` it again. These are the layers;
lorafit.adapters registers them as the native "lora" and "residual" methods and places them.

    LoRALinear        W x + (alpha/r) B A x                     A: in->r, B: r->out
    LoRAConv2d 1x1    conv(x) + (alpha/r) B(A(x))               A, B: 1x1 convs, A has the base stride
    LoRAConv2d kxk    conv(x) + (alpha/r) B(A(x))               A: k x k like the base, B: 1x1 (as PEFT)
    SeedResidualLoRA  h + (alpha/r) h B^T A^T                   the seed post's activation adapter

Trainable parameters: r*(in+out) for Linear and 1x1, r*(C_in*k*k + C_out) for kxk, 2*r*dim for the
residual adapter.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lorafit.errors import LorafitError

SHAPES = ("1x1", "kxk")


def check_rank_alpha(rank: int, alpha: float) -> None:
    if not isinstance(rank, int) or rank < 1:
        raise LorafitError(f"rank must be an integer >= 1, got {rank!r}")
    if not alpha > 0:
        raise LorafitError(f"alpha must be > 0, got {alpha!r}")


def _scaling(rank: int, alpha: float, rslora: bool) -> float:
    return alpha / math.sqrt(rank) if rslora else alpha / rank


class _LoRABase(nn.Module):
    """Shared merge bookkeeping; subclasses define `delta_weight()`, the update merge adds."""

    base_layer: nn.Module
    merged: bool

    def check_mergeable(self) -> None:
        """Raise LorafitError when merging would not reproduce the unmerged output."""

    @torch.no_grad()
    def merge(self) -> None:
        if self.merged:
            return
        self.check_mergeable()
        self.base_layer.weight += self.delta_weight().to(self.base_layer.weight.dtype)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        if not self.merged:
            return
        self.base_layer.weight -= self.delta_weight().to(self.base_layer.weight.dtype)
        self.merged = False


class LoRALinear(_LoRABase):
    def __init__(
        self, base: nn.Linear, rank: int, alpha: float, dropout: float = 0.0, rslora: bool = False
    ) -> None:
        super().__init__()
        check_rank_alpha(rank, alpha)
        self.base_layer = base
        self.rank, self.alpha = rank, alpha
        self.scaling = _scaling(rank, alpha, rslora)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.Linear(base.in_features, rank, bias=False)
        self.lora_B = nn.Linear(rank, base.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.merged = False
        base.requires_grad_(False)
        self.to(base.weight.device)

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if self.merged:
            return out
        return out + self.lora_B(self.lora_A(self.lora_dropout(x))) * self.scaling


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


class LoRAConv2d(_LoRABase):
    """LoRA on a Conv2d, in one of two shapes.

    "1x1": A is a 1x1 conv C_in->r with the base conv's stride, B a 1x1 conv r->C_out. The branch
    reads the input pixel under the centre tap of the base kernel, so the update merges exactly
    into that centre tap when the centre exists (dilation*(kernel-1) even on both axes: odd
    kernels), groups == 1, and the padding mode is zeros or the padding is exactly "same"
    (padding == dilation*(kernel-1)/2). Any other padding is handled by padding or cropping the
    branch's input. Merging is refused when these do not hold.

    "kxk": A copies the base kernel size, stride, padding and dilation (C_in->r), B is a 1x1 conv
    r->C_out: the shape HF PEFT uses; the merged update is B composed with A.
    """

    def __init__(
        self,
        base: nn.Conv2d,
        rank: int,
        alpha: float,
        shape: str = "1x1",
        dropout: float = 0.0,
        rslora: bool = False,
    ) -> None:
        super().__init__()
        check_rank_alpha(rank, alpha)
        if shape not in SHAPES:
            raise LorafitError(f"unknown conv LoRA shape {shape!r}; choose one of {', '.join(SHAPES)}")
        if base.groups != 1:
            raise LorafitError("LoRAConv2d supports groups == 1 only")
        self.base_layer = base
        self.rank, self.alpha, self.shape = rank, alpha, shape
        self.scaling = _scaling(rank, alpha, rslora)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        kernel, stride, dilation = _pair(base.kernel_size), _pair(base.stride), _pair(base.dilation)
        padding = self._numeric_padding(base, kernel, dilation)
        if shape == "kxk":
            self.lora_A = nn.Conv2d(
                base.in_channels,
                rank,
                kernel,
                stride=stride,
                padding=padding,
                dilation=dilation,
                bias=False,
                padding_mode=base.padding_mode,
            )
            self._offset = (0, 0)
        else:
            span = tuple(d * (k - 1) for d, k in zip(dilation, kernel))
            if any(s % 2 for s in span):
                raise LorafitError(
                    f"1x1 LoRA needs a centre tap; kernel {kernel} with dilation "
                    f"{dilation} has none (use shape='kxk')"
                )
            # How far the centre tap's input pixel sits inside the padded input, per axis:
            # > 0 means the branch must pad by that much, < 0 crop.
            self._offset = tuple(p - s // 2 for p, s in zip(padding, span))
            self.lora_A = nn.Conv2d(base.in_channels, rank, 1, stride=stride, bias=False)
        self.lora_B = nn.Conv2d(rank, base.out_channels, 1, bias=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.merged = False
        base.requires_grad_(False)
        self.to(base.weight.device)

    @staticmethod
    def _numeric_padding(base: nn.Conv2d, kernel, dilation) -> tuple[int, int]:
        if base.padding == "valid":
            return (0, 0)
        if base.padding == "same":
            return tuple(d * (k - 1) // 2 for d, k in zip(dilation, kernel))
        return _pair(base.padding)

    def _branch_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.shape == "kxk" or self._offset == (0, 0):
            return x
        oh, ow = self._offset
        if oh >= 0 and ow >= 0:
            return F.pad(x, (ow, ow, oh, oh))
        h, w = x.shape[-2:]
        x = F.pad(x, (max(ow, 0),) * 2 + (max(oh, 0),) * 2)
        ch, cw = max(-oh, 0), max(-ow, 0)
        return x[..., ch : x.shape[-2] - ch, cw : x.shape[-1] - cw]

    def check_mergeable(self) -> None:
        if self.shape == "1x1" and self._offset != (0, 0) and self.base_layer.padding_mode != "zeros":
            raise LorafitError(
                f"cannot merge a 1x1 LoRA into a conv with padding_mode="
                f"{self.base_layer.padding_mode!r} and non-'same' padding"
            )

    def delta_weight(self) -> torch.Tensor:
        b = self.lora_B.weight[:, :, 0, 0]  # [out, r]
        if self.shape == "kxk":
            return torch.einsum("or,rikl->oikl", b, self.lora_A.weight) * self.scaling
        update = (b @ self.lora_A.weight[:, :, 0, 0]) * self.scaling  # [out, in]
        kh, kw = self.base_layer.weight.shape[-2:]
        delta = torch.zeros_like(self.base_layer.weight)
        delta[:, :, kh // 2, kw // 2] = update
        return delta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if self.merged:
            return out
        branch = self.lora_B(self.lora_A(self.lora_dropout(self._branch_input(x))))
        return out + branch * self.scaling


class SeedResidualLoRA(nn.Module):
    """The seed post's adapter, exactly: h + (h @ B.T @ A.T) * alpha/rank on the 256-d activation
    after relu(proj(x)), with A: (dim, r) and B: (r, dim) both initialised randn * 0.01.

    It is not weight-space LoRA (it adapts an activation, and it is not zero at init), but being
    linear it folds into the next layer: fc(h (I + M)) with M = B^T A^T * s is fc with
    W' = W + W M^T. `merge(fc)` does that fold and `unmerge(fc)` takes it out again.
    """

    def __init__(self, dim: int, rank: int = 8, alpha: float = 1.0) -> None:
        super().__init__()
        check_rank_alpha(rank, alpha)
        self.rank, self.alpha, self.scaling = rank, alpha, alpha / rank
        self.lora_A = nn.Parameter(torch.randn(dim, rank) * 0.01)
        self.lora_B = nn.Parameter(torch.randn(rank, dim) * 0.01)
        self.merged = False
        self._fc_delta: torch.Tensor | None = None

    def delta_matrix(self) -> torch.Tensor:
        """M such that the adapter computes h + h @ M."""
        return (self.lora_B.T @ self.lora_A.T) * self.scaling

    @torch.no_grad()
    def merge(self, fc: nn.Linear) -> None:
        if self.merged:
            return
        self._fc_delta = fc.weight @ self.delta_matrix().T
        fc.weight += self._fc_delta
        self.merged = True

    @torch.no_grad()
    def unmerge(self, fc: nn.Linear) -> None:
        if not self.merged:
            return
        fc.weight -= self._fc_delta
        self._fc_delta, self.merged = None, False

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return h
        return h + (h @ self.lora_B.T @ self.lora_A.T) * self.scaling
