"""Pure metric functions of label arrays (``y_true, y_pred -> value``), checked against scikit-learn."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from retinopathy import GRADES, NUM_CLASSES

ArrayLike = Sequence[int] | np.ndarray


def confusion_counts(y_true: ArrayLike, y_pred: ArrayLike) -> np.ndarray:
    """5x5 integer confusion matrix (rows true grade, columns predicted), counted with ``np.bincount``.

    The grade metrics below are closed-form functions of this matrix. They agree with scikit-learn's
    (tests/test_metrics.py checks each against it) and cost microseconds instead of milliseconds, which
    matters inside a bootstrap that calls them hundreds of thousands of times.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape or y_true.ndim != 1:
        raise ValueError(f"y_true {y_true.shape} and y_pred {y_pred.shape} must be 1-D arrays of equal length")
    for name, y in (("y_true", y_true), ("y_pred", y_pred)):
        if y.size and (y.min() < 0 or y.max() >= NUM_CLASSES or not np.array_equal(y, np.round(y))):
            raise ValueError(f"{name} holds values outside the grades 0..{NUM_CLASSES - 1}: "
                             f"{sorted(set(y.tolist()) - set(GRADES))[:10]}")
    codes = NUM_CLASSES * y_true.astype(np.int64) + y_pred.astype(np.int64)
    return np.bincount(codes, minlength=NUM_CLASSES * NUM_CLASSES).reshape(NUM_CLASSES, NUM_CLASSES)


def accuracy(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Fraction of exact grade matches (NaN for no images)."""
    counts = confusion_counts(y_true, y_pred)
    total = counts.sum()
    return float(np.trace(counts) / total) if total else float("nan")


_GRADE = np.arange(NUM_CLASSES)
_QUADRATIC = (_GRADE[:, None] - _GRADE[None, :]) ** 2


def quadratic_weighted_kappa(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Cohen's kappa with quadratic weights over grades 0..4: the field's metric for an ordinal grade.

    ``1 - sum(w * observed) / sum(w * expected)`` with ``w = (i - j)^2`` and ``expected`` the outer
    product of the two marginals, as scikit-learn's ``cohen_kappa_score(weights="quadratic")``.
    Predicting one grade for everything scores 0, however high its accuracy. When the kappa is
    undefined (both arrays a single identical grade), 0 is returned: no agreement beyond chance
    can be shown.
    """
    counts = confusion_counts(y_true, y_pred)
    total = counts.sum()
    expected = np.outer(counts.sum(axis=1), counts.sum(axis=0)) / max(total, 1)
    disagreement = float(np.sum(_QUADRATIC * expected))
    if disagreement == 0.0:
        return 0.0
    return float(1.0 - np.sum(_QUADRATIC * counts) / disagreement)


def macro_f1(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Unweighted mean of the per-grade F1 scores (grades absent from both count as 0).

    Per grade ``F1 = 2 TP / (true count + predicted count)``, the same value as scikit-learn's
    ``f1_score(average="macro", labels=0..4, zero_division=0)``.
    """
    counts = confusion_counts(y_true, y_pred)
    denominator = counts.sum(axis=1) + counts.sum(axis=0)
    scores = np.divide(2.0 * np.diag(counts), denominator, out=np.zeros(NUM_CLASSES), where=denominator > 0)
    return float(scores.mean())


def per_class_recall(y_true: ArrayLike, y_pred: ArrayLike) -> list[float]:
    """Recall (sensitivity) of each grade 0..4 (0 for a grade absent from ``y_true``)."""
    counts = confusion_counts(y_true, y_pred)
    totals = counts.sum(axis=1)
    return [float(r) for r in np.divide(np.diag(counts), totals, out=np.zeros(NUM_CLASSES), where=totals > 0)]


def confusion(y_true: ArrayLike, y_pred: ArrayLike, *, normalize: bool = False) -> np.ndarray:
    """5x5 confusion matrix, rows = true grade, columns = predicted; ``normalize`` divides each row by its total."""
    matrix = confusion_counts(y_true, y_pred)
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


# Screening for referable DR (grade >= 2): a binary decision scored by P(grade >= 2).


def referable(y: ArrayLike, *, from_grade: int = 2) -> np.ndarray:
    """Binary labels: 1 where the grade is ``from_grade`` or worse (referable DR at the default 2), else 0."""
    y = np.asarray(y)
    outside = sorted(set(y.tolist()) - set(GRADES))
    if outside:
        raise ValueError(f"grades outside 0..4: {outside[:10]}")
    return (y >= from_grade).astype(np.int64)


def referable_score(probs: np.ndarray, *, from_grade: int = 2) -> np.ndarray:
    """P(grade >= ``from_grade``) from 5-class probabilities of shape (N, 5): the sum of the top columns."""
    probs = np.asarray(probs, dtype=float)
    if probs.ndim != 2 or probs.shape[1] != NUM_CLASSES:
        raise ValueError(f"probabilities have shape {probs.shape}, expected (N, {NUM_CLASSES})")
    if not 1 <= from_grade < NUM_CLASSES:
        raise ValueError(f"from_grade {from_grade} must be in 1..{NUM_CLASSES - 1}")
    return probs[:, from_grade:].sum(axis=1)


def roc_auc(y_binary: ArrayLike, score: ArrayLike) -> float:
    """Area under the ROC curve; NaN when only one class is present (the AUC is undefined there).

    Computed as the Mann-Whitney statistic from ``scipy.stats.rankdata`` (ties count one half), which
    equals scikit-learn's ``roc_auc_score`` and is several times cheaper inside a bootstrap.
    """
    y = np.asarray(y_binary) == 1
    positives = int(y.sum())
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    from scipy.stats import rankdata  # imported here: stages that never rank pay nothing for scipy.stats

    ranks = rankdata(np.asarray(score, dtype=float))
    return float((ranks[y].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def _roc(y_binary: ArrayLike, score: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's ROC points with every threshold kept, thresholds decreasing and all finite.

    scikit-learn's first threshold is ``inf`` (nothing called positive); it becomes the next float above
    the highest score, which classifies every image the same way under ``score >= threshold``.
    """
    from sklearn.metrics import roc_curve  # imported here: only screening stages pay for scikit-learn

    score = np.asarray(score, dtype=float)
    fpr, tpr, thresholds = roc_curve(y_binary, score, drop_intermediate=False)
    thresholds = np.where(np.isfinite(thresholds), thresholds, np.nextafter(score.max(), np.inf))
    return fpr, tpr, thresholds


def _require_both_classes(y_binary: ArrayLike) -> np.ndarray:
    y = np.asarray(y_binary)
    if not np.any(y == 1):
        raise ValueError(f"no positives (referable cases) among the {len(y)} images: no ROC or threshold is defined")
    if not np.any(y == 0):
        raise ValueError(
            f"no negatives (non-referable cases) among the {len(y)} images: no ROC or threshold is defined"
        )
    return y


def roc_table(y_binary: ArrayLike, score: ArrayLike) -> pd.DataFrame:
    """ROC curve as columns ``fpr, tpr, threshold`` (finite thresholds, decreasing), for DVC plots."""
    _require_both_classes(y_binary)
    fpr, tpr, thresholds = _roc(y_binary, score)
    return pd.DataFrame({"fpr": fpr, "tpr": tpr, "threshold": thresholds})


def operating_threshold(
    y_binary: ArrayLike,
    score: ArrayLike,
    *,
    min_sensitivity: float | None = None,
    min_specificity: float | None = None,
) -> float:
    """Threshold on ``score`` (``score >= threshold`` refers) that meets one target, chosen on validation data.

    Args:
        y_binary: 0/1 labels of the validation images.
        score: Their scores, e.g. :func:`referable_score`.
        min_sensitivity: Give the HIGHEST threshold whose sensitivity is at least this (fewest referrals).
        min_specificity: Give the LOWEST threshold whose specificity is at least this (most cases caught).
            Exactly one of the two targets must be given.

    Returns:
        One of the observed scores, or, when only "refer nobody" meets the target, the next float above
        the highest score.

    Raises:
        ValueError: when both or neither target is given, a target is outside [0, 1], or the data have no
            positives or no negatives.
    """
    if (min_sensitivity is None) == (min_specificity is None):
        raise ValueError("give exactly one of min_sensitivity and min_specificity")
    target = min_sensitivity if min_sensitivity is not None else min_specificity
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"target {target} is outside [0, 1]")
    y = _require_both_classes(y_binary)
    fpr, tpr, thresholds = _roc(y, score)
    if min_sensitivity is not None:
        # Sensitivity only grows as the threshold falls, so the first point reaching the target is the highest.
        return float(thresholds[np.argmax(tpr >= target)])
    # Specificity from counts rather than 1 - fpr, so that e.g. 9 of 10 negatives compares equal to 0.9.
    negatives = int(np.sum(y == 0))
    specificity = (negatives - np.rint(fpr * negatives)) / negatives
    # Specificity only falls as the threshold falls: the last point still meeting the target is the lowest.
    return float(thresholds[np.flatnonzero(specificity >= target)[-1]])


def sensitivity_specificity(y_binary: ArrayLike, score: ArrayLike, threshold: float) -> tuple[float, float]:
    """``(sensitivity, specificity)`` calling ``score >= threshold`` positive; NaN for a class that is absent."""
    y = np.asarray(y_binary) == 1
    called = np.asarray(score) >= threshold
    # Counted directly (two lines) so the tests can check them against scikit-learn's confusion matrix.
    sensitivity = float(np.mean(called[y])) if y.any() else float("nan")
    specificity = float(np.mean(~called[~y])) if (~y).any() else float("nan")
    return sensitivity, specificity
