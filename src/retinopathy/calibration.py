"""Calibration and referral: do a model's probabilities mean what they say, and what happens to the rest when the
least confident cases go to a human grader.

- **Expected calibration error** (ECE, Naeini et al. 2015; as Google's uncertainty-baselines RETINA benchmark scores
  diabetic-retinopathy models): the images binned by the confidence of their predicted grade (its probability), the
  mean over bins, weighted by their share of images, of |accuracy - mean confidence|. 0 is perfectly calibrated.
  The per-bin figures are the reliability diagram's. (scikit-learn's ``calibration_curve`` is binary and puts a
  confidence on a bin edge in the lower bin; the bins here are ``floor(confidence x bins)``, the same for both.)
- **Referral curve**: the images sorted by that confidence; referring the least confident ``fraction`` to a grader,
  the grade metrics and referable-DR sensitivity and specificity of the images the model keeps.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from retinopathy.metrics import accuracy, quadratic_weighted_kappa, referable, referable_score

CALIBRATION_BINS = 15  # the usual choice for ECE (Guo et al. 2017)
REFERRAL_FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)


def confidence(probs: np.ndarray, preds: np.ndarray) -> np.ndarray:
    """The probability the model gave the grade it predicted, per image."""
    probs, preds = np.asarray(probs, dtype=float), np.asarray(preds, dtype=int)
    return probs[np.arange(len(preds)), preds]


def _bin_stats(labels: np.ndarray, probs: np.ndarray, preds: np.ndarray, bins: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per non-empty bin of ``bins`` equal-width confidence bins over [0, 1] (bin ``floor(confidence x bins)``, 1.0
    in the last): its index, images, mean confidence and accuracy."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    conf = confidence(probs, preds)
    correct = (labels == preds).astype(float)
    which = np.minimum((conf * bins).astype(int), bins - 1)
    index, counts = np.unique(which, return_counts=True)
    mean_conf = np.bincount(which, weights=conf, minlength=bins)[index] / counts
    mean_correct = np.bincount(which, weights=correct, minlength=bins)[index] / counts
    return index, counts, mean_conf, mean_correct


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, preds: np.ndarray, *,
                               bins: int = CALIBRATION_BINS) -> float:
    """ECE of the predicted grades' confidences: sum over bins of (share of images) x |accuracy - confidence|."""
    if len(labels) == 0:
        return float("nan")
    _, counts, mean_conf, mean_correct = _bin_stats(labels, probs, preds, bins)
    return float((counts / counts.sum() * np.abs(mean_correct - mean_conf)).sum())


def reliability_table(labels: np.ndarray, probs: np.ndarray, preds: np.ndarray, *,
                      bins: int = CALIBRATION_BINS) -> list[dict[str, float]]:
    """The reliability diagram's rows: per non-empty confidence bin (the bins of
    :func:`expected_calibration_error`), its range, images, mean confidence and accuracy."""
    return [{"low": round(b / bins, 4), "high": round((b + 1) / bins, 4), "images": int(n),
             "confidence": round(float(c), 4), "accuracy": round(float(a), 4)}
            for b, n, c, a in zip(*_bin_stats(labels, probs, preds, bins))]


def referral_curve(labels: np.ndarray, probs: np.ndarray, preds: np.ndarray, *,
                   fractions: Sequence[float] = REFERRAL_FRACTIONS, threshold: float = 0.5) -> list[dict[str, Any]]:
    """For each ``fraction``, the least confident share of images referred to a grader, and the QWK, accuracy and
    referable sensitivity and specificity (P(referable) >= ``threshold``) of the images kept. Ties in confidence
    are broken by image order, so the curve is reproducible."""
    labels, preds, probs = np.asarray(labels), np.asarray(preds), np.asarray(probs, dtype=float)
    order = np.argsort(confidence(probs, preds), kind="stable")  # least confident first
    rows = []
    for fraction in fractions:
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"a referral fraction must lie in [0, 1), got {fraction}")
        referred = int(round(fraction * len(labels)))
        kept = np.sort(order[referred:])
        y, called = referable(labels[kept]), referable_score(probs[kept]) >= threshold
        rows.append({
            "referred_fraction": fraction, "referred": referred, "kept": int(len(kept)),
            "kappa": round(quadratic_weighted_kappa(labels[kept], preds[kept]), 4),
            "accuracy": round(accuracy(labels[kept], preds[kept]), 4),
            "referable_sensitivity": round(float(called[y == 1].mean()), 4) if (y == 1).any() else None,
            "referable_specificity": round(float((~called[y == 0]).mean()), 4) if (y == 0).any() else None,
        })
    return rows


def calibration_record(labels: np.ndarray, probs: np.ndarray, preds: np.ndarray, patients: np.ndarray,
                       **boot: Any) -> dict[str, Any]:
    """The metrics JSON's ``calibration``: the ECE with a patient-bootstrap interval (``boot``: the keyword
    arguments of :func:`retinopathy.statistics.patient_bootstrap`) and the reliability diagram's bins."""
    from retinopathy.statistics import patient_bootstrap

    return {
        "ece": patient_bootstrap(expected_calibration_error, [labels, probs, preds], patients, **boot).to_dict(),
        "bins": CALIBRATION_BINS,
        "definition": "expected calibration error of the predicted grade's probability: images binned by it, "
                      "the bins' share-weighted mean of |accuracy - mean probability|",
        "reliability": reliability_table(labels, probs, preds),
    }


def referral_record(labels: np.ndarray, probs: np.ndarray, preds: np.ndarray, *, threshold: float = 0.5
                    ) -> dict[str, Any]:
    """The metrics JSON's ``referral``: the referral curve, referable called at P(referable) >= ``threshold``."""
    return {
        "confidence": "the probability of the predicted grade; the least confident images are referred",
        "referable_threshold": round(float(threshold), 6),
        "curve": referral_curve(labels, probs, preds, threshold=threshold),
    }
