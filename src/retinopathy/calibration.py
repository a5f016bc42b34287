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

from retinopathy.metrics import accuracy, quadratic_weighted_kappa, referable, referable_score, roc_auc

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


def scale_probabilities(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``probs`` with their logits divided by ``temperature``: ``softmax(log(p) / T)`` (T > 1 softens, T < 1 sharpens;
    the most probable grade never changes)."""
    from scipy.special import softmax

    logits = np.log(np.clip(np.asarray(probs, dtype=float), 1e-12, 1.0))
    return softmax(logits / float(temperature), axis=1)


def _nll(labels: np.ndarray, probs: np.ndarray) -> float:
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)).mean())


def fit_temperature(labels: np.ndarray, probs: np.ndarray) -> float:
    """The temperature (Guo et al. 2017) that minimises the negative log-likelihood of ``labels`` under ``probs``
    scaled by it; a bounded one-dimensional search over log T in [log 0.05, log 20] (scipy's ``minimize_scalar``)."""
    from scipy.optimize import minimize_scalar

    labels, probs = np.asarray(labels, dtype=int), np.asarray(probs, dtype=float)
    found = minimize_scalar(lambda log_t: _nll(labels, scale_probabilities(probs, np.exp(log_t))),
                            bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(found.x))


def temperature_scaling_record(val_labels: np.ndarray, val_probs: np.ndarray,
                               sets: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]], *,
                               unscaled_ece: dict[str, dict[str, float]] | None = None, **boot: Any
                               ) -> dict[str, Any]:
    """A temperature fitted on validation only, and for each of ``sets`` (name: labels, p0..p4, patients) the ECE
    (with its patient-bootstrap interval), QWK and referable AUC of the argmax grades before and after scaling by it.

    ``unscaled_ece``: by set name, the ECE record already bootstrapped (with the same ``boot``) on the unscaled
    probabilities and their argmax grades, e.g. the set's :func:`calibration_record` ``ece``; reused as "before"
    instead of bootstrapping it again. A set not in it is bootstrapped here.
    """
    from retinopathy.statistics import patient_bootstrap

    temperature = fit_temperature(val_labels, val_probs)
    record: dict[str, Any] = {
        "fitted_on": "validation", "temperature": round(temperature, 4),
        "val_nll": {"before": round(_nll(np.asarray(val_labels), np.asarray(val_probs)), 4),
                    "after": round(_nll(np.asarray(val_labels), scale_probabilities(val_probs, temperature)), 4)},
    }
    for name, (labels, probs, patients) in sets.items():
        row = {}
        for when, p in (("before", np.asarray(probs, dtype=float)), ("after", scale_probabilities(probs, temperature))):
            preds = p.argmax(axis=1)
            ece = (unscaled_ece or {}).get(name) if when == "before" else None
            if ece is None:
                ece = patient_bootstrap(expected_calibration_error, [labels, p, preds], patients, **boot).to_dict()
            row[when] = {
                "ece": dict(ece),
                "kappa": round(quadratic_weighted_kappa(labels, preds), 4),
                "referable_auc": round(roc_auc(referable(labels), referable_score(p)), 4),
            }
        record[name] = row
    return record
