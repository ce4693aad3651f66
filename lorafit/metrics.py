"""Classification metrics, the seed post's analysis as data (sklearn underneath)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    classification_report,
    confusion_matrix,
    f1_score,
)


def _np(a) -> np.ndarray:
    return a.numpy() if hasattr(a, "numpy") else np.asarray(a)


def summary(y_true, y_pred) -> dict[str, float]:
    """accuracy, balanced accuracy and macro-F1 (over the classes present in y_true)."""
    y_true, y_pred = _np(y_true), _np(y_pred)
    return {
        "acc": float(accuracy_score(y_true, y_pred)),
        "balanced_acc": float(balanced_accuracy_score(y_true, y_pred)),
        "macro_f1": float(
            f1_score(y_true, y_pred, average="macro", labels=np.unique(y_true), zero_division=0)
        ),
    }


def per_class_accuracy(y_true, y_pred, num_classes: int) -> list[float]:
    """Recall of each class (NaN for a class absent from y_true)."""
    cm = confusion(y_true, y_pred, num_classes)
    support = cm.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return [float(x) for x in np.where(support > 0, np.diag(cm) / support, np.nan)]


def confusion(y_true, y_pred, num_classes: int) -> np.ndarray:
    return confusion_matrix(_np(y_true), _np(y_pred), labels=list(range(num_classes)))


def report(y_true, y_pred, classes: tuple[str, ...] | list[str]) -> str:
    """sklearn's classification_report with class names."""
    return classification_report(
        _np(y_true),
        _np(y_pred),
        labels=list(range(len(classes))),
        target_names=list(classes),
        digits=4,
        zero_division=0,
    )


def top_confusions(y_true, y_pred, classes, k: int = 15) -> list[dict]:
    """The k most frequent (true -> predicted) mistakes, with count and rate within the true class."""
    cm = confusion(y_true, y_pred, len(classes)).astype(np.int64)
    support = cm.sum(1)
    np.fill_diagonal(cm, 0)
    order = np.argsort(-cm, axis=None, kind="stable")[:k]
    pairs = []
    for flat in order:
        t, p = divmod(int(flat), len(classes))
        if cm[t, p] == 0:
            break
        pairs.append(
            {
                "true": classes[t],
                "pred": classes[p],
                "count": int(cm[t, p]),
                "rate": float(cm[t, p] / support[t]),
            }
        )
    return pairs


# EMNIST byclass: digits, then upper case, then lower case (62 classes).
BYCLASS_CLASSES = tuple("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
# The 15 letters whose upper and lower case EMNIST bymerge merges into one class (Cohen et al., 2017).
BYMERGE_PAIRS = tuple((c, c.upper()) for c in "cijklmopsuvwxyz")


def is_byclass(classes) -> bool:
    """True when the classes are EMNIST byclass's 62 characters, in byclass order."""
    return tuple(str(c) for c in classes) == BYCLASS_CLASSES


def merged_accuracy(confusion, classes, merge=BYMERGE_PAIRS) -> float:
    """Accuracy when each pair (a, b) in `merge` counts as one class: a prediction of b for a true a
    (or the reverse) is correct. From a confusion matrix (rows = true class, columns = predicted);
    pairs naming a class not in `classes` are ignored. NaN for an empty matrix."""
    cm = np.asarray(confusion, dtype=np.int64)
    names = [str(c) for c in classes]
    if cm.shape != (len(names), len(names)):
        raise ValueError(f"confusion matrix of shape {cm.shape} for {len(names)} classes")
    group = np.arange(len(names))
    index = {c: i for i, c in enumerate(names)}
    for a, b in merge:
        if a in index and b in index:
            group[index[a]] = group[index[b]]
    total = cm.sum()
    if total == 0:
        return float("nan")
    return float(cm[group[:, None] == group[None, :]].sum() / total)
