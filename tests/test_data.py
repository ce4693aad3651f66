import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from idxfiles import balanced, write_split

from lorafit import data
from lorafit.errors import LorafitError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".")]


def listing(folder: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*")}


# ------------------------------------------------------------------------------- layouts
def test_mnist_raw_uncompressed_layout(tmp_path):
    raw = tmp_path / "d" / "MNIST" / "raw"
    y_train, y_test = balanced(10, 12), balanced(10, 5, seed=1)
    write_split(raw, "train-images-idx3-ubyte", "train-labels-idx1-ubyte", y_train)
    test_images = write_split(raw, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", y_test)

    assert data.available_protocol("mnist", tmp_path / "d") == "official"
    s = data.load("mnist", data_dir=tmp_path / "d", cache_dir=tmp_path / "cache", download=False)
    assert s.name == "mnist" and s.protocol == "official"
    assert s.classes == tuple("0123456789") and s.num_classes == 10
    assert len(s.train) + len(s.val) == 120 and len(s.val) == 12 and len(s.test) == 50
    for part in (s.train, s.val, s.test):
        assert part.images.dtype == torch.uint8 and part.images.shape[1:] == (1, 28, 28)
        assert part.labels.dtype == torch.int64 and part.labels.shape == (len(part),)
    # Official test comes back as written, in order; MNIST is not transposed.
    assert torch.equal(s.test.images[:, 0], torch.from_numpy(test_images))
    assert torch.equal(s.test.labels, torch.from_numpy(y_test).long())
    digest = hashlib.sha256((raw / "t10k-images-idx3-ubyte").read_bytes()).hexdigest()
    assert s.files["t10k-images-idx3-ubyte"] == digest and len(s.files) == 4


def test_emnist_flat_gz_layout_reads_through_cache(tmp_path):
    src = tmp_path / "d"
    write_split(
        src,
        "emnist-mnist-train-images-idx3-ubyte",
        "emnist-mnist-train-labels-idx1-ubyte",
        balanced(10, 10),
        gz=True,
        transpose=True,
    )
    write_split(
        src,
        "emnist-mnist-test-images-idx3-ubyte",
        "emnist-mnist-test-labels-idx1-ubyte",
        balanced(10, 4),
        gz=True,
        transpose=True,
    )
    before = listing(src)

    s = data.load("emnist-mnist", data_dir=src, cache_dir=tmp_path / "cache", download=False)
    assert s.protocol == "official" and len(s.test) == 40 and len(s.train) + len(s.val) == 100
    assert s.classes == tuple(torchvision.datasets.EMNIST.classes_split_dict["mnist"])
    assert set(s.files) == {
        f"emnist-mnist-{p}-{k}-ubyte.gz" for p in ("train", "test") for k in ("images-idx3", "labels-idx1")
    }
    # Decompressed into torchvision's layout in the cache; the data dir is untouched.
    assert (tmp_path / "cache" / "EMNIST" / "raw" / "emnist-mnist-test-images-idx3-ubyte").is_file()
    assert listing(src) == before
    assert list((tmp_path / "cache" / "tensors").glob("emnist-mnist-test-*.pt"))

    again = data.load("emnist-mnist", data_dir=src, cache_dir=tmp_path / "cache", download=False)
    for a, b in ((s.train, again.train), (s.val, again.val), (s.test, again.test)):
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert again.files == s.files and not temp_files(tmp_path / "cache")


def test_emnist_subdir_is_transposed_upright_with_mapping(tmp_path):
    src = tmp_path / "d" / "emnist"
    labels = balanced(47, 3)
    upright = write_split(
        src,
        "emnist-balanced-test-images-idx3-ubyte",
        "emnist-balanced-test-labels-idx1-ubyte",
        labels,
        transpose=True,
    )
    names = torchvision.datasets.EMNIST.classes_split_dict["balanced"]
    (src / "emnist-balanced-mapping.txt").write_text("".join(f"{i} {ord(c)}\n" for i, c in enumerate(names)))

    assert data.available_protocol("emnist-balanced", tmp_path / "d") == "resplit"
    s = data.load("emnist-balanced", data_dir=tmp_path / "d", cache_dir=tmp_path / "cache", download=False)
    assert s.protocol == "resplit" and s.classes == tuple(names) and s.num_classes == 47
    assert "emnist-balanced-mapping.txt" in s.files
    images = torch.cat([s.train.images, s.val.images, s.test.images])[:, 0]
    assert (images[:, 0:3, :] == 255).all()  # the bar is on top again...
    assert not (images[:, 5, :] == 255).any()  # ...and not down the left side
    # Every image is still in one piece: index pixels read back what was written upright.
    index = images[:, 27, 0].long() + 256 * images[:, 27, 1].long()
    assert torch.equal(images, torch.from_numpy(upright)[index])


def test_emnist_letters_mapping_keeps_label_positions(tmp_path):
    src = tmp_path / "d"
    labels = balanced(26, 4) + 1  # letters labels are 1..26
    write_split(src, "emnist-letters-test-images-idx3-ubyte", "emnist-letters-test-labels-idx1-ubyte", labels)
    (src / "emnist-letters-mapping.txt").write_text("".join(f"{i} {64 + i} {96 + i}\n" for i in range(1, 27)))
    s = data.load("emnist-letters", data_dir=src, cache_dir=tmp_path / "cache", download=False)
    assert s.classes[0] == "N/A" and s.classes[1] == "Aa" and s.classes[26] == "Zz" and s.num_classes == 27


# ------------------------------------------------------------------------------- errors
def test_checksum_mismatch_names_the_file_and_writes_nothing(tmp_path):
    src = tmp_path / "d"
    write_split(src, "train-images-idx3-ubyte", "train-labels-idx1-ubyte", balanced(10, 3), gz=True)
    write_split(src, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", balanced(10, 3), gz=True)
    cache = tmp_path / "cache"
    with pytest.raises(LorafitError, match=r"train-images-idx3-ubyte\.gz: checksum mismatch") as err:
        data.load("mnist", data_dir=src, cache_dir=cache, download=False)
    assert "\n" not in str(err.value) and "--data-dir" in str(err.value)
    assert not temp_files(cache)
    assert not (cache / "MNIST").exists() and not (cache / "tensors").exists()


def test_truncated_files_are_reported(tmp_path):
    raw = tmp_path / "d" / "MNIST" / "raw"
    write_split(raw, "train-images-idx3-ubyte", "train-labels-idx1-ubyte", balanced(10, 3))
    write_split(raw, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", balanced(10, 3))
    path = raw / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(LorafitError, match=r"train-images-idx3-ubyte: size .* does not match its IDX header"):
        data.load("mnist", data_dir=tmp_path / "d", cache_dir=tmp_path / "cache", download=False)

    # A truncated .gz with no official checksum fails while decompressing; no partial copy is kept.
    src = tmp_path / "e"
    write_split(
        src,
        "emnist-digits-train-images-idx3-ubyte",
        "emnist-digits-train-labels-idx1-ubyte",
        balanced(10, 3),
        gz=True,
    )
    gz = src / "emnist-digits-train-labels-idx1-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:-12])
    cache = tmp_path / "cache2"
    with pytest.raises(LorafitError, match=r"emnist-digits-train-labels-idx1-ubyte\.gz: cannot decompress"):
        data.load("emnist-digits", data_dir=src, cache_dir=cache, download=False)
    assert not temp_files(cache)
    assert not (cache / "EMNIST" / "raw" / "emnist-digits-train-labels-idx1-ubyte").exists()


def test_not_an_idx_file(tmp_path):
    src = tmp_path / "d"
    write_split(
        src, "emnist-mnist-test-images-idx3-ubyte", "emnist-mnist-test-labels-idx1-ubyte", balanced(10, 3)
    )
    (src / "emnist-mnist-test-labels-idx1-ubyte").write_bytes(b"<html>not found</html>")
    with pytest.raises(LorafitError, match=r"emnist-mnist-test-labels-idx1-ubyte: not an IDX file"):
        data.load("emnist-mnist", data_dir=src, cache_dir=tmp_path / "cache", download=False)


def test_missing_data_and_bad_arguments(tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(LorafitError, match="does not exist"):
        data.load("mnist", data_dir=tmp_path / "nowhere", cache_dir=cache)
    (tmp_path / "empty").mkdir()
    with pytest.raises(LorafitError, match=r"train-images-idx3-ubyte.*--data-dir DIR.*--profile smoke"):
        data.load("mnist", data_dir=tmp_path / "empty", cache_dir=cache, download=False)
    with pytest.raises(LorafitError, match="no data files"):
        data.available_protocol("emnist-byclass", tmp_path / "empty")
    with pytest.raises(LorafitError, match="unknown dataset"):
        data.load("cifar10", cache_dir=cache)
    with pytest.raises(LorafitError, match="unknown protocol"):
        data.load("glyphs-digits", protocol="best", cache_dir=cache)

    src = tmp_path / "d"
    write_split(
        src, "emnist-mnist-test-images-idx3-ubyte", "emnist-mnist-test-labels-idx1-ubyte", balanced(10, 3)
    )
    with pytest.raises(LorafitError, match="test_fraction"):
        data.load("emnist-mnist", data_dir=src, val_fraction=0.5, test_fraction=0.5, cache_dir=cache)
    with pytest.raises(LorafitError, match="only the test split.*protocol resplit"):
        data.load("emnist-mnist", data_dir=src, protocol="official", cache_dir=cache)
    assert not temp_files(cache)


def test_failed_download_is_a_lorafit_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\n no network")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        LorafitError, match=r"download failed \(RuntimeError: .* no network\).*--data-dir"
    ) as err:
        data.load("mnist", data_dir=tmp_path / "empty", cache_dir=tmp_path / "cache")
    assert "\n" not in str(err.value)


def test_default_dirs_honour_env_and_stay_apart(monkeypatch, tmp_path):
    monkeypatch.setenv("LORAFIT_DATA_DIR", str(tmp_path / "x"))
    monkeypatch.setenv("LORAFIT_CACHE_DIR", str(tmp_path / "c"))
    assert data.default_data_dir() == tmp_path / "x" and data.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("LORAFIT_DATA_DIR")
    assert data.default_data_dir() == tmp_path / "c"  # downloads land in the cache
    monkeypatch.delenv("LORAFIT_CACHE_DIR")
    assert data.default_cache_dir() == Path.home() / ".cache" / "lorafit" / "data"


def test_data_dir_from_env_is_only_read(monkeypatch, tmp_path):
    """$LORAFIT_DATA_DIR names the user's files; caches go elsewhere."""
    src = tmp_path / "mine"
    write_split(src, "train-images-idx3-ubyte", "train-labels-idx1-ubyte", balanced(10, 12))
    write_split(src, "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", balanced(10, 5, seed=1))
    before = listing(src)
    monkeypatch.setenv("LORAFIT_DATA_DIR", str(src))
    monkeypatch.setenv("LORAFIT_CACHE_DIR", str(tmp_path / "cache"))
    splits = data.load("mnist", protocol="official", val_fraction=0.2)
    assert len(splits.test) == 50
    assert listing(src) == before and (tmp_path / "cache").is_dir()


# ------------------------------------------------------------------------------- splitting
@pytest.fixture(scope="module")
def imbalanced_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("imbalanced")
    counts = np.arange(10) * 10 + 40  # 40, 50, ..., 130 images per class
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(10), counts))
    write_split(
        root / "emnist",
        "emnist-digits-test-images-idx3-ubyte",
        "emnist-digits-test-labels-idx1-ubyte",
        labels,
        transpose=True,
    )
    return root


def test_resplit_is_stratified_complete_and_seeded(imbalanced_dir, tmp_path):
    def get(seed):
        return data.load(
            "emnist-digits", data_dir=imbalanced_dir, seed=seed, cache_dir=tmp_path, download=False
        )

    a, b, c = get(0), get(0), get(1)
    assert a.protocol == "resplit"
    total = torch.bincount(torch.cat([a.train.labels, a.val.labels, a.test.labels]), minlength=10)
    assert total.tolist() == list(range(40, 140, 10))
    for part, fraction in ((a.train, 0.7), (a.val, 0.1), (a.test, 0.2)):
        counts = torch.bincount(part.labels, minlength=10).float()
        assert (counts - fraction * total).abs().max() <= 2
    # A partition: every image exactly once.
    images = torch.cat([a.train.images, a.val.images, a.test.images])[:, 0]
    index = images[:, 27, 0].long() + 256 * images[:, 27, 1].long()
    assert sorted(index.tolist()) == list(range(int(total.sum())))

    for x, y in ((a.train, b.train), (a.val, b.val), (a.test, b.test)):
        assert torch.equal(x.images, y.images) and torch.equal(x.labels, y.labels)
    assert not torch.equal(a.test.images, c.test.images)


def test_subsample_stratified_and_deterministic(imbalanced_dir, tmp_path):
    s = data.load("emnist-digits", data_dir=imbalanced_dir, cache_dir=tmp_path, download=False)
    pool = s.train
    sub = data.subsample(pool, 170, seed=0)
    assert len(sub) == 170 and sub.images.shape == (170, 1, 28, 28)
    expected = torch.bincount(pool.labels, minlength=10).float() * 170 / len(pool)
    assert (torch.bincount(sub.labels, minlength=10) - expected).abs().max() <= 1
    assert torch.equal(sub.images, data.subsample(pool, 170, seed=0).images)
    assert not torch.equal(sub.images, data.subsample(pool, 170, seed=1).images)
    assert data.subsample(pool, len(pool), seed=0) is pool
    assert data.subsample(pool, 10**9, seed=0) is pool
    assert len(data.subsample(pool, 5, seed=0)) == 5  # fewer than the classes: still works
    with pytest.raises(LorafitError):
        data.subsample(pool, 0, seed=0)


def test_glyphs_are_synthetic_splits():
    a = data.load("glyphs-chars", sizes=(434, 62, 124), seed=2)
    assert a.protocol == "synthetic" and a.files == {} and a.num_classes == 62
    assert (len(a.train), len(a.val), len(a.test)) == (434, 62, 124)
    assert torch.equal(torch.bincount(a.test.labels, minlength=62), torch.full((62,), 2))
    b = data.load("glyphs-chars", sizes=(434, 62, 124), seed=2, protocol="synthetic")
    assert torch.equal(a.train.images, b.train.images)
    assert data.available_protocol("glyphs-digits", None) == "synthetic"
    with pytest.raises(LorafitError, match="synthetic"):
        data.load("glyphs-digits", protocol="official")


# ------------------------------------------------------------------------------- real data
needs_shared = pytest.mark.skipif(
    not all((SHARED / d).is_dir() for d in ("mnist", "emnist")),
    reason=f"no real MNIST and EMNIST at {SHARED}",
)


@pytest.fixture(scope="session")
def real(tmp_path_factory):
    cache = tmp_path_factory.mktemp("real-cache")
    return {
        "emnist": data.load("emnist-byclass", data_dir=SHARED, cache_dir=cache),
        "mnist": data.load("mnist", data_dir=SHARED, cache_dir=cache),
    }


@needs_shared
def test_real_emnist_byclass_test_split(real):
    s = real["emnist"]
    assert s.protocol == "resplit" and s.num_classes == 62 and s.classes == data.BYCLASS
    assert len(s.train) + len(s.val) + len(s.test) == 116_323
    assert s.files["emnist-byclass-test-images-idx3-ubyte.gz"] == (
        "5ec835bd5d5b1a66378a132e727fef20fe994b3cc666899befcca5ac766f50cd"
    )
    counts = torch.bincount(torch.cat([s.train.labels, s.val.labels, s.test.labels]), minlength=62)
    assert counts.min() == 317 and counts.max() == 6330  # as listed in SOURCES.md


@needs_shared
def test_real_mnist_official(real):
    s = real["mnist"]
    assert s.protocol == "official" and s.classes == tuple("0123456789")
    assert len(s.train) + len(s.val) == 60_000 and len(s.test) == 10_000
    assert (
        s.files["train-images-idx3-ubyte.gz"]
        == "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"
    )
    assert len(s.files) == 4 and all(len(v) == 64 for v in s.files.values())
    assert abs(torch.cat([s.train.images, s.val.images]).float().mean().item() - 33.318) < 0.01


@needs_shared
def test_real_emnist_is_upright_like_mnist(real):
    def digit_means(s):
        x = torch.cat([s.train.images, s.val.images, s.test.images]).float()
        y = torch.cat([s.train.labels, s.val.labels, s.test.labels])
        return torch.stack([x[y == k].mean(0) for k in range(10)])

    # EMNIST characters fill the frame (~24 px) where MNIST keeps digits in a 20x20 box: match the scale.
    emnist = F.pad(
        F.interpolate(digit_means(real["emnist"]), size=(24, 24), mode="bilinear", antialias=True), (2,) * 4
    )[:, 0]
    mnist = digit_means(real["mnist"])[:, 0]

    def r(a, b):
        return torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].item()

    upright = [r(emnist[k], mnist[k]) for k in range(10)]
    transposed = [r(emnist[k].T, mnist[k]) for k in range(10)]
    assert min(upright) > 0.5
    assert all(u > t for u, t in zip(upright, transposed))
    assert np.mean(upright) - np.mean(transposed) > 0.2
