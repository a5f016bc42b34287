"""Metric functions against scikit-learn and against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score, confusion_matrix, f1_score, recall_score, roc_auc_score

from retinopathy.metrics import (
    accuracy,
    confusion,
    macro_f1,
    operating_threshold,
    per_class_recall,
    quadratic_weighted_kappa,
    referable,
    referable_score,
    roc_auc,
    roc_table,
    sensitivity_specificity,
    summarize,
)

rng = np.random.default_rng(0)
CASES = [
    (np.array([0, 1, 2, 3, 4, 0, 0]), np.array([0, 1, 2, 3, 4, 0, 0])),
    (np.array([0, 0, 1, 2, 4, 3, 2]), np.array([0, 1, 1, 3, 2, 3, 0])),
    (rng.integers(0, 5, 200), rng.integers(0, 5, 200)),
]


@pytest.mark.parametrize(("y_true", "y_pred"), CASES)
def test_metrics_agree_with_scikit_learn(y_true: np.ndarray, y_pred: np.ndarray) -> None:
    assert accuracy(y_true, y_pred) == pytest.approx(np.mean(y_true == y_pred))
    assert quadratic_weighted_kappa(y_true, y_pred) == pytest.approx(
        cohen_kappa_score(y_true, y_pred, weights="quadratic")
    )
    assert macro_f1(y_true, y_pred) == pytest.approx(
        f1_score(y_true, y_pred, labels=range(5), average="macro", zero_division=0)
    )


def _random_grade_cases(count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Small random cases, many with grades missing from one side, the shapes a bootstrap resample takes."""
    generator = np.random.default_rng(11)
    cases = []
    for _ in range(count):
        n = int(generator.integers(2, 40))
        grades_true = generator.choice(5, size=int(generator.integers(1, 6)), replace=False)
        grades_pred = generator.choice(5, size=int(generator.integers(1, 6)), replace=False)
        cases.append((generator.choice(grades_true, n), generator.choice(grades_pred, n)))
    return cases


def test_closed_form_grade_metrics_equal_scikit_learn_on_many_resample_shapes() -> None:
    for y_true, y_pred in _random_grade_cases(300):
        expected_kappa = cohen_kappa_score(y_true, y_pred, labels=range(5), weights="quadratic")
        # scikit-learn gives NaN where both sides hold one identical grade; the project calls that 0.
        expected_kappa = 0.0 if np.isnan(expected_kappa) else expected_kappa
        assert quadratic_weighted_kappa(y_true, y_pred) == pytest.approx(expected_kappa, abs=1e-12), (y_true, y_pred)
        assert macro_f1(y_true, y_pred) == pytest.approx(
            f1_score(y_true, y_pred, labels=range(5), average="macro", zero_division=0), abs=1e-12
        )
        assert per_class_recall(y_true, y_pred) == pytest.approx(
            list(recall_score(y_true, y_pred, labels=range(5), average=None, zero_division=0)), abs=1e-12
        )
        np.testing.assert_array_equal(confusion(y_true, y_pred), confusion_matrix(y_true, y_pred, labels=range(5)))
        assert accuracy(y_true, y_pred) == pytest.approx(np.mean(y_true == y_pred), abs=1e-12)


def test_grade_metrics_reject_values_outside_the_grades() -> None:
    with pytest.raises(ValueError, match="y_pred holds values outside the grades 0..4: \\[5\\]"):
        accuracy(np.array([0, 1]), np.array([0, 5]))
    with pytest.raises(ValueError, match="y_true holds values outside"):
        macro_f1(np.array([-1, 1]), np.array([0, 1]))
    with pytest.raises(ValueError, match="equal length"):
        quadratic_weighted_kappa(np.array([0, 1, 2]), np.array([0, 1]))


def test_rank_auc_equals_scikit_learn_with_ties() -> None:
    generator = np.random.default_rng(5)
    for _ in range(100):
        n = int(generator.integers(4, 60))
        y = generator.integers(0, 2, n)
        if y.min() == y.max():
            continue
        # Scores rounded to one decimal: many ties, which both count one half.
        score = np.round(generator.random(n), 1)
        assert roc_auc(y, score) == pytest.approx(roc_auc_score(y, score), abs=1e-12)


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


# Referable DR (grade >= 2) screening metrics.

_screen = np.random.default_rng(1)
_labels = _screen.integers(0, 2, 120)
BINARY_CASES = [
    (np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])),
    (np.array([0, 1, 0, 1, 1, 0]), np.array([0.5, 0.5, 0.2, 0.9, 0.5, 0.7])),  # ties across classes
    (_labels, _labels * 0.3 + _screen.random(120)),
]


def test_referable_means_grade_two_or_worse() -> None:
    assert referable([0, 1, 2, 3, 4]).tolist() == [0, 0, 1, 1, 1]
    assert referable([0, 1, 2, 3, 4], from_grade=3).tolist() == [0, 0, 0, 1, 1]
    with pytest.raises(ValueError, match=r"outside 0\.\.4: \[5\]"):
        referable([0, 5])


def test_referable_score_sums_the_probabilities_of_grades_two_to_four() -> None:
    probs = np.array([[0.5, 0.2, 0.1, 0.1, 0.1], [0.0, 0.1, 0.0, 0.0, 0.9]])
    assert referable_score(probs) == pytest.approx([0.3, 0.9])
    with pytest.raises(ValueError, match=r"shape \(2, 4\)"):
        referable_score(probs[:, :4])


@pytest.mark.parametrize(("y", "score"), BINARY_CASES)
def test_roc_auc_agrees_with_scikit_learn(y: np.ndarray, score: np.ndarray) -> None:
    assert roc_auc(y, score) == pytest.approx(roc_auc_score(y, score))


def test_roc_auc_is_nan_when_only_one_class_is_present() -> None:
    assert np.isnan(roc_auc([1, 1, 1], [0.2, 0.5, 0.9]))


@pytest.mark.parametrize(("y", "score"), BINARY_CASES)
@pytest.mark.parametrize("threshold", [0.0, 0.35, 0.5, 0.75, 2.0])
def test_sensitivity_specificity_agree_with_the_confusion_matrix(
    y: np.ndarray, score: np.ndarray, threshold: float
) -> None:
    tn, fp, fn, tp = confusion_matrix(y, (score >= threshold).astype(int), labels=[0, 1]).ravel()
    assert sensitivity_specificity(y, score, threshold) == pytest.approx((tp / (tp + fn), tn / (tn + fp)))


@pytest.mark.parametrize(("y", "score"), BINARY_CASES)
def test_roc_table_points_are_the_operating_points_of_their_thresholds(y: np.ndarray, score: np.ndarray) -> None:
    table = roc_table(y, score)
    assert list(table.columns) == ["fpr", "tpr", "threshold"]
    assert np.isfinite(table["threshold"]).all() and table["threshold"].is_monotonic_decreasing
    assert (table["fpr"].iloc[0], table["tpr"].iloc[0]) == (0.0, 0.0)
    for row in table.itertuples():
        assert sensitivity_specificity(y, score, row.threshold) == pytest.approx((row.tpr, 1 - row.fpr))


@pytest.mark.parametrize(("y", "score"), BINARY_CASES)
@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 1.0])
def test_sensitivity_threshold_is_the_highest_that_meets_the_target(
    y: np.ndarray, score: np.ndarray, target: float
) -> None:
    threshold = operating_threshold(y, score, min_sensitivity=target)
    assert sensitivity_specificity(y, score, threshold)[0] >= target
    higher = np.unique(score[score > threshold])
    if len(higher):  # the next higher cut refers fewer cases and misses the target
        assert sensitivity_specificity(y, score, higher[0])[0] < target


@pytest.mark.parametrize(("y", "score"), BINARY_CASES)
@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 1.0])
def test_specificity_threshold_is_the_lowest_that_meets_the_target(
    y: np.ndarray, score: np.ndarray, target: float
) -> None:
    threshold = operating_threshold(y, score, min_specificity=target)
    assert sensitivity_specificity(y, score, threshold)[1] >= target
    lower = np.unique(score[score < threshold])
    if len(lower):  # the next lower cut refers more cases and misses the target
        assert sensitivity_specificity(y, score, lower[-1])[1] < target


def test_operating_threshold_names_a_split_without_positives_or_negatives() -> None:
    with pytest.raises(ValueError, match="no positives"):
        operating_threshold([0, 0, 0], [0.1, 0.2, 0.3], min_sensitivity=0.9)
    with pytest.raises(ValueError, match="no negatives"):
        operating_threshold([1, 1], [0.1, 0.2], min_specificity=0.9)


def test_operating_threshold_needs_exactly_one_target() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        operating_threshold([0, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="exactly one"):
        operating_threshold([0, 1], [0.1, 0.2], min_sensitivity=0.9, min_specificity=0.9)
