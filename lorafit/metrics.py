"""Classification metrics, the seed post's analysis as data (sklearn underneath)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, classification_report,
                             confusion_matrix, f1_score)


def _np(a) -> np.ndarray:
    return a.numpy() if hasattr(a, "numpy") else np.asarray(a)


def summary(y_true, y_pred) -> dict[str, float]:
    """accuracy, balanced accuracy and macro-F1 (over the classes present in y_true)."""
    y_true, y_pred = _np(y_true), _np(y_pred)
    return {
        "acc": float(accuracy_score(y_true, y_pred)),
        "balanced_acc": float(balanced_accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", labels=np.unique(y_true),
                                   zero_division=0)),
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
    return classification_report(_np(y_true), _np(y_pred), labels=list(range(len(classes))),
                                 target_names=list(classes), digits=4, zero_division=0)


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
        pairs.append({"true": classes[t], "pred": classes[p], "count": int(cm[t, p]),
                      "rate": float(cm[t, p] / support[t])})
    return pairs
