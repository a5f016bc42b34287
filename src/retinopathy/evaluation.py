"""Stage evaluate@<variant>: a trained model's test metrics with patient-bootstrap intervals, screening
metrics at operating points chosen on validation, and per-image predictions."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from retinopathy import GRADES
from retinopathy.data import build_transform, make_loader, patient_of, processed_dataset
from retinopathy.inference import predict
from retinopathy.metrics import (
    accuracy,
    macro_f1,
    operating_threshold,
    quadratic_weighted_kappa,
    referable,
    referable_score,
    roc_auc,
    sensitivity_specificity,
    summarize,
)
from retinopathy.models import build_model
from retinopathy.precision import hardware, resolve_precision
from retinopathy.statistics import patient_bootstrap
from retinopathy.utils import load_checkpoint, select_device, write_csv, write_json

GRADE_METRICS = {"accuracy": accuracy, "kappa": quadratic_weighted_kappa, "macro_f1": macro_f1}


@dataclass(frozen=True)
class EvalSettings:
    """The ``evaluate`` section of params.yaml (and the stage's device settings)."""

    batch_size: int = 64
    sensitivity_target: float = 0.95  # high-sensitivity operating point, chosen on validation
    specificity_target: float = 0.95  # high-specificity operating point, chosen on validation
    bootstrap_resamples: int = 1000
    confidence: float = 0.95
    bootstrap_seed: int = 0


def screening(
    val_labels: np.ndarray, val_probs: np.ndarray, test_labels: np.ndarray, test_probs: np.ndarray, patients: np.ndarray,
    settings: EvalSettings, *, from_grade: int = 2,
) -> dict[str, Any]:
    """ROC AUC of P(grade >= from_grade) on test, and sensitivity/specificity at two operating points
    whose thresholds are chosen on validation only and applied unchanged to test."""
    boot = dict(n_resamples=settings.bootstrap_resamples, confidence=settings.confidence, seed=settings.bootstrap_seed)
    y_val, s_val = referable(val_labels, from_grade=from_grade), referable_score(val_probs, from_grade=from_grade)
    y_test, s_test = referable(test_labels, from_grade=from_grade), referable_score(test_probs, from_grade=from_grade)
    out: dict[str, Any] = {
        "definition": f"grade >= {from_grade}, scored by P(grade >= {from_grade}) = " + " + ".join(f"p{g}" for g in GRADES if g >= from_grade),
        "test_positives": int(y_test.sum()),
        "test_negatives": int((1 - y_test).sum()),
        "auc": patient_bootstrap(roc_auc, [y_test, s_test], patients, **boot).to_dict(),
    }
    targets = {"high_sensitivity": {"min_sensitivity": settings.sensitivity_target},
               "high_specificity": {"min_specificity": settings.specificity_target}}
    points = {}
    for name, target in targets.items():
        try:
            threshold = operating_threshold(y_val, s_val, **target)
        except ValueError as exc:  # a validation split without positives or negatives
            points[name] = {"error": f"validation: {exc}"}
            continue
        val_sens, val_spec = sensitivity_specificity(y_val, s_val, threshold)
        sens = patient_bootstrap(lambda y, s: sensitivity_specificity(y, s, threshold)[0], [y_test, s_test], patients, **boot)
        spec = patient_bootstrap(lambda y, s: sensitivity_specificity(y, s, threshold)[1], [y_test, s_test], patients, **boot)
        points[name] = {
            "target": target, "threshold": round(float(threshold), 6),
            "val_sensitivity": round(val_sens, 4), "val_specificity": round(val_spec, 4),
            "test_sensitivity": sens.to_dict(), "test_specificity": spec.to_dict(),
        }
    out["operating_points"] = points
    return out


def evaluate_variant(
    *,
    model_path: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    metrics_out: str | os.PathLike[str],
    predictions_out: str | os.PathLike[str],
    settings: EvalSettings = EvalSettings(),
    device: str = "auto",
    num_workers: int = 0,
    precision: str = "auto",
) -> dict[str, Any]:
    """Predict validation and test with a trained model; write test metrics (with intervals) and test predictions.

    Intervals are percentile bootstraps over test *patients* (both eyes resampled together).
    Validation predictions are used for one thing only: choosing the screening thresholds.
    """
    checkpoint = load_checkpoint(model_path)
    dev = select_device(device)
    resolved, _ = resolve_precision(precision, dev)
    model = build_model(checkpoint["arch"], num_classes=len(GRADES))
    model.load_state_dict(checkpoint["state_dict"], strict=True)
    model.to(dev)
    transform = build_transform(mean=checkpoint["mean"], std=checkpoint["std"], train=False)
    outputs = {}
    for split in ("val", "test"):
        dataset = processed_dataset(data_dir, split, transform)
        loader = make_loader(dataset, batch_size=settings.batch_size, train=False, num_workers=num_workers, generator=None, device=dev)
        probs, labels = predict(model, loader, dev, precision=resolved, desc=split)
        outputs[split] = (dataset.names, probs, labels)
    names, probs, labels = outputs["test"]
    patients = np.asarray([patient_of(name) for name in names])
    preds = probs.argmax(1)
    boot = dict(n_resamples=settings.bootstrap_resamples, confidence=settings.confidence, seed=settings.bootstrap_seed)
    metrics: dict[str, Any] = summarize(labels, preds)
    metrics["intervals"] = {name: patient_bootstrap(fn, [labels, preds], patients, **boot).to_dict() for name, fn in GRADE_METRICS.items()}
    val_names, val_probs, val_labels = outputs["val"]
    metrics["referable"] = screening(val_labels, val_probs, labels, probs, patients, settings, from_grade=2)
    metrics["sight_threatening"] = screening(val_labels, val_probs, labels, probs, patients, settings, from_grade=3)
    metrics["bootstrap"] = {"unit": "patient", "patients": int(len(set(patients))), "resamples": settings.bootstrap_resamples,
                            "confidence": settings.confidence, "seed": settings.bootstrap_seed}
    metrics.update(precision=resolved, hardware=hardware(dev))
    frame = pd.DataFrame({"image": names, "patient": patients, "actual": labels, "predicted": preds})
    for grade in GRADES:
        frame[f"p{grade}"] = probs[:, grade].round(5)
    frame["p_referable"] = referable_score(probs).round(5)
    write_csv(predictions_out, frame)
    write_json(metrics_out, metrics)
    auc = metrics["referable"]["auc"]
    print(
        f"{model_path}: accuracy {metrics['accuracy']:.4f}, kappa {metrics['kappa']:.4f} "
        f"[{metrics['intervals']['kappa']['low']:.3f}, {metrics['intervals']['kappa']['high']:.3f}], "
        f"macro-F1 {metrics['macro_f1']:.4f}, referable AUC {auc['value']:.3f} [{auc['low']:.3f}, {auc['high']:.3f}]"
    )
    return metrics
