"""Pure metric functions of label arrays (``y_true, y_pred -> value``), built on scikit-learn."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from sklearn.metrics import accuracy_score, cohen_kappa_score, confusion_matrix, f1_score, recall_score

from retinopathy import GRADES

ArrayLike = Sequence[int] | np.ndarray


def accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Fraction of exact grade matches."""
    return float(accuracy_score(y_true, y_pred))


def quadratic_weighted_kappa(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Cohen's kappa with quadratic weights over grades 0..4: the field's metric for an ordinal grade.

    Predicting one grade for everything scores 0, however high its accuracy. When the kappa is
    undefined (both arrays a single identical grade), 0 is returned: no agreement beyond chance
    can be shown.
    """
    if len(set(np.asarray(y_true).tolist()) | set(np.asarray(y_pred).tolist())) < 2:
        return 0.0
    return float(cohen_kappa_score(y_true, y_pred, labels=list(GRADES), weights="quadratic"))


def macro_f1(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Unweighted mean of the per-grade F1 scores (grades absent from both count as 0)."""
    return float(f1_score(y_true, y_pred, labels=list(GRADES), average="macro", zero_division=0))


def per_class_recall(y_true: ArrayLike, y_pred: ArrayLike) -> list[float]:
    """Recall (sensitivity) of each grade 0..4."""
    return [float(r) for r in recall_score(y_true, y_pred, labels=list(GRADES), average=None, zero_division=0)]


def confusion(y_true: ArrayLike, y_pred: ArrayLike, *, normalize: bool = False) -> np.ndarray:
    """5x5 confusion matrix, rows = true grade, columns = predicted; ``normalize`` divides each row by its total."""
    matrix = confusion_matrix(y_true, y_pred, labels=list(GRADES))
    if not normalize:
        return matrix
    totals = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, totals, out=np.zeros(matrix.shape, dtype=float), where=totals > 0)


def summarize(y_true: ArrayLike, y_pred: ArrayLike) -> dict[str, Any]:
    """All the evaluation metrics as a JSON-ready dict."""
    return {
        "accuracy": round(accuracy(y_true, y_pred), 4),
        "kappa": round(quadratic_weighted_kappa(y_true, y_pred), 4),
        "macro_f1": round(macro_f1(y_true, y_pred), 4),
        "recall": {str(g): round(r, 4) for g, r in zip(GRADES, per_class_recall(y_true, y_pred))},
        "n": int(len(y_true)),
        "confusion": confusion(y_true, y_pred).tolist(),
    }
