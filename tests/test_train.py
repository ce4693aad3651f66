"""The trainer: learns, stops on divergence, is deterministic, and the prefix cache changes nothing."""

import gc
import math
import os
import time

import pytest
import torch

from lorafit import adapters, freeze, glyphs
from lorafit.adapters import AdapterSettings
from lorafit.config import RunConfig
from lorafit.data import Split
from lorafit.features import FeatureCache, frozen_prefix_length
from lorafit.model import STAGES, SeedCNN, replace_head
from lorafit.train import PeakMemory, accuracy, fit, predict


@pytest.fixture(scope="module")
def digits():
    x, y, _ = glyphs.generate("digits", 3000, seed=0)
    return Split(x[:2400], y[:2400]), Split(x[2400:], y[2400:])


def _cfg(**settings) -> RunConfig:
    """The RunConfig fit reads its training settings from."""
    return RunConfig(name="test", method="full", **settings)


def _model(seed=0, classes=10):
    torch.manual_seed(seed)
    return SeedCNN(classes)


def test_learns_glyph_digits_well_above_chance(digits):
    train, val = digits
    model = _model()
    result = fit(model, train, val, _cfg(epochs=2, lr=2e-3, seed=0))
    assert result.status == "complete"
    assert result.best_val_acc > 0.6  # chance is 0.1
    assert accuracy(model, val) == pytest.approx(result.best_val_acc, abs=1e-6)
    assert len(result.curve) == 2 and result.images_per_s > 0
    assert result.curve[-1]["train_loss"] < result.curve[0]["train_loss"]


def test_divergence_is_caught_not_raised(digits):
    train, val = digits
    model = _model()
    with torch.no_grad():
        model.fc.weight.fill_(float("nan"))
    result = fit(model, train, val, _cfg(epochs=2, lr=1e-3, seed=0))
    assert result.status == "diverged"
    assert "non-finite loss" in result.error and "epoch 1" in result.error


@pytest.mark.parametrize("bf16", [False, True])
def test_cpu_determinism(digits, bf16):
    train, val = digits
    if bf16:  # bf16 is emulated on most CPUs (slow); determinism needs few batches
        train, val = Split(train.images[:600], train.labels[:600]), Split(val.images[:300], val.labels[:300])
    runs = []
    for _ in range(2):
        model = _model(seed=3)
        result = fit(model, train, val, _cfg(epochs=1, lr=2e-3, seed=3), bf16=bf16, device="cpu")
        runs.append(
            (result.curve[0]["train_loss"], result.best_val_acc, predict(model, val.images, bf16=bf16))
        )
    assert runs[0][0] == runs[1][0] and runs[0][1] == runs[1][1]
    assert torch.equal(runs[0][2], runs[1][2])


def test_early_stopping_restores_best_epoch(digits):
    """After epoch 2 the validation labels are scrambled in place (fit reads them where they are on
    the CPU), so epochs 3 and 4 score near chance: with patience 2 training must stop after epoch
    4 and leave the model exactly as it was at the end of epoch 2."""
    train, val = digits
    val = type(val)(val.images, val.labels.clone())
    original = val.labels.clone()
    model = _model()
    snapshot = {}

    def on_epoch(epoch: int, val_acc: float) -> None:
        if epoch == 2:
            snapshot.update({k: v.clone() for k, v in model.state_dict().items()})
            val.labels.copy_((val.labels + 1) % 10)

    result = fit(model, train, val, _cfg(epochs=8, lr=2e-3, seed=0, patience=2), on_epoch=on_epoch)
    assert [c["epoch"] for c in result.curve] == [1, 2, 3, 4]
    assert result.best_epoch == 2 and result.best_val_acc == result.curve[1]["val_acc"]
    assert max(c["val_acc"] for c in result.curve[2:]) < result.curve[1]["val_acc"]
    for key, value in model.state_dict().items():
        assert torch.equal(value.cpu(), snapshot[key].cpu()), key
    assert accuracy(model, type(val)(val.images, original)) == pytest.approx(
        result.curve[1]["val_acc"], abs=1e-6
    )


@pytest.mark.parametrize(
    "placement,policy,cut",
    [
        ("proj", "lora", "proj"),
        ("none", "head", "fc"),
        ("post-proj", "conv2", "conv2"),
        ("conv3", "lora", "conv3"),
    ],
)
def test_prefix_cache_matches_uncached(digits, placement, policy, cut):
    train, val = digits
    backbone = _model(seed=1)
    fit(backbone, train, val, _cfg(epochs=1, lr=2e-3, seed=1))
    outs = []
    for cache in (None, FeatureCache(256)):
        torch.manual_seed(5)
        model = replace_head(SeedCNN(10), 10)
        model.load_state_dict(backbone.state_dict())
        method = {"none": "head", "post-proj": "residual"}.get(placement, "lora")
        adapters.inject(model, method, placement, AdapterSettings(rank=4, alpha=4))
        freeze.apply(model, policy)
        assert STAGES[frozen_prefix_length(model)] == cut
        result = fit(model, train, val, _cfg(epochs=2, lr=3e-3, seed=5), cache=cache, bf16=False)
        outs.append((result, predict(model, val.images, bf16=False, cache=cache)))
    (plain, p_plain), (cached, p_cached) = outs
    assert plain.cached_stages == () and cached.cached_stages == STAGES[: STAGES.index(cut)]
    assert abs(plain.best_val_acc - cached.best_val_acc) <= 0.005
    for a, b in zip(plain.curve, cached.curve):
        assert math.isclose(a["train_loss"], b["train_loss"], rel_tol=1e-3)
    assert (p_plain != p_cached).float().mean().item() <= 0.005


def test_cache_key_changes_with_backbone_and_data(digits):
    train, val = digits
    cache = FeatureCache(256)
    model = _model()
    freeze.apply(model, "head")
    fit(model, train, val, _cfg(epochs=1, lr=1e-3, seed=0), cache=cache)
    misses = cache.misses
    fit(model, train, val, _cfg(epochs=1, lr=1e-3, seed=0), cache=cache)  # same backbone and data: hits
    assert cache.misses == misses and cache.hits >= 2
    with torch.no_grad():
        model.conv1.conv.weight.add_(0.01)  # a changed backbone must not reuse stale features
    fit(model, train, val, _cfg(epochs=1, lr=1e-3, seed=0), cache=cache)
    assert cache.misses == misses + 2
    changed = Split(train.images.flip(-1), train.labels)  # changed data, same shape
    fit(model, changed, val, _cfg(epochs=1, lr=1e-3, seed=0), cache=cache)
    assert cache.misses == misses + 3


def test_budget_zero_falls_back_to_plain_path(digits):
    train, val = digits
    model = _model()
    freeze.apply(model, "head")
    result = fit(model, train, val, _cfg(epochs=1, lr=1e-3, seed=0), cache=FeatureCache(0))
    assert result.cached_stages == ()


def test_large_features_go_to_disk_and_are_reused(digits, tmp_path):
    train, val = digits
    model = _model()
    freeze.apply(model, "head")
    plain = fit(model, train, val, _cfg(epochs=1, lr=1e-3, seed=0), bf16=False)
    disk = FeatureCache(0.01, tmp_path / "features")  # 10 KB of memory: everything spills to disk
    model = _model()
    freeze.apply(model, "head")
    spilled = fit(model, train, val, _cfg(epochs=1, lr=1e-3, seed=0), bf16=False, cache=disk)
    assert spilled.cached_stages and disk.misses == 2
    assert abs(spilled.best_val_acc - plain.best_val_acc) <= 0.005
    files = sorted(p.name for p in (tmp_path / "features").iterdir())
    assert len([f for f in files if f.endswith(".bin")]) == 2 and not any(f.startswith(".") for f in files)
    again = FeatureCache(0.01, tmp_path / "features")  # another worker / a resumed run
    model = _model()
    freeze.apply(model, "head")
    fit(model, train, val, _cfg(epochs=1, lr=1e-3, seed=0), bf16=False, cache=again)
    assert again.hits == 2 and again.misses == 0


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads /proc (Linux)")
def test_peak_memory_sees_a_large_allocation_on_cpu():
    gc.collect()  # earlier tests' garbage is not freed inside the measured block
    with PeakMemory(torch.device("cpu")) as peak:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        time.sleep(0.5)  # the sampler reads /proc every 5 ms; a loaded machine may delay its thread
        del block
    assert peak.mb >= 48
