"""Tiny official-format IDX files for the tests (the real data is never copied)."""

import gzip
import struct
from pathlib import Path

import numpy as np


def make_images(labels: np.ndarray) -> np.ndarray:
    """Upright 28x28 images: a bright bar along the top (to check orientation), the label as a
    brightness level, and the image index in the bottom-left pixels (to track items through splits)."""
    n = len(labels)
    x = np.zeros((n, 28, 28), dtype=np.uint8)
    x[:, 0:3, :] = 255
    x[:, 10:18, 10:18] = (labels[:, None, None] * 4 + 20).astype(np.uint8)
    x[:, 27, 0] = np.arange(n) % 256
    x[:, 27, 1] = np.arange(n) // 256
    return x


def idx_bytes(arr: np.ndarray) -> bytes:
    magic = 0x0800 | arr.ndim
    return (
        struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(np.uint8).tobytes()
    )


def write(path: Path, payload: bytes, gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def write_split(
    folder: Path, images_name: str, labels_name: str, labels: np.ndarray, gz=False, transpose=False
):
    images = make_images(labels)
    stored = images.transpose(0, 2, 1) if transpose else images  # EMNIST files are stored transposed
    write(folder / images_name, idx_bytes(np.ascontiguousarray(stored)), gz)
    write(folder / labels_name, idx_bytes(labels.astype(np.uint8)), gz)
    return images


def balanced(classes: int, per_class: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(classes), per_class))
