"""Frozen-prefix feature caching.

Most cells freeze the conv stack: its activations do not change during training, so they are
computed once per (prefix weights, images) and only the stages after the prefix are trained. The
key hashes the prefix's actual weights and the exact image bytes, so a changed backbone or changed
data can never reuse stale features. Entries live in memory within a budget (LRU) and, when a
directory is given, on disk too, so other cells, workers and resumed runs reuse them.
"""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from lorafit.model import STAGES


def frozen_prefix_length(model: nn.Module) -> int:
    """Number of leading stages whose parameters are all frozen (stages without parameters count
    as frozen). 0 means nothing can be cached."""
    for i, name in enumerate(STAGES):
        if any(p.requires_grad for p in getattr(model, name).parameters()):
            return i
    return len(STAGES)


def _tensor_digest(h, tensor: torch.Tensor) -> None:
    t = tensor.detach().to("cpu").contiguous()
    h.update(str((tuple(t.shape), str(t.dtype))).encode())
    h.update(t.view(torch.uint8).numpy().tobytes() if t.dtype != torch.bfloat16
             else t.view(torch.int16).numpy().tobytes())


def cache_key(model: nn.Module, stop: int, images: torch.Tensor, dtype: torch.dtype) -> str:
    h = hashlib.sha256()
    h.update(f"{STAGES[:stop]}|{dtype}".encode())
    for name in STAGES[:stop]:
        for pname, p in sorted(getattr(model, name).state_dict().items()):
            h.update(pname.encode())
            _tensor_digest(h, p)
    _tensor_digest(h, images)
    return h.hexdigest()[:32]


class FeatureCache:
    """Prefix activations keyed by `cache_key`, within `budget_mb` of memory (0 disables caching)."""

    def __init__(self, budget_mb: float = 2048, disk_dir: str | Path | None = None) -> None:
        self.budget_bytes = int(budget_mb * 2**20)
        self.disk_dir = Path(disk_dir) if disk_dir else None
        self._entries: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.hits = self.misses = 0

    def fits(self, n: int, feature_numel: int, dtype: torch.dtype) -> bool:
        return n * feature_numel * torch.tensor([], dtype=dtype).element_size() <= self.budget_bytes

    def _used(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._entries.values())

    def get(self, key: str) -> torch.Tensor | None:
        if key in self._entries:
            self._entries.move_to_end(key)
            self.hits += 1
            return self._entries[key]
        if self.disk_dir and (self.disk_dir / f"{key}.pt").exists():
            try:
                tensor = torch.load(self.disk_dir / f"{key}.pt", map_location="cpu", weights_only=True)
            except Exception:  # an unreadable cache file is just a miss; it is rewritten below
                tensor = None
            if tensor is not None:
                self.hits += 1
                self._remember(key, tensor)
                return tensor
        self.misses += 1
        return None

    def put(self, key: str, tensor: torch.Tensor) -> None:
        self._remember(key, tensor)
        if self.disk_dir:
            self.disk_dir.mkdir(parents=True, exist_ok=True)
            tmp = self.disk_dir / f".{key}.{os.getpid()}.tmp"
            torch.save(tensor.to("cpu"), tmp)
            os.replace(tmp, self.disk_dir / f"{key}.pt")

    def _remember(self, key: str, tensor: torch.Tensor) -> None:
        self._entries[key] = tensor
        while self._entries and self._used() > self.budget_bytes:
            self._entries.popitem(last=False)
