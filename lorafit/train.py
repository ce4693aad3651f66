"""A fast in-memory trainer: the whole uint8 dataset sits on the device, a seeded permutation
indexes it, batches are normalised on the fly. No per-sample Dataset/DataLoader in the hot path.

Speed paths: channels_last and bf16 autocast where the device supports it (CUDA with bf16, or a
CPU with AVX-512 BF16 / AMX), fp32 otherwise; and frozen-prefix caching (lorafit.features), which
trains only the stages after the frozen part of the network. torch.compile is off: it was slower
for this model on CPU.
"""

from __future__ import annotations

import functools
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from lorafit.budget import Budget
from lorafit.data import Split, image_digest
from lorafit.errors import LorafitError
from lorafit.features import FeatureCache, cache_key, frozen_prefix_length
from lorafit.freeze import stats_move, train_mode
from lorafit.model import head_module, run_stages

if TYPE_CHECKING:
    from lorafit.config import RunConfig

# MNIST statistics; every dataset is normalised with them since the backbone was trained on MNIST.
MEAN, STD = 0.1307, 0.3081
# Inference batch: measured on 2 CPU cores (bf16, channels_last), 256 ran ~3x faster than 2048,
# whose activations no longer fit in cache.
EVAL_BATCH = 256


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """CUDA when present (or asked for), else CPU."""
    if isinstance(device, torch.device):
        return device
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device != "cpu" and not (device == "cuda" or device.startswith("cuda:")):
        raise LorafitError(f"unknown device {device!r}; use cpu, cuda or cuda:N")
    if device != "cpu" and not torch.cuda.is_available():
        raise LorafitError(
            f"--device {device} was asked for but no CUDA device is available; use --device cpu"
        )
    return torch.device(device)


@functools.cache
def _cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bf16_supported(device: torch.device) -> bool:
    """bf16 autocast pays off: CUDA with bf16, or a CPU with AVX-512 BF16 / AMX."""
    return torch.cuda.is_bf16_supported() if device.type == "cuda" else _cpu_has_bf16()


@dataclass
class FitResult:
    status: str  # "complete" | "diverged"
    error: str | None = None
    curve: list[dict] = field(default_factory=list)  # per epoch: train_loss, val_acc, seconds, images_per_s
    best_epoch: int = 0
    best_val_acc: float = float("nan")
    train_s: float = 0.0
    images_per_s: float = 0.0
    peak_mem_mb: float = 0.0  # PeakMemory while training (CUDA: allocator peak; CPU: RSS rise)
    bf16: bool = False
    cached_stages: tuple[str, ...] = ()  # the frozen prefix whose features were cached
    stop_reason: str = ""  # lorafit.budget: budget | patience | plateau | cap | diverged


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N,1,28,28] -> float, MNIST-normalised, channels_last."""
    x = images.float().div_(255).sub_(MEAN).div_(STD)
    return x.contiguous(memory_format=torch.channels_last)


class _Inputs:
    """Serves batches of a split as inputs to the stages from `start` on: raw images normalised on
    the fly (start 0) or cached prefix features."""

    def __init__(
        self,
        model: nn.Module,
        split: Split | torch.Tensor,
        device: torch.device,
        bf16: bool,
        cache: FeatureCache | None,
        start: int,
        batch_size: int,
    ) -> None:
        self.start = start
        images = split.images if isinstance(split, Split) else split
        if start == 0:
            self.data = images.to(device)
            return
        dtype = torch.bfloat16 if bf16 else torch.float32
        digest = split.digest if isinstance(split, Split) else image_digest(images)
        key = cache_key(model, start, digest, dtype)
        feats = cache.get(key) if cache is not None else None
        if feats is None:
            with torch.inference_mode():
                shape = run_stages(model, torch.zeros(1, 1, 28, 28, device=device), 0, start).shape[1:]
            feats = cache.allocate(key, (len(images), *shape), dtype) if cache is not None else None
            if feats is None:
                feats = torch.empty((len(images), *shape), dtype=dtype)
            try:
                with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                    for i in range(0, len(images), batch_size):
                        x = normalise(images[i : i + batch_size].to(device))
                        feats[i : i + batch_size] = run_stages(model, x, 0, start).to("cpu", dtype)
            except BaseException:
                if cache is not None:
                    cache.discard(key)
                raise
            if cache is not None:
                cache.commit(key, feats)
        self.data = feats.to(device)

    def batch(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.data[idx]
        return normalise(x) if self.start == 0 else x


class PeakMemory:
    """Peak memory while the block runs, in MiB. CUDA: the allocator's peak (exact). CPU: how far
    the process's anonymous resident memory rose above its level at the start, sampled every 5 ms from
    /proc (Linux; elsewhere 0). Memory the allocator reuses from earlier runs in the same
    process does not show up as a rise, so on CPU it is a lower bound."""

    _STATM = "/proc/self/statm"

    def __init__(self, device: torch.device, interval_s: float = 0.005) -> None:
        self.device, self.interval_s, self.mb = device, interval_s, 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def _anon_resident_bytes(cls) -> int:
        try:
            with open(cls._STATM) as f:
                fields = f.read().split()
            # resident minus file-backed/shared pages: tensors are anonymous memory, and a file
            # mapping released meanwhile (an earlier run's memory-mapped cache) is not a fall in use.
            return (int(fields[1]) - int(fields[2])) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return 0

    def _watch(self, start: int) -> None:
        peak = start
        while not self._stop.wait(self.interval_s):
            peak = max(peak, self._anon_resident_bytes())
        self.mb = max(0, max(peak, self._anon_resident_bytes()) - start) / 2**20

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            # The baseline is read here, not in the thread: the thread may first run after the
            # block has already started allocating.
            start = self._anon_resident_bytes()
            self._thread = threading.Thread(target=self._watch, args=(start,), daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()


def _prefix_start(model: nn.Module, cache: FeatureCache | None, n: int, device, bf16, batch_size) -> int:
    """How many leading stages to run once and cache: the frozen prefix, if its features fit."""
    if cache is None:
        return 0
    start = min(frozen_prefix_length(model), len(getattr(model, "stage_names", ())) - 1)
    if start <= 0:
        return 0
    with torch.inference_mode():
        probe = run_stages(model, torch.zeros(1, 1, 28, 28, device=device), 0, start)
    itemsize = 2 if bf16 else 4
    return start if cache.fits(n * probe[0].numel() * itemsize) else 0


def param_groups(model: nn.Module, params: list[nn.Parameter], lr: float, head_lr: float) -> list[dict]:
    """Two optimizer groups: the new head at head_lr, every other trainable tensor (adapters,
    or the backbone) at lr. Empty groups are left out."""
    head = {id(p) for p in head_module(model).parameters()}
    groups = [
        {"params": [p for p in params if id(p) not in head], "lr": lr},
        {"params": [p for p in params if id(p) in head], "lr": head_lr},
    ]
    return [g for g in groups if g["params"]]


@torch.inference_mode()
def predict(
    model: nn.Module,
    images: Split | torch.Tensor,
    device: str | torch.device | None = None,
    bf16: bool | None = None,
    batch_size: int = EVAL_BATCH,
    cache: FeatureCache | None = None,
) -> torch.Tensor:
    """Predicted class indices (int64, on the CPU) for a split's (or a tensor of) uint8 images."""
    split, images = images, images.images if isinstance(images, Split) else images
    device = pick_device(device)
    bf16 = bf16_supported(device) if bf16 is None else bf16
    model.to(device, memory_format=torch.channels_last).eval()
    start = _prefix_start(model, cache, len(images), device, bf16, batch_size)
    inputs = _Inputs(model, split, device, bf16, cache, start, batch_size)
    preds = []
    with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
        for i in range(0, len(images), batch_size):
            idx = torch.arange(i, min(i + batch_size, len(images)), device=inputs.data.device)
            preds.append(run_stages(model, inputs.batch(idx), start).argmax(1).cpu())
    return torch.cat(preds) if preds else torch.empty(0, dtype=torch.long)


def accuracy(model: nn.Module, split: Split, **kwargs) -> float:
    return (predict(model, split, **kwargs) == split.labels).float().mean().item()


def fit(
    model: nn.Module,
    train: Split,
    val: Split,
    cfg: RunConfig,
    *,
    device: str | torch.device | None = None,
    bf16: bool | None = None,
    cache: FeatureCache | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
) -> FitResult:
    """Train the parameters of `model` that require grad as `cfg` says (its epochs, lr, head_lr,
    batch_size, weight_decay, schedule, patience and seed) with AdamW; the head trains at
    head_lr (0: lr), everything else at lr (0: at rest).

    Validation accuracy is measured after every epoch; the best epoch's weights are restored at
    the end. How long it trains is the schedule's (lorafit.budget: cosine over `epochs` with
    optional early stopping, or plateau); the result says why it stopped. A
    non-finite loss ends the run with status "diverged" instead of raising. `on_epoch(epoch,
    val_acc)` is called after each epoch; an exception it raises (e.g. a pruning signal)
    propagates. Deterministic for a seed on CPU. Device, precision and the feature cache are
    runtime choices, not part of the configuration.
    """
    device = pick_device(device)
    with PeakMemory(device) as peak:
        result = _fit(model, train, val, cfg, device, bf16, cache, on_epoch)
    result.peak_mem_mb = peak.mb
    return result


def _fit(
    model: nn.Module,
    train: Split,
    val: Split,
    cfg: RunConfig,
    device: torch.device,
    bf16: bool | None,
    cache: FeatureCache | None,
    on_epoch: Callable[[int, float], None] | None,
) -> FitResult:
    epochs, lr, batch_size, seed = cfg.epochs, cfg.lr, cfg.batch_size, cfg.seed
    weight_decay, patience = cfg.weight_decay, cfg.patience
    if epochs < 1 or batch_size < 1 or lr < 0 or not (lr > 0 or cfg.head_lr > 0):
        raise LorafitError(f"bad training settings: epochs={epochs} batch_size={batch_size} lr={lr}")
    bf16 = bf16_supported(device) if bf16 is None else bf16
    torch.manual_seed(seed)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    model.to(device, memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise LorafitError("nothing to train: every parameter is frozen")

    model.eval()  # the prefix is computed in evaluation mode
    start = _prefix_start(model, cache, len(train) + len(val), device, bf16, EVAL_BATCH)
    train_in = _Inputs(model, train, device, bf16, cache, start, EVAL_BATCH)
    val_in = _Inputs(model, val, device, bf16, cache, start, EVAL_BATCH)
    train_y, val_y = train.labels.to(device), val.labels.to(device)

    steps_per_epoch = math.ceil(len(train) / batch_size)
    opt = torch.optim.AdamW(
        param_groups(model, params, lr, cfg.effective_head_lr), lr=lr, weight_decay=weight_decay
    )
    budget = Budget(opt, cfg.schedule, epochs, patience, steps_per_epoch)
    result = FitResult(
        status="complete", bf16=bf16, cached_stages=tuple(getattr(model, "stage_names", ()))[:start]
    )
    best_state, best_acc, trained_images = None, -1.0, 0
    keep_buffers = stats_move(model)  # BatchNorm statistics belong to the best epoch too
    t_start = time.perf_counter()
    train_seconds = 0.0
    for epoch in range(1, epochs + 1):
        train_mode(model)  # BatchNorm as the freeze policy says (lorafit.freeze)
        t0 = time.perf_counter()
        perm = torch.randperm(len(train), generator=gen).to(train_in.data.device)
        total_loss = torch.zeros((), device=device)
        # Divergence is tracked on the device and read once per epoch: no host sync per step.
        first_bad = torch.full((), -1, device=device)
        for step, i in enumerate(range(0, len(train), batch_size)):
            idx = perm[i : i + batch_size]
            with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(run_stages(model, train_in.batch(idx), start), train_y[idx])
            first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss), step + 1, first_bad)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            budget.step()
            total_loss += loss.detach() * len(idx)
        epoch_s = time.perf_counter() - t0
        train_seconds += epoch_s
        if first_bad.item() > 0:
            result.status, result.stop_reason = "diverged", "diverged"
            result.error = f"non-finite loss at epoch {epoch}, step {first_bad.item()}"
            break
        trained_images += len(train)
        model.eval()
        with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            correct = torch.zeros((), dtype=torch.long, device=device)
            for i in range(0, len(val), EVAL_BATCH):
                idx = torch.arange(i, min(i + EVAL_BATCH, len(val)), device=val_in.data.device)
                correct += (run_stages(model, val_in.batch(idx), start).argmax(1) == val_y[idx]).sum()
        val_acc = correct.item() / max(len(val), 1)
        result.curve.append(
            {
                "epoch": epoch,
                "train_loss": total_loss.item() / len(train),
                "val_acc": val_acc,
                "seconds": epoch_s,
                "images_per_s": len(train) / epoch_s,
            }
        )
        if val_acc > best_acc:
            best_acc, result.best_epoch = val_acc, epoch
            best_state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
            if keep_buffers:
                best_state.update({n: b.detach().clone() for n, b in model.named_buffers()})
        if on_epoch is not None:
            on_epoch(epoch, val_acc)
        result.stop_reason = budget.end_epoch(val_acc)
        if result.stop_reason:
            break
    if best_state is not None:  # only trainable tensors (and moving statistics) change: only they are kept
        with torch.no_grad():
            for name, tensor in (*model.named_parameters(), *model.named_buffers()):
                if name in best_state:
                    tensor.copy_(best_state[name])
    model.eval()
    result.best_val_acc = best_acc if best_acc >= 0 else float("nan")
    result.train_s = time.perf_counter() - t_start
    result.images_per_s = trained_images / train_seconds if train_seconds > 0 else 0.0
    return result
