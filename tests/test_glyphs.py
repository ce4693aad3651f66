import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from lorafit import glyphs
from lorafit.errors import LorafitError


def test_same_seed_same_bytes_other_seed_differs():
    a_img, a_lbl, _ = glyphs.generate("digits", 300, seed=0)
    b_img, b_lbl, _ = glyphs.generate("digits", 300, seed=0)
    c_img, c_lbl, _ = glyphs.generate("digits", 300, seed=1)
    assert torch.equal(a_img, b_img) and torch.equal(a_lbl, b_lbl)
    assert not torch.equal(a_img, c_img)
    assert not torch.equal(a_lbl, c_lbl)


@pytest.mark.parametrize("task, n, classes", [("digits", 100, 10), ("chars", 130, 62)])
def test_shapes_dtypes_and_balanced_labels(task, n, classes):
    images, labels, names = glyphs.generate(task, n, seed=3)
    assert images.shape == (n, 1, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (n,) and labels.dtype == torch.int64
    assert names == tuple(glyphs.CHARS[:classes]) and len(names) == classes
    counts = torch.bincount(labels, minlength=classes)
    assert counts.max() - counts.min() <= 1  # round-robin, then shuffled
    assert not torch.equal(labels, torch.arange(n) % classes)


def test_bad_arguments_raise():
    with pytest.raises(LorafitError, match="unknown glyphs task"):
        glyphs.generate("kanji", 10, seed=0)
    for n in (0, -5, 2.5):
        with pytest.raises(LorafitError, match="positive integer"):
            glyphs.generate("digits", n, seed=0)


def test_mnist_like_values_and_centring():
    images, _, _ = glyphs.generate("chars", 500, seed=0)
    x = images.float()
    assert (images == 0).float().mean() > 0.5  # black background
    assert (x.amax(dim=(1, 2, 3)) >= 200).all()  # every glyph has bright strokes
    assert 10 < x.mean() < 100  # MNIST's mean pixel is 33
    # Centre of mass near the middle, as MNIST centres digits.
    grid = torch.arange(28.0)
    mass = x.sum(dim=(1, 2, 3))
    cy = (x.sum(dim=(1, 3)) * grid).sum(1) / mass
    cx = (x.sum(dim=(1, 2)) * grid).sum(1) / mass
    assert (cy - 13.5).abs().mean() < 2 and (cx - 13.5).abs().mean() < 2


def test_digits_learnable_but_not_trivial():
    x, y, _ = glyphs.generate("digits", 2000, seed=0)
    xt, yt, _ = glyphs.generate("digits", 500, seed=1)
    knn = KNeighborsClassifier(3).fit(x.flatten(1).numpy() / 255, y.numpy())
    acc = knn.score(xt.flatten(1).numpy() / 255, yt.numpy())
    assert 0.5 < acc < 0.99  # chance is 0.1; the distortions keep it from being trivial
