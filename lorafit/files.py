"""The file store behind lorafit.data: find a dataset's official IDX files, verify them once
(official checksum where one is known, IDX header and size otherwise), decompress `.gz` files and
cache the decoded tensors under a cache directory. The data directory itself is only ever read.

What the files are called, where they may sit and their checksums come from the dataset's
registry entry (lorafit.data.DATASETS); this module knows nothing about particular datasets.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import shutil
import zlib
from pathlib import Path

import torch
from torchvision.datasets.mnist import read_image_file, read_label_file

from lorafit.errors import LorafitError
from lorafit.io import write_atomic

FIX = "pass --data-dir DIR with the official files or use --profile smoke"
_CACHE_VERSION = "v1"  # bump to invalidate cached tensors when the decoding changes


def find(folders: list[Path], base: str) -> Path | None:
    """First of <folder>/<base>.gz or <folder>/<base> (.gz first: it has an official checksum)."""
    for d in folders:
        for candidate in (d / f"{base}.gz", d / base):
            if candidate.is_file():
                return candidate
    return None


class Checks:
    """JSON record of verified files, keyed by absolute path + size + mtime, so hashing is done once."""

    def __init__(self, cache: Path):
        self.path = cache / "checksums.json"

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    def get(self, path: Path) -> dict | None:
        st = path.stat()
        entry = self._read().get(str(path.resolve()))
        if entry and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
            return entry
        return None

    def put(self, path: Path, **info: str) -> None:
        st = path.stat()
        db = self._read()  # re-read: another process may have added entries meanwhile
        db[str(path.resolve())] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, **info}
        write_atomic(self.path, json.dumps(db, indent=1, sort_keys=True))


def verify(path: Path, checks: Checks, known: dict[str, tuple[str, str]]) -> str:
    """sha256 of the file, after checking its official checksum when `known` has one for its name."""
    entry = checks.get(path)
    if entry and "sha256" in entry:
        return entry["sha256"]
    sha, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
            md5.update(chunk)
    expected = known.get(path.name)
    if expected and {"md5": md5, "sha256": sha}[expected[0]].hexdigest() != expected[1]:
        raise LorafitError(
            f"{path}: checksum mismatch (file corrupted or truncated); delete it and download again, "
            "or pass --data-dir with the official files"
        )
    checks.put(path, sha256=sha.hexdigest())
    return sha.hexdigest()


def check_idx(path: Path, ndim: int) -> int:
    """Validate an uncompressed IDX file's header against its size; returns the item count."""
    with open(path, "rb") as f:
        head = f.read(4 + 4 * ndim)
    ok = len(head) == 4 + 4 * ndim and head[:3] == b"\x00\x00\x08" and head[3] == ndim
    dims = [int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)] if ok else []
    if not ok or (ndim == 3 and dims[1:] != [28, 28]):
        kind = "28x28 uint8 images (idx3)" if ndim == 3 else "uint8 labels (idx1)"
        raise LorafitError(f"{path}: not an IDX file of {kind}; {FIX}")
    expected = 4 + 4 * ndim + math.prod(dims)
    if path.stat().st_size != expected:
        raise LorafitError(
            f"{path}: size {path.stat().st_size} B does not match its IDX header ({expected} B; "
            f"truncated?); replace it with the official file or {FIX}"
        )
    return dims[0]


def decompressed(src: Path, src_sha: str, out_dir: Path, checks: Checks) -> Path:
    """Uncompressed copy of a .gz in out_dir (reused while the source is unchanged); other files as is."""
    if src.suffix != ".gz":
        return src
    out = out_dir / src.name[:-3]
    if out.is_file() and (checks.get(out) or {}).get("source_sha256") == src_sha:
        return out

    def unzip(tmp: Path) -> None:
        try:
            with gzip.open(src, "rb") as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
        except (OSError, EOFError, zlib.error) as e:
            raise LorafitError(
                f"{src}: cannot decompress ({e}); replace it with the official file or {FIX}"
            ) from e

    write_atomic(out, unzip)
    checks.put(out, source_sha256=src_sha)
    return out


def read_pair(
    key: str,
    paths: tuple[Path, Path],
    cache: Path,
    raw_dir: Path,
    checks: Checks,
    known: dict[str, tuple[str, str]],
    files: dict[str, str],
    transposed: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Verified (images [N,1,28,28] upright, labels [N]) of one released split, via the tensor cache.

    `key` names the cache entry (e.g. "emnist-letters-test"); `files` receives each file's sha256;
    `transposed` files (EMNIST) are turned upright once, here."""
    img_src, lbl_src = paths
    img_sha, lbl_sha = verify(img_src, checks, known), verify(lbl_src, checks, known)
    files[img_src.name], files[lbl_src.name] = img_sha, lbl_sha
    digest = hashlib.sha256(f"{_CACHE_VERSION}:{img_sha}:{lbl_sha}".encode()).hexdigest()[:16]
    cached = cache / "tensors" / f"{key}-{digest}.pt"
    if cached.is_file():
        try:
            blob = torch.load(cached, weights_only=True)
            return blob["images"], blob["labels"]
        except Exception:  # unreadable cache entry: rebuild it below
            pass

    img_path = decompressed(img_src, img_sha, raw_dir, checks)
    lbl_path = decompressed(lbl_src, lbl_sha, raw_dir, checks)
    n_img, n_lbl = check_idx(img_path, 3), check_idx(lbl_path, 1)
    if n_img != n_lbl:
        raise LorafitError(f"{img_src.name} has {n_img} images but {lbl_src.name} has {n_lbl} labels; {FIX}")
    try:
        images, labels = read_image_file(str(img_path)), read_label_file(str(lbl_path))
    except Exception as e:  # header checked above, so this is a damaged file
        raise LorafitError(f"{img_src} / {lbl_src}: unreadable IDX data ({e}); {FIX}") from e
    images = images.unsqueeze(1)
    if transposed:
        images = images.transpose(-1, -2)  # stored transposed (torchvision does the same)
    images = images.contiguous()
    write_atomic(cached, lambda tmp: torch.save({"images": images, "labels": labels}, tmp))
    return images, labels


def read_mapping(path: Path) -> tuple[str, ...]:
    """Class names from an 'index ascii_code [ascii_code ...]' mapping file (gaps are 'N/A')."""
    table: dict[int, str] = {}
    try:
        for line in path.read_text().splitlines():
            if line.strip():
                index, *codes = (int(v) for v in line.split())
                table[index] = "".join(chr(c) for c in codes)
        return tuple(table.get(i, "N/A") for i in range(max(table) + 1))
    except ValueError as e:
        raise LorafitError(f"{path}: not an 'index ascii_code' mapping file ({e}); delete it or {FIX}") from e
