"""Datasets as in-memory uint8 tensors split into train / val / test, from a registry.

Each dataset is one `Dataset` entry in DATASETS: its official IDX file names, where they may sit
(flat, or in subfolders such as torchvision's `MNIST/raw/`), their official checksums, its classes
and mapping file, whether the files are stored transposed, and how torchvision downloads it; or,
for the offline synthetic sets, a generator. Adding a dataset is one `register(Dataset(...))`.
Finding, verifying, decompressing and caching the files is lorafit.files' job.

Protocols: "official" (the released train split minus a validation carve; the released test split),
"resplit" (a stratified, seeded train/val/test partition of one released split, for when only one
is present), "synthetic" (generated data, split like resplit). "auto" picks official when both
released splits are found, else resplit.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchvision

from lorafit import files as store
from lorafit import glyphs
from lorafit.errors import LorafitError
from lorafit.splits import (  # noqa: F401  (re-exported: data.Split etc. are the API)
    Split,
    Splits,
    hash_tensor,
    image_digest,
    stratified,
    subsample,
    take,
    three_way,
)

PROTOCOLS = ("auto", "official", "resplit", "synthetic")
_FIX = store.FIX


@dataclass(frozen=True)
class Dataset:
    name: str
    classes: tuple[str, ...]  # class names by label index (a mapping file, when present, wins)
    # released splits ("train", "test") -> (images, labels) base names of the uncompressed IDX files
    parts: dict[str, tuple[str, str]] = field(default_factory=dict)
    folders: tuple[str, ...] = ()  # subfolders of the data dir searched after the dir itself
    raw_folder: str = ""  # where decompressed copies go in the cache (torchvision's layout)
    checksums: dict[str, tuple[str, str]] = field(default_factory=dict)  # .gz name -> (algo, hex)
    mapping: str | None = None  # class mapping file of the release
    transposed: bool = False  # images stored transposed (EMNIST)
    download: Callable[[Path], None] | None = None  # fetch the files into a folder (torchvision)
    generate: Callable[[int, int], tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]] | None = None
    default_sizes: tuple[int, int, int] = (0, 0, 0)  # synthetic: train/val/test images when unset

    @property
    def synthetic(self) -> bool:
        return self.generate is not None

    def file_names(self) -> list[str]:
        return [f"{b}[.gz]" for pair in self.parts.values() for b in pair]


DATASETS: dict[str, Dataset] = {}


def register(dataset: Dataset) -> Dataset:
    if dataset.name in DATASETS:
        raise ValueError(f"dataset {dataset.name!r} is already registered")
    DATASETS[dataset.name] = dataset
    return dataset


def dataset(name: str) -> Dataset:
    if name not in DATASETS:
        raise LorafitError(f"unknown dataset {name!r}; use one of {', '.join(DATASETS)}")
    return DATASETS[name]


# ---------------------------------------------------------------------------------- entries
register(
    Dataset(
        name="mnist",
        classes=tuple("0123456789"),
        parts={
            "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
            "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
        },
        folders=("mnist", "MNIST/raw"),
        raw_folder="MNIST/raw",
        # torchvision's MNIST md5s of the official files
        checksums={
            "train-images-idx3-ubyte.gz": ("md5", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            "train-labels-idx1-ubyte.gz": ("md5", "d53e105ee54ea40749a09fcbcd1e9432"),
            "t10k-images-idx3-ubyte.gz": ("md5", "9fb629c4189551a2d022fa330f9573f3"),
            "t10k-labels-idx1-ubyte.gz": ("md5", "ec29112dd5afa0611ce80d1b7f02629c"),
        },
        download=lambda root: torchvision.datasets.MNIST(root=str(root), train=True, download=True),
    )
)

# sha256 of the NIST EMNIST release's files (those published; the others get an IDX header check)
_EMNIST_SHA256 = {
    "byclass-test-images": "5ec835bd5d5b1a66378a132e727fef20fe994b3cc666899befcca5ac766f50cd",
    "byclass-test-labels": "501e305eeeacb093b162592d80e8a2632040872360fa6d85cfcb2200d91ca92a",
    "byclass-train-images": "9e21987f03a6eb8b870187e785883ddad96947299587908f1a7ec2ca0f4be5f0",
    "byclass-train-labels": "f7ef403d48dc18a89dae0d83d11ee69cecb6e1c12c3a961d03712e495c02a8fa",
    "balanced-train-images": "74295e75e4e9fa2c102147460ee7eb763653d5132d883a84fb88932bfb8d2db4",
    "balanced-test-images": "117fc12b015e37ea98bfb2cbba3f77c3782c056cdbd219b87abfc8661d7135db",
    "letters-train-images": "6288f418a917e007bf5fddb823a2dc7a5c6a35031401b93292a539cb12bd881f",
    "letters-test-images": "50f0e93d75b99b463e9760b8345866f22587fa2c2fba472730a5ba09c693412d",
    "digits-test-images": "20ebe43509264f7639d37c835a3f0b009e90b29e00a099a03101abe1644a3f63",
}
BYCLASS = tuple("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


def _emnist(split: str) -> Dataset:
    kinds = {"images": "idx3", "labels": "idx1"}
    base = {
        (part, kind): f"emnist-{split}-{part}-{kind}-{idx}-ubyte"
        for part in ("train", "test")
        for kind, idx in kinds.items()
    }
    checksums = {
        f"{base[(part, kind)]}.gz": ("sha256", _EMNIST_SHA256[f"{split}-{part}-{kind}"])
        for part in ("train", "test")
        for kind in kinds
        if f"{split}-{part}-{kind}" in _EMNIST_SHA256
    }
    return Dataset(
        name=f"emnist-{split}",
        classes=BYCLASS
        if split == "byclass"
        else tuple(torchvision.datasets.EMNIST.classes_split_dict[split]),
        parts={part: (base[(part, "images")], base[(part, "labels")]) for part in ("train", "test")},
        folders=("emnist", "EMNIST/raw", "gzip", "emnist/gzip"),  # gzip/: how NIST's gzip.zip unpacks
        raw_folder="EMNIST/raw",
        checksums=checksums,
        mapping=f"emnist-{split}-mapping.txt",
        transposed=True,
        download=lambda root: torchvision.datasets.EMNIST(
            root=str(root), split=split, train=True, download=True
        ),
    )


for _split in ("byclass", "bymerge", "balanced", "letters", "digits", "mnist"):
    register(_emnist(_split))

register(
    Dataset(
        name="glyphs-digits",
        classes=tuple(glyphs.TASKS["digits"]),
        default_sizes=(3000, 500, 1000),
        generate=lambda n, seed: glyphs.generate("digits", n, seed),
    )
)
register(
    Dataset(
        name="glyphs-chars",
        classes=tuple(glyphs.TASKS["chars"]),
        default_sizes=(2000, 500, 1000),
        generate=lambda n, seed: glyphs.generate("chars", n, seed),
    )
)


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


def _folders(root: Path, entry: Dataset) -> list[Path]:
    return [root] + [root / f for f in entry.folders]


def _find_part(root: Path, entry: Dataset, part: str) -> tuple[Path, Path] | None:
    images, labels = (store.find(_folders(root, entry), base) for base in entry.parts[part])
    return (images, labels) if images and labels else None


def available_protocol(name: str, data_dir: str | Path | None = None) -> str:
    """ "official" if train and test files are found, "resplit" if only one split is, "synthetic"
    for generated datasets; LorafitError if no files are found."""
    entry = dataset(name)
    if entry.synthetic:
        return "synthetic"
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    found = {part: _find_part(root, entry, part) for part in entry.parts}
    if all(found.values()):
        return "official"
    if any(found.values()):
        return "resplit"
    raise LorafitError(f"{name}: no data files in {root} (need {', '.join(entry.file_names())}); {_FIX}")


def _classes(entry: Dataset, root: Path, checks: store.Checks, files: dict[str, str]) -> tuple[str, ...]:
    """The entry's classes, or its release's mapping file when present (checked against them)."""
    path = store.find(_folders(root, entry), entry.mapping) if entry.mapping else None
    if path is None:
        return entry.classes
    files[path.name] = store.verify(path, checks, entry.checksums)
    names = store.read_mapping(path)
    single = all(len(n) == 1 for n in names if n != "N/A")
    if len(names) != len(entry.classes) or (single and names != entry.classes):
        raise LorafitError(
            f"{path}: does not list the {len(entry.classes)} classes of {entry.name} "
            f"({''.join(entry.classes)[:62]}); delete it or {_FIX}"
        )
    return names


# ---------------------------------------------------------------------------------------------
# Splitting


# ---------------------------------------------------------------------------------------------
# Loading


def _check_fractions(protocol: str, val_fraction: float, test_fraction: float) -> None:
    if not 0 < val_fraction < 1:
        raise LorafitError(f"val_fraction must be in (0, 1), got {val_fraction}")
    if protocol != "official" and not (0 < test_fraction < 1 and val_fraction + test_fraction < 1):
        raise LorafitError(
            "test_fraction must be in (0, 1) with val_fraction + test_fraction < 1, "
            f"got {val_fraction} + {test_fraction}"
        )


def _download(entry: Dataset, root: Path, cache: Path) -> None:
    if entry.download is None:
        raise LorafitError(
            f"{entry.name}: no data files in {root} (need {', '.join(entry.file_names())}); {_FIX}"
        )
    try:
        entry.download(cache)
    except Exception as e:  # no network, HTTP error, bad archive...
        reason = " ".join(f"{type(e).__name__}: {e}".split())[:200]
        raise LorafitError(
            f"{entry.name}: no data files in {root} (need {', '.join(entry.file_names())}) and "
            f"download failed ({reason}); {_FIX}"
        ) from e


def resolve_protocol(
    name: str,
    protocol: str = "auto",
    data_dir: str | Path | None = None,
    download: bool = True,
    cache_dir: str | Path | None = None,
) -> str:
    """The protocol a load of `name` will use, resolved once per run. LorafitError when the files
    are not there (after a torchvision download into the cache when no data dir was named)."""
    entry = dataset(name)
    if protocol not in PROTOCOLS:
        raise LorafitError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}")
    if entry.synthetic:
        if protocol not in ("auto", "synthetic"):
            raise LorafitError(f"{name} is synthetic: use protocol auto or synthetic, not {protocol}")
        return "synthetic"
    if protocol == "synthetic":
        raise LorafitError(
            f"protocol synthetic is only for generated datasets; use auto, official or resplit for {name}"
        )
    root, _ = _dirs(data_dir, cache_dir)
    try:
        available = available_protocol(name, root)
    except LorafitError:
        if data_dir is not None or os.environ.get("LORAFIT_DATA_DIR") or not download:
            raise
        _, cache = _dirs(data_dir, cache_dir)
        _download(entry, root, cache)
        available = available_protocol(name, cache)
    if protocol == "official" and available != "official":
        raise LorafitError(
            f"{name}: only one released split is present in {root}; the official protocol needs "
            f"train and test (use protocol resplit or auto, e.g. --profile local)"
        )
    return available if protocol == "auto" else protocol


def _dirs(data_dir, cache_dir) -> tuple[Path, Path]:
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    return root, cache


def load(
    name: str,
    data_dir: str | Path | None = None,
    protocol: str = "auto",
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    download: bool = True,
    cache_dir: str | Path | None = None,
    sizes: tuple[int, int, int] = (0, 0, 0),
) -> Splits:
    """Load a registered dataset as train / val / test uint8 tensors.

    protocol "official": official train minus a stratified val_fraction carve; official test.
    "resplit": stratified seeded train / val / test partition of one released split (the test
    split when present). "auto": official when both splits are found, else resplit. Generated
    datasets are always "synthetic": sum(sizes) images (the entry's default sizes where 0) split
    in the sizes' proportions. For real data, a non-zero size subsamples that part (stratified,
    seeded). data_dir defaults to default_data_dir(); cache_dir (default default_cache_dir())
    receives downloads, decompressed copies and tensor caches. Files are only downloaded (into the
    cache) when the dataset is not found at all and download is True. A folder that cannot be read
    or written gives a LorafitError naming it.
    """
    try:
        return _load(name, data_dir, protocol, seed, val_fraction, test_fraction, download, cache_dir, sizes)
    except OSError as e:
        where = e.filename or (cache_dir or default_cache_dir())
        raise LorafitError(
            f"{name}: {e.strerror or e} ({where}); pass --data-dir with readable files, "
            f"or set LORAFIT_CACHE_DIR to a writable folder"
        ) from None


def _load(name, data_dir, protocol, seed, val_fraction, test_fraction, download, cache_dir, sizes) -> Splits:
    entry = dataset(name)
    if entry.synthetic:
        resolve_protocol(name, protocol)
        n_train, n_val, n_test = (n or d for n, d in zip(sizes, entry.default_sizes))
        total = n_train + n_val + n_test
        val_fraction, test_fraction = n_val / total, n_test / total
        _check_fractions("synthetic", val_fraction, test_fraction)
        images, labels, classes = entry.generate(total, seed)
        train, val, test = three_way(images, labels, seed, val_fraction, test_fraction)
        return Splits(name, "synthetic", train, val, test, classes, {})

    root, cache = _dirs(data_dir, cache_dir)
    if data_dir is not None and not root.is_dir():
        raise LorafitError(f"data dir {root} does not exist or is not a directory; {_FIX}")
    if protocol not in PROTOCOLS or protocol == "synthetic":
        resolve_protocol(name, protocol, root, download=False)  # raises the one-line error
    parts = {p: _find_part(root, entry, p) for p in entry.parts}
    if not any(parts.values()) and download:
        _download(entry, root, cache)
        root = cache
        parts = {p: _find_part(root, entry, p) for p in entry.parts}
    available = available_protocol(name, root)  # raises when nothing is found
    protocol = available if protocol == "auto" else protocol
    if protocol == "official" and available != "official":
        have = "test" if parts["test"] else "train"
        raise LorafitError(
            f"{name}: only the {have} split is present in {root}; use protocol resplit (or auto)"
        )
    _check_fractions(protocol, val_fraction, test_fraction)

    checks, files = store.Checks(cache), {}
    classes = _classes(entry, root, checks, files)

    def read(part: str):
        images, labels = store.read_pair(
            f"{name}-{part}",
            parts[part],
            cache,
            cache / entry.raw_folder,
            checks,
            entry.checksums,
            files,
            entry.transposed,
        )
        if len(labels) and int(labels.max()) >= len(classes):
            raise LorafitError(
                f"{parts[part][1]}: label {int(labels.max())} out of range for {len(classes)} classes; {_FIX}"
            )
        return images, labels

    if protocol == "official":
        images, labels = read("train")
        keep, val = stratified(labels, val_fraction, seed)
        train, val, test = take(images, labels, keep), take(images, labels, val), Split(*read("test"))
    else:
        images, labels = read("test" if parts["test"] else "train")
        train, val, test = three_way(images, labels, seed, val_fraction, test_fraction)
    train, val, test = (subsample(part, n, seed) if n else part for part, n in zip((train, val, test), sizes))
    return Splits(name, protocol, train, val, test, classes, files)
