"""Expected calibration error, the reliability diagram's bins and the referral curve (retinopathy.calibration)."""

from __future__ import annotations

import numpy as np
import pytest

from retinopathy.calibration import (
    confidence,
    expected_calibration_error,
    referral_curve,
    reliability_table,
)
from retinopathy.metrics import accuracy, quadratic_weighted_kappa


def _simulated(n: int, seed: int, sharpen: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels drawn from each image's true probabilities; the model reports those probabilities raised to
    ``1 / sharpen`` and renormalised (1: calibrated; below 1: overconfident)."""
    rng = np.random.default_rng(seed)
    true = rng.dirichlet(np.full(5, 0.6), size=n)
    labels = np.array([rng.choice(5, p=p) for p in true])
    reported = true ** (1.0 / sharpen)
    reported /= reported.sum(axis=1, keepdims=True)
    return labels, reported, reported.argmax(axis=1)


def test_ece_by_hand_on_four_images() -> None:
    probs = np.array([[0.9, 0.1, 0, 0, 0], [0.9, 0.1, 0, 0, 0], [0.2, 0.6, 0.2, 0, 0], [0.2, 0.6, 0.2, 0, 0]])
    labels, preds = np.array([0, 1, 1, 1]), np.array([0, 0, 1, 1])
    # Bin of 0.9: 2 images, accuracy 0.5, confidence 0.9; bin of 0.6: 2 images, accuracy 1, confidence 0.6.
    assert expected_calibration_error(labels, probs, preds) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
    assert list(confidence(probs, preds)) == [0.9, 0.9, 0.6, 0.6]


def test_calibrated_probabilities_have_a_small_ece_and_overconfident_ones_a_large_one() -> None:
    labels, probs, preds = _simulated(20000, 0)
    assert expected_calibration_error(labels, probs, preds) < 0.02
    labels, sharp, preds = _simulated(20000, 0, sharpen=0.3)
    assert expected_calibration_error(labels, sharp, preds) > 0.1


def test_the_reliability_bins_add_up_to_the_ece() -> None:
    labels, probs, preds = _simulated(3000, 1, sharpen=0.5)
    rows = reliability_table(labels, probs, preds)
    assert sum(row["images"] for row in rows) == 3000
    assert all(row["low"] <= row["confidence"] <= row["high"] for row in rows)
    from_rows = sum(row["images"] / 3000 * abs(row["accuracy"] - row["confidence"]) for row in rows)
    assert from_rows == pytest.approx(expected_calibration_error(labels, probs, preds), abs=1e-3)


def test_referring_the_least_confident_leaves_the_easier_images() -> None:
    labels, probs, preds = _simulated(4000, 2)
    curve = referral_curve(labels, probs, preds)
    first = curve[0]
    assert (first["referred"], first["kept"]) == (0, 4000)
    assert first["kappa"] == pytest.approx(quadratic_weighted_kappa(labels, preds), abs=1e-4)
    assert first["accuracy"] == pytest.approx(accuracy(labels, preds), abs=1e-4)
    accuracies = [row["accuracy"] for row in curve]
    assert accuracies == sorted(accuracies) and accuracies[-1] > accuracies[0] + 0.1
    assert [row["referred"] for row in curve] == [0, 400, 800, 1200, 1600, 2000]
    with pytest.raises(ValueError, match="referral fraction"):
        referral_curve(labels, probs, preds, fractions=(1.0,))


def test_temperature_scaling_recovers_the_temperature_that_made_probabilities_overconfident() -> None:
    from retinopathy.calibration import fit_temperature, scale_probabilities

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4000, 5)) * 2.0
    true = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(5, p=p) for p in true])
    overconfident = scale_probabilities(true, 0.5)  # logits doubled
    assert fit_temperature(labels, overconfident) == pytest.approx(2.0, rel=0.1)
    assert np.array_equal(scale_probabilities(overconfident, 2.0).argmax(1), overconfident.argmax(1))


def test_temperature_scaling_record_reports_both_sets_before_and_after() -> None:
    from retinopathy.calibration import scale_probabilities, temperature_scaling_record

    rng = np.random.default_rng(1)
    true = rng.dirichlet(np.ones(5), size=400)
    labels = np.array([rng.choice(5, p=p) for p in true])
    probs = scale_probabilities(true, 0.4)  # overconfident
    patients = np.repeat(np.arange(200), 2).astype(str)
    record = temperature_scaling_record(labels, probs, {"test": (labels, probs, patients)}, n_resamples=50)
    assert record["temperature"] > 1.0 and record["val_nll"]["after"] < record["val_nll"]["before"]
    assert record["test"]["after"]["ece"]["value"] < record["test"]["before"]["ece"]["value"]
    assert record["test"]["after"]["kappa"] == record["test"]["before"]["kappa"]
