"""Frozen-prefix feature caching.

Most cells freeze the conv stack: its activations do not change during training, so they are
computed once per (prefix weights, images) and only the stages after the prefix are trained. The
key hashes the prefix's actual weights and the exact image bytes, so a changed backbone or changed
data can never reuse stale features. Entries live in memory within a budget (LRU) and, when a
directory is given, on disk too, so other cells, workers and resumed runs reuse them.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from lorafit.backbones import batch_norms
from lorafit.data import hash_tensor
from lorafit.freeze import stats_adapt
from lorafit.io import publish, temp_path, write_atomic


def _moves(stage: nn.Module, adapt: bool) -> bool:
    """Whether training changes what the stage computes: a trainable parameter, or a BatchNorm
    whose running statistics adapt (lorafit.freeze's BatchNorm rule)."""
    if any(p.requires_grad for p in stage.parameters()):
        return True
    return adapt and bool(batch_norms(stage))


def frozen_prefix_length(model: nn.Module) -> int:
    """Number of leading stages (the network's `stage_names`) that training leaves unchanged
    (stages without parameters count as unchanged). 0 means nothing can be cached."""
    stages = getattr(model, "stage_names", ())
    adapt = stats_adapt(model)
    for i, name in enumerate(stages):
        if _moves(getattr(model, name), adapt):
            return i
    return len(stages)


def cache_key(model: nn.Module, stop: int, data_digest: str, dtype: torch.dtype) -> str:
    """Hash of the prefix stages' weights, the images (their digest, lorafit.data.Split.digest)
    and the feature dtype."""
    h = hashlib.sha256()
    stages = model.stage_names[:stop]
    h.update(f"{stages}|{dtype}".encode())
    for name in stages:
        for pname, p in sorted(getattr(model, name).state_dict().items()):
            h.update(pname.encode())
            hash_tensor(h, p)
    h.update(data_digest.encode())
    return h.hexdigest()[:32]


class FeatureCache:
    """Prefix activations keyed by `cache_key`: in memory within `budget_mb` (LRU; 0 disables
    caching), and, for features larger than that budget, in memory-mapped files under `disk_dir`
    (when given), which later cells, workers and resumed runs reuse."""

    def __init__(self, budget_mb: float = 2048, disk_dir: str | Path | None = None) -> None:
        self.budget_bytes = int(budget_mb * 2**20)
        self.disk_dir = Path(disk_dir) if disk_dir and budget_mb > 0 else None
        self._entries: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._pending: dict[str, Path] = {}
        self.hits = self.misses = 0

    def fits(self, nbytes: int) -> bool:
        return nbytes <= self.budget_bytes or self.disk_dir is not None

    def _used(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._entries.values())

    def _disk_paths(self, key: str) -> tuple[Path, Path]:
        return self.disk_dir / f"{key}.bin", self.disk_dir / f"{key}.json"

    def get(self, key: str) -> torch.Tensor | None:
        if key in self._entries:
            self._entries.move_to_end(key)
            self.hits += 1
            return self._entries[key]
        if self.disk_dir is not None:
            data, meta = self._disk_paths(key)
            if data.exists() and meta.exists():
                info = json.loads(meta.read_text())
                dtype = getattr(torch, info["dtype"])
                numel = math.prod(info["shape"])
                if data.stat().st_size == numel * torch.tensor([], dtype=dtype).element_size():
                    self.hits += 1
                    return torch.from_file(str(data), shared=False, size=numel, dtype=dtype).view(
                        info["shape"]
                    )
        self.misses += 1
        return None

    def allocate(self, key: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor | None:
        """Room for new features: a tensor in memory, a memory-mapped file when they exceed the
        memory budget, or None when neither is allowed."""
        nbytes = math.prod(shape) * torch.tensor([], dtype=dtype).element_size()
        if nbytes <= self.budget_bytes:
            return torch.empty(shape, dtype=dtype)
        if self.disk_dir is None:
            return None
        self.disk_dir.mkdir(parents=True, exist_ok=True)
        tmp = temp_path(self.disk_dir / f"{key}.bin")  # filled in place, published by commit()
        self._pending[key] = tmp
        return torch.from_file(str(tmp), shared=True, size=math.prod(shape), dtype=dtype).view(shape)

    def commit(self, key: str, tensor: torch.Tensor) -> None:
        """Keep features filled into an `allocate`d tensor (a file is renamed into place)."""
        tmp = self._pending.pop(key, None)
        if tmp is None:
            self._entries[key] = tensor
            while self._entries and self._used() > self.budget_bytes:
                self._entries.popitem(last=False)
            return
        data, meta = self._disk_paths(key)
        publish(tmp, data)
        write_atomic(
            meta, json.dumps({"shape": list(tensor.shape), "dtype": str(tensor.dtype).split(".")[-1]})
        )

    def discard(self, key: str) -> None:
        """Forget a failed allocation (its temporary file is removed)."""
        tmp = self._pending.pop(key, None)
        if tmp is not None:
            tmp.unlink(missing_ok=True)
