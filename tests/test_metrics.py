"""Metric functions against scikit-learn and against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score, f1_score

from retinopathy.metrics import accuracy, confusion, macro_f1, per_class_recall, quadratic_weighted_kappa, summarize

rng = np.random.default_rng(0)
CASES = [
    (np.array([0, 1, 2, 3, 4, 0, 0]), np.array([0, 1, 2, 3, 4, 0, 0])),
    (np.array([0, 0, 1, 2, 4, 3, 2]), np.array([0, 1, 1, 3, 2, 3, 0])),
    (rng.integers(0, 5, 200), rng.integers(0, 5, 200)),
]


@pytest.mark.parametrize(("y_true", "y_pred"), CASES)
def test_metrics_agree_with_scikit_learn(y_true: np.ndarray, y_pred: np.ndarray) -> None:
    assert accuracy(y_true, y_pred) == pytest.approx(np.mean(y_true == y_pred))
    assert quadratic_weighted_kappa(y_true, y_pred) == pytest.approx(cohen_kappa_score(y_true, y_pred, weights="quadratic"))
    assert macro_f1(y_true, y_pred) == pytest.approx(f1_score(y_true, y_pred, labels=range(5), average="macro", zero_division=0))


def test_perfect_agreement_has_kappa_one() -> None:
    y = np.array([0, 1, 2, 3, 4])
    assert quadratic_weighted_kappa(y, y) == pytest.approx(1.0)


def test_predicting_the_majority_grade_scores_high_accuracy_but_zero_kappa() -> None:
    y_true = np.array([0] * 74 + [1] * 7 + [2] * 15 + [3] * 2 + [4] * 2)
    y_pred = np.zeros_like(y_true)
    assert accuracy(y_true, y_pred) == pytest.approx(0.74)
    assert quadratic_weighted_kappa(y_true, y_pred) == 0.0
    assert per_class_recall(y_true, y_pred) == [1.0, 0.0, 0.0, 0.0, 0.0]


def test_quadratic_kappa_punishes_distant_grades_more() -> None:
    y_true = np.array([0, 1, 2, 3, 4] * 4)
    near = np.clip(y_true + 1, 0, 4)
    far = 4 - y_true
    assert quadratic_weighted_kappa(y_true, near) > quadratic_weighted_kappa(y_true, far)


def test_confusion_rows_are_true_grades_and_normalise_to_one() -> None:
    y_true = np.array([0, 0, 1, 4])
    y_pred = np.array([0, 1, 1, 0])
    m = confusion(y_true, y_pred)
    assert m.shape == (5, 5) and m[0, 0] == 1 and m[0, 1] == 1 and m[4, 0] == 1
    n = confusion(y_true, y_pred, normalize=True)
    assert n[0].sum() == pytest.approx(1.0) and n[2].sum() == 0.0


def test_summary_holds_every_reported_metric() -> None:
    out = summarize([0, 1, 2], [0, 1, 1])
    assert set(out) >= {"accuracy", "kappa", "macro_f1", "recall", "confusion", "n"}
    assert out["recall"]["2"] == 0.0 and out["n"] == 3
