"""In-memory splits: uint8 images with labels, their digests, and the stratified, seeded
partitions (sklearn) that make train / val / test from one released split."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.model_selection import train_test_split

from lorafit.errors import LorafitError


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # uint8 [N,1,28,28], upright
    labels: torch.Tensor  # int64 [N]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @functools.cached_property
    def digest(self) -> str:
        """sha256 of the image bytes, computed once per split (feature caches are keyed by it)."""
        return image_digest(self.images)


def hash_tensor(h, tensor: torch.Tensor) -> None:
    """Feed a tensor's shape, dtype and exact bytes into hash object h."""
    t = tensor.detach().to("cpu").contiguous()
    h.update(str((tuple(t.shape), str(t.dtype))).encode())
    # Flattened first: a tensor whose size-1 dimensions carry odd strides (a 1x1 conv weight in
    # channels_last) counts as contiguous, yet cannot be viewed as bytes until it is 1-D.
    h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))


def image_digest(images: torch.Tensor) -> str:
    h = hashlib.sha256()
    hash_tensor(h, images)
    return h.hexdigest()


@dataclass(frozen=True)
class Splits:
    name: str
    protocol: str  # "official" | "resplit" | "synthetic"
    train: Split
    val: Split
    test: Split
    classes: tuple[str, ...]
    files: dict[str, str] = field(default_factory=dict)  # file name -> sha256 of every data file read

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def stratified(labels: torch.Tensor, test_size: float | int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (keep, carve) index arrays, stratified by label whenever sklearn can.

    Classes with a single member cannot be stratified, so they stay in the first part; if the carve
    is smaller than the number of classes, the split falls back to a plain random one.
    """
    y = labels.numpy()
    idx = np.arange(len(y))
    values, counts = np.unique(y, return_counts=True)
    rare = np.isin(y, values[counts < 2])
    if isinstance(test_size, float):
        test_size = max(1, round(test_size * len(y)))
    try:
        try:
            keep, carve = train_test_split(
                idx[~rare], test_size=test_size, stratify=y[~rare], random_state=seed
            )
        except ValueError:
            keep, carve = train_test_split(idx[~rare], test_size=test_size, random_state=seed)
    except ValueError as e:
        raise LorafitError(
            f"cannot carve {test_size} of {len(y)} images ({e}); use more data or other fractions"
        ) from e
    return np.sort(np.concatenate([keep, idx[rare]])), np.sort(carve)


def take(images: torch.Tensor, labels: torch.Tensor, idx: np.ndarray) -> Split:
    t = torch.from_numpy(idx)
    return Split(images[t].contiguous(), labels[t].contiguous())


def three_way(
    images: torch.Tensor, labels: torch.Tensor, seed: int, val_fraction: float, test_fraction: float
) -> tuple[Split, Split, Split]:
    rest, test = stratified(labels, test_fraction, seed)
    keep, val = stratified(labels[rest], val_fraction / (1 - test_fraction), seed)
    return take(images, labels, rest[keep]), take(images, labels, rest[val]), take(images, labels, test)


def subsample(split: Split, n: int, seed: int) -> Split:
    """n images of split, stratified by label and deterministic for seed (n >= len: split itself)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise LorafitError(f"subsample size must be a positive integer, got {n!r}")
    if n >= len(split):
        return split
    _, chosen = stratified(split.labels, n, seed)
    return take(split.images, split.labels, chosen)
