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
import os
import weakref
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
    h.update(memoryview(t.view(torch.uint8).numpy()))


# Digests of image tensors, so the same split is hashed once per process rather than once per
# cell. Keyed by identity and checked against the version counter (an in-place change bumps it);
# an entry goes when its tensor is freed.
_DATA_DIGESTS: dict[int, tuple[weakref.ref, int, bytes]] = {}


def _data_digest(images: torch.Tensor) -> bytes:
    hit = _DATA_DIGESTS.get(id(images))
    if hit is not None and hit[0]() is images and hit[1] == images._version:
        return hit[2]
    h = hashlib.sha256()
    _tensor_digest(h, images)
    if hit is None:
        weakref.finalize(images, _DATA_DIGESTS.pop, id(images), None)
    _DATA_DIGESTS[id(images)] = (weakref.ref(images), images._version, h.digest())
    return h.digest()


def cache_key(model: nn.Module, stop: int, images: torch.Tensor, dtype: torch.dtype) -> str:
    """Hash of the prefix stages' weights, the exact images and the feature dtype."""
    h = hashlib.sha256()
    h.update(f"{STAGES[:stop]}|{dtype}".encode())
    for name in STAGES[:stop]:
        for pname, p in sorted(getattr(model, name).state_dict().items()):
            h.update(pname.encode())
            _tensor_digest(h, p)
    h.update(_data_digest(images))
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
                    return torch.from_file(str(data), shared=False, size=numel, dtype=dtype).view(info["shape"])
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
        tmp = self.disk_dir / f".{key}.{os.getpid()}.tmp"
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
        os.replace(tmp, data)
        meta_tmp = meta.with_name(f".{meta.name}.{os.getpid()}.tmp")
        meta_tmp.write_text(json.dumps({"shape": list(tensor.shape), "dtype": str(tensor.dtype).split(".")[-1]}))
        os.replace(meta_tmp, meta)

    def discard(self, key: str) -> None:
        """Forget a failed allocation (its temporary file is removed)."""
        tmp = self._pending.pop(key, None)
        if tmp is not None:
            tmp.unlink(missing_ok=True)
