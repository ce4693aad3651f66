"""Real MNIST / EMNIST (official IDX files, read through torchvision) and synthetic glyphs, as
in-memory uint8 tensors split into train / val / test.

Files are looked up in a data directory (flat, `mnist/` or `emnist/`, or torchvision's
`MNIST/raw/` / `EMNIST/raw/`), compressed or not. Every file is checked (official checksum where
one is known, IDX header otherwise) once; the result, the file's sha256, decompressed copies and the
decoded tensors are cached under a cache directory so later loads take well under a second. The data
directory itself is only ever read.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import shutil
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torchvision
from sklearn.model_selection import train_test_split
from torchvision.datasets.mnist import read_image_file, read_label_file

from lorafit import glyphs
from lorafit.errors import LorafitError

DATASETS = (
    "mnist",
    "emnist-byclass",
    "emnist-bymerge",
    "emnist-balanced",
    "emnist-letters",
    "emnist-digits",
    "emnist-mnist",
    "glyphs-digits",
    "glyphs-chars",
)
PROTOCOLS = ("auto", "official", "resplit", "synthetic")

_FIX = "pass --data-dir DIR with the official files or use --profile smoke"
_BYCLASS = tuple("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_CACHE_VERSION = "v1"  # bump to invalidate cached tensors when the decoding changes

# Official checksums of the compressed files: torchvision's MNIST md5s and the sha256s of the NIST
# EMNIST release (from /work/shared/data/SOURCES.md). Files not listed get an IDX header check.
_KNOWN: dict[str, tuple[str, str]] = {
    "train-images-idx3-ubyte.gz": ("md5", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    "train-labels-idx1-ubyte.gz": ("md5", "d53e105ee54ea40749a09fcbcd1e9432"),
    "t10k-images-idx3-ubyte.gz": ("md5", "9fb629c4189551a2d022fa330f9573f3"),
    "t10k-labels-idx1-ubyte.gz": ("md5", "ec29112dd5afa0611ce80d1b7f02629c"),
    "emnist-byclass-test-images-idx3-ubyte.gz": ("sha256", "5ec835bd5d5b1a66378a132e727fef20fe994b3cc666899befcca5ac766f50cd"),
    "emnist-byclass-test-labels-idx1-ubyte.gz": ("sha256", "501e305eeeacb093b162592d80e8a2632040872360fa6d85cfcb2200d91ca92a"),
    "emnist-byclass-train-images-idx3-ubyte.gz": ("sha256", "9e21987f03a6eb8b870187e785883ddad96947299587908f1a7ec2ca0f4be5f0"),
    "emnist-byclass-train-labels-idx1-ubyte.gz": ("sha256", "f7ef403d48dc18a89dae0d83d11ee69cecb6e1c12c3a961d03712e495c02a8fa"),
    "emnist-balanced-train-images-idx3-ubyte.gz": ("sha256", "74295e75e4e9fa2c102147460ee7eb763653d5132d883a84fb88932bfb8d2db4"),
    "emnist-balanced-test-images-idx3-ubyte.gz": ("sha256", "117fc12b015e37ea98bfb2cbba3f77c3782c056cdbd219b87abfc8661d7135db"),
    "emnist-letters-train-images-idx3-ubyte.gz": ("sha256", "6288f418a917e007bf5fddb823a2dc7a5c6a35031401b93292a539cb12bd881f"),
    "emnist-letters-test-images-idx3-ubyte.gz": ("sha256", "50f0e93d75b99b463e9760b8345866f22587fa2c2fba472730a5ba09c693412d"),
    "emnist-digits-test-images-idx3-ubyte.gz": ("sha256", "20ebe43509264f7639d37c835a3f0b009e90b29e00a099a03101abe1644a3f63"),
}


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # uint8 [N,1,28,28], upright
    labels: torch.Tensor  # int64 [N]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


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


def default_cache_dir() -> Path:
    """Where downloads, decompressed copies, checksum results and tensor caches go:
    $LORAFIT_CACHE_DIR if set, else ~/.cache/lorafit/data. Never the data directory itself."""
    env = os.environ.get("LORAFIT_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lorafit" / "data"


def default_data_dir() -> Path:
    """Where the official files are looked for: $LORAFIT_DATA_DIR if set, else the cache
    directory (where downloads land)."""
    env = os.environ.get("LORAFIT_DATA_DIR")
    return Path(env).expanduser() if env else default_cache_dir()


# ---------------------------------------------------------------------------------------------
# Locating files


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise LorafitError(f"unknown dataset {name!r}; use one of {', '.join(DATASETS)}")


def _family(name: str) -> str:
    return "mnist" if name == "mnist" else "emnist"


def _file_names(name: str, part: str) -> tuple[str, str]:
    """(images, labels) base names of the official uncompressed IDX files."""
    if name == "mnist":
        prefix = "train" if part == "train" else "t10k"
        return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"
    return f"emnist-{name[7:]}-{part}-images-idx3-ubyte", f"emnist-{name[7:]}-{part}-labels-idx1-ubyte"


def _search_dirs(root: Path, name: str) -> list[Path]:
    if _family(name) == "mnist":
        return [root, root / "mnist", root / "MNIST" / "raw"]
    # gzip/ is how NIST's gzip.zip unpacks.
    return [root, root / "emnist", root / "EMNIST" / "raw", root / "gzip", root / "emnist" / "gzip"]


def _find(root: Path, name: str, base: str) -> Path | None:
    """First of <dir>/<base>.gz or <dir>/<base> over the search dirs (.gz first: it has a checksum)."""
    for d in _search_dirs(root, name):
        for candidate in (d / f"{base}.gz", d / base):
            if candidate.is_file():
                return candidate
    return None


def _find_part(root: Path, name: str, part: str) -> tuple[Path, Path] | None:
    images, labels = (_find(root, name, base) for base in _file_names(name, part))
    return (images, labels) if images and labels else None


def available_protocol(name: str, data_dir: str | Path | None = None) -> str:
    """"official" if train and test files are found, "resplit" if only one split is, "synthetic"
    for glyphs; LorafitError if no files are found."""
    _check_name(name)
    if name.startswith("glyphs-"):
        return "synthetic"
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    train, test = _find_part(root, name, "train"), _find_part(root, name, "test")
    if train and test:
        return "official"
    if train or test:
        return "resplit"
    missing = ", ".join(f"{b}[.gz]" for p in ("train", "test") for b in _file_names(name, p))
    raise LorafitError(f"{name}: no data files in {root} (need {missing}); {_FIX}")


# ---------------------------------------------------------------------------------------------
# Cache helpers: every write goes to a unique temp name in the target directory, then os.replace.


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """write() fills a unique temp file beside path, which then replaces path in one step: readers and
    concurrent writers never see a partial file, and a failure leaves nothing behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class _Checks:
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
        _atomic_write(self.path, lambda tmp: tmp.write_text(json.dumps(db, indent=1, sort_keys=True)))


def _verify(path: Path, checks: _Checks) -> str:
    """sha256 of the file, after checking the official checksum when one is known."""
    entry = checks.get(path)
    if entry and "sha256" in entry:
        return entry["sha256"]
    sha, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha.update(chunk)
            md5.update(chunk)
    known = _KNOWN.get(path.name)
    if known and {"md5": md5, "sha256": sha}[known[0]].hexdigest() != known[1]:
        raise LorafitError(
            f"{path}: checksum mismatch (file corrupted or truncated); delete it and download again, "
            "or pass --data-dir with the official files"
        )
    checks.put(path, sha256=sha.hexdigest())
    return sha.hexdigest()


def _check_idx(path: Path, ndim: int) -> int:
    """Validate an uncompressed IDX file's header against its size; returns the item count."""
    with open(path, "rb") as f:
        head = f.read(4 + 4 * ndim)
    ok = len(head) == 4 + 4 * ndim and head[:3] == b"\x00\x00\x08" and head[3] == ndim
    dims = [int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)] if ok else []
    if not ok or (ndim == 3 and dims[1:] != [28, 28]):
        kind = "28x28 uint8 images (idx3)" if ndim == 3 else "uint8 labels (idx1)"
        raise LorafitError(f"{path}: not an IDX file of {kind}; {_FIX}")
    expected = 4 + 4 * ndim + math.prod(dims)
    if path.stat().st_size != expected:
        raise LorafitError(
            f"{path}: size {path.stat().st_size} B does not match its IDX header ({expected} B; truncated?); "
            f"replace it with the official file or {_FIX}"
        )
    return dims[0]


def _decompressed(src: Path, src_sha: str, cache: Path, name: str, checks: _Checks) -> Path:
    """Uncompressed copy of a .gz in the cache's torchvision layout (reused while the source is unchanged)."""
    if src.suffix != ".gz":
        return src
    out = cache / ("MNIST" if _family(name) == "mnist" else "EMNIST") / "raw" / src.name[:-3]
    if out.is_file() and (checks.get(out) or {}).get("source_sha256") == src_sha:
        return out

    def unzip(tmp: Path) -> None:
        try:
            with gzip.open(src, "rb") as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
        except (OSError, EOFError, zlib.error) as e:
            raise LorafitError(f"{src}: cannot decompress ({e}); replace it with the official file or {_FIX}") from e

    _atomic_write(out, unzip)
    checks.put(out, source_sha256=src_sha)
    return out


# ---------------------------------------------------------------------------------------------
# Reading one released split (images + labels) as tensors


def _read_part(
    name: str, part: str, paths: tuple[Path, Path], cache: Path, checks: _Checks, files: dict[str, str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Verified (images [N,1,28,28] upright, labels [N]) of one released split, via the tensor cache."""
    img_src, lbl_src = paths
    img_sha, lbl_sha = _verify(img_src, checks), _verify(lbl_src, checks)
    files[img_src.name], files[lbl_src.name] = img_sha, lbl_sha
    key = hashlib.sha256(f"{_CACHE_VERSION}:{img_sha}:{lbl_sha}".encode()).hexdigest()[:16]
    cached = cache / "tensors" / f"{name}-{part}-{key}.pt"
    if cached.is_file():
        try:
            blob = torch.load(cached, weights_only=True)
            return blob["images"], blob["labels"]
        except Exception:  # unreadable cache entry: rebuild it below
            pass

    img_path = _decompressed(img_src, img_sha, cache, name, checks)
    lbl_path = _decompressed(lbl_src, lbl_sha, cache, name, checks)
    n_img, n_lbl = _check_idx(img_path, 3), _check_idx(lbl_path, 1)
    if n_img != n_lbl:
        raise LorafitError(f"{img_src.name} has {n_img} images but {lbl_src.name} has {n_lbl} labels; {_FIX}")
    try:
        images, labels = read_image_file(str(img_path)), read_label_file(str(lbl_path))
    except Exception as e:  # header checked above, so this is a damaged file
        raise LorafitError(f"{img_src} / {lbl_src}: unreadable IDX data ({e}); {_FIX}") from e
    images = images.unsqueeze(1)
    if _family(name) == "emnist":
        images = images.transpose(-1, -2)  # EMNIST is stored transposed (torchvision does the same)
    images = images.contiguous()
    _atomic_write(cached, lambda tmp: torch.save({"images": images, "labels": labels}, tmp))
    return images, labels


def _classes(name: str, root: Path, checks: _Checks, files: dict[str, str]) -> tuple[str, ...]:
    if name == "mnist":
        return tuple("0123456789")
    split = name[7:]
    mapping = _find(root, name, f"emnist-{split}-mapping.txt")
    if mapping is None:
        return _BYCLASS if split == "byclass" else tuple(torchvision.datasets.EMNIST.classes_split_dict[split])
    files[mapping.name] = _verify(mapping, checks)
    table: dict[int, str] = {}
    try:
        for line in mapping.read_text().splitlines():
            if line.strip():
                index, *codes = (int(v) for v in line.split())
                table[index] = "".join(chr(c) for c in codes)
        names = tuple(table.get(i, "N/A") for i in range(max(table) + 1))  # letters has no class 0
    except ValueError as e:
        raise LorafitError(f"{mapping}: not an 'index ascii_code' mapping file ({e}); delete it or {_FIX}") from e
    if split == "byclass" and names != _BYCLASS:
        raise LorafitError(f"{mapping}: does not list 0-9A-Za-z as the byclass mapping should; delete it or {_FIX}")
    return names


# ---------------------------------------------------------------------------------------------
# Splitting


def _stratified(labels: torch.Tensor, test_size: float | int, seed: int) -> tuple[np.ndarray, np.ndarray]:
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
            keep, carve = train_test_split(idx[~rare], test_size=test_size, stratify=y[~rare], random_state=seed)
        except ValueError:
            keep, carve = train_test_split(idx[~rare], test_size=test_size, random_state=seed)
    except ValueError as e:
        raise LorafitError(f"cannot carve {test_size} of {len(y)} images ({e}); use more data or other fractions") from e
    return np.sort(np.concatenate([keep, idx[rare]])), np.sort(carve)


def _take(images: torch.Tensor, labels: torch.Tensor, idx: np.ndarray) -> Split:
    t = torch.from_numpy(idx)
    return Split(images[t].contiguous(), labels[t].contiguous())


def _three_way(
    images: torch.Tensor, labels: torch.Tensor, seed: int, val_fraction: float, test_fraction: float
) -> tuple[Split, Split, Split]:
    rest, test = _stratified(labels, test_fraction, seed)
    keep, val = _stratified(labels[rest], val_fraction / (1 - test_fraction), seed)
    return _take(images, labels, rest[keep]), _take(images, labels, rest[val]), _take(images, labels, test)


def subsample(split: Split, n: int, seed: int) -> Split:
    """n images of split, stratified by label and deterministic for seed (n >= len: split itself)."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise LorafitError(f"subsample size must be a positive integer, got {n!r}")
    if n >= len(split):
        return split
    _, chosen = _stratified(split.labels, n, seed)
    return _take(split.images, split.labels, chosen)


# ---------------------------------------------------------------------------------------------
# Loading


def _check_fractions(protocol: str, val_fraction: float, test_fraction: float) -> None:
    if not 0 < val_fraction < 1:
        raise LorafitError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if protocol != "official" and not (0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise LorafitError(
            f"test_fraction must be in (0, 1) with val_fraction + test_fraction < 1, got {val_fraction} + {test_fraction}"
        )


def _download(name: str, root: Path, cache: Path) -> None:
    try:
        if name == "mnist":
            torchvision.datasets.MNIST(root=str(cache), train=True, download=True)
        else:
            torchvision.datasets.EMNIST(root=str(cache), split=name[7:], train=True, download=True)
    except Exception as e:  # no network, HTTP error, bad archive...
        reason = " ".join(f"{type(e).__name__}: {e}".split())[:200]
        missing = ", ".join(f"{b}[.gz]" for p in ("train", "test") for b in _file_names(name, p))
        raise LorafitError(f"{name}: no data files in {root} (need {missing}) and download failed ({reason}); {_FIX}") from e


def load(
    name: str,
    data_dir: str | Path | None = None,
    protocol: str = "auto",
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    download: bool = True,
    cache_dir: str | Path | None = None,
    glyphs_size: int = 6000,
) -> Splits:
    """Load a dataset as train / val / test uint8 tensors.

    protocol "official": official train minus a stratified val_fraction carve; official test.
    "resplit": stratified seeded train / val / test partition of one released split (the test
    split when present). "auto": official when both splits are found, else resplit. Glyphs are
    always "synthetic": glyphs_size generated images split like resplit.
    data_dir defaults to default_data_dir(); cache_dir (default default_cache_dir()) receives
    downloads, decompressed copies and tensor caches. Files are only downloaded (into the cache)
    when the dataset is not found at all and download is True. A folder that cannot be read or
    written gives a LorafitError naming it.
    """
    try:
        return _load(name, data_dir, protocol, seed, val_fraction, test_fraction, download, cache_dir, glyphs_size)
    except OSError as e:
        where = e.filename or (cache_dir or default_cache_dir())
        raise LorafitError(f"{name}: {e.strerror or e} ({where}); pass --data-dir with readable files, "
                           f"or set LORAFIT_CACHE_DIR to a writable folder") from None


def _load(name, data_dir, protocol, seed, val_fraction, test_fraction, download, cache_dir, glyphs_size) -> Splits:
    _check_name(name)
    if protocol not in PROTOCOLS:
        raise LorafitError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    if name.startswith("glyphs-"):
        if protocol not in ("auto", "synthetic"):
            raise LorafitError(f"{name} is synthetic: use protocol auto or synthetic, not {protocol}")
        _check_fractions("synthetic", val_fraction, test_fraction)
        images, labels, classes = glyphs.generate(name[7:], glyphs_size, seed)
        train, val, test = _three_way(images, labels, seed, val_fraction, test_fraction)
        return Splits(name, "synthetic", train, val, test, classes, {})
    if protocol == "synthetic":
        raise LorafitError(f"protocol synthetic is only for glyphs-*; use auto, official or resplit for {name}")

    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    if data_dir is not None and not root.is_dir():
        raise LorafitError(f"data dir {root} does not exist or is not a directory; {_FIX}")
    parts = {p: _find_part(root, name, p) for p in ("train", "test")}
    if not any(parts.values()) and download:
        _download(name, root, cache)
        root = cache
        parts = {p: _find_part(root, name, p) for p in ("train", "test")}
    available = available_protocol(name, root)  # raises when nothing is found
    protocol = available if protocol == "auto" else protocol
    if protocol == "official" and available != "official":
        have = "test" if parts["test"] else "train"
        raise LorafitError(f"{name}: only the {have} split is present in {root}; use protocol resplit (or auto)")
    _check_fractions(protocol, val_fraction, test_fraction)

    checks, files = _Checks(cache), {}
    classes = _classes(name, root, checks, files)

    def read(part: str):
        images, labels = _read_part(name, part, parts[part], cache, checks, files)
        if len(labels) and int(labels.max()) >= len(classes):
            raise LorafitError(f"{parts[part][1]}: label {int(labels.max())} out of range for {len(classes)} classes; {_FIX}")
        return images, labels

    if protocol == "official":
        images, labels = read("train")
        keep, val = _stratified(labels, val_fraction, seed)
        return Splits(
            name, "official", _take(images, labels, keep), _take(images, labels, val), Split(*read("test")), classes, files
        )
    images, labels = read("test" if parts["test"] else "train")
    train, val, test = _three_way(images, labels, seed, val_fraction, test_fraction)
    return Splits(name, "resplit", train, val, test, classes, files)
