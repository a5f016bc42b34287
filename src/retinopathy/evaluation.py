"""Stage evaluate@<variant>: a trained model's test metrics with patient-bootstrap intervals, screening
metrics at operating points chosen on validation, and per-image predictions.

Nothing is fitted on test. Cut-points and screening thresholds are fitted on validation predictions;
the two-eye blend on the training images' outputs (see :class:`retinopathy.decoding.PatientBlend`), so
validation scores it untouched. The stage scores the configured grading only: validation and test are
predicted once, with the configured TTA, and the training images only when the blend needs them.
Comparing ways of grading (decodings, TTA, the blend, the refit) is the grading study's job
(``studies/grading/``, :mod:`retinopathy.ablation`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from retinopathy import GRADES
from retinopathy.calibration import calibration_record, referral_record, temperature_scaling_record
from retinopathy.data import build_transform, class_weights, make_loader, patient_of, processed_dataset
from retinopathy.decoding import Decoder, PatientBlend
from retinopathy.external import (
    ScoredSet,
    predictions_table,
    read_external,
    score_set,
    site_metrics,
)
from retinopathy.inference import load_model, model_decoder, predict
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
from retinopathy.precision import hardware, resolve_precision
from retinopathy.settings import TTA, EvalSettings, ExternalSettings
from retinopathy.statistics import patient_bootstrap
from retinopathy.utils import select_device, write_csv, write_json

GRADE_METRICS = {"accuracy": accuracy, "kappa": quadratic_weighted_kappa, "macro_f1": macro_f1}


def eye_of(image: str) -> str:
    """``'10_left'`` -> ``'left'``; ``''`` for a name without a side."""
    side = image.rpartition("_")[2]
    return side if side in {"left", "right"} else ""


@dataclass(frozen=True)
class Split:
    """One split's model outputs: image names, the head's outputs and the labels.

    ``outputs`` holds softmax probabilities p0..p4 (N, 5) for a classification head, one score (N, 1) for a
    regression head (:func:`retinopathy.inference.predict`).
    """

    names: list[str]
    outputs: np.ndarray
    labels: np.ndarray

    @property
    def patients(self) -> list[str]:
        return [patient_of(n) for n in self.names]

    @property
    def eyes(self) -> list[str]:
        return [eye_of(n) for n in self.names]

    def take(self, index: np.ndarray) -> "Split":
        return Split([self.names[i] for i in index], self.outputs[index], self.labels[index])


def grade_with(
    decoder: Decoder, fit: Split, apply: Split, *, blend: PatientBlend | None = None,
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Grades and p0..p4 of ``apply``, with ``decoder``'s cut-points fitted on ``fit`` alone, and what was fitted.

    With a (fitted) ``blend`` the blended probabilities are decoded instead of the model's: by argmax
    for a classification head decoded by argmax, else by their expected grade cut at cut-points fitted on ``fit``.
    """
    if blend is None:
        tuned = decoder.fitted(fit.labels, fit.outputs)
        return tuned.grades(apply.outputs), tuned.probabilities(apply.outputs), {"decoder": tuned.to_dict()}
    on_probs = Decoder("classification", decoder.decode if decoder.head == "classification" else "expected")
    tuned = on_probs.fitted(fit.labels, blend.probabilities(fit.outputs, fit.patients, fit.eyes))
    probs = blend.probabilities(apply.outputs, apply.patients, apply.eyes)
    return tuned.grades(probs), probs, {"decoder": tuned.to_dict(), "blend": blend.to_dict()}


def split_outputs(
    model: Any, meta: dict[str, Any], data_dir: str | os.PathLike[str], split: str, device: Any, *,
    batch_size: int = 64, num_workers: int = 0, precision: str = "fp32", ttas: tuple[str, ...] = tuple(TTA),
) -> dict[str, Split]:
    """A loaded model's outputs on one processed split (un-augmented), per TTA setting."""
    transform = build_transform(mean=meta["mean"], std=meta["std"], train=False)
    dataset = processed_dataset(data_dir, split, transform)
    loader = make_loader(dataset, batch_size=batch_size, train=False, num_workers=num_workers, generator=None,
                         device=device)
    out = {}
    for tta in ttas:
        outputs, labels = predict(model, loader, device, precision=precision, desc=f"{split} (tta {tta})",
                                  head=meta["head"], tta=tta)
        out[tta] = Split(list(dataset.names), outputs, labels)
    return out


def fit_blend(head: str, train: Split, *, c: float, weights: np.ndarray | None) -> PatientBlend:
    """The two-eye blend fitted on the training images' outputs (ValueError when they cannot fit it)."""
    return PatientBlend(head, c, weights).fit(train.labels, train.outputs, train.patients, train.eyes)


def screening(
    val_labels: np.ndarray, val_probs: np.ndarray, test_labels: np.ndarray, test_probs: np.ndarray,
    patients: np.ndarray,
    settings: EvalSettings, *, from_grade: int = 2,
) -> dict[str, Any]:
    """ROC AUC of P(grade >= from_grade) on test, and sensitivity/specificity at two operating points
    whose thresholds are chosen on validation only and applied unchanged to test.

    The AUC's interval is a patient bootstrap; sensitivity's and specificity's are
    :func:`retinopathy.statistics.proportion_interval` (Clopper-Pearson on the eyes divided by the design
    effect of two eyes per patient), each with the eyes, patients and effective number behind it.
    """
    from retinopathy.statistics import proportion_interval

    ids = np.asarray(patients)
    boot = dict(n_resamples=settings.bootstrap_resamples, confidence=settings.confidence, seed=settings.bootstrap_seed)
    y_val, s_val = referable(val_labels, from_grade=from_grade), referable_score(val_probs, from_grade=from_grade)
    y_test, s_test = referable(test_labels, from_grade=from_grade), referable_score(test_probs, from_grade=from_grade)
    out: dict[str, Any] = {
        "definition": f"grade >= {from_grade}, scored by P(grade >= {from_grade}) = "
        + " + ".join(f"p{g}" for g in GRADES if g >= from_grade),
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
        # Not a bootstrap: one of a proportion of 1 (every positive eye caught) reads 1.000 (1.000-1.000), since no
        # resample can hold a miss. An exact binomial interval on the effective number of eyes cannot collapse.
        called, positive = s_test >= threshold, y_test == 1
        sens = proportion_interval(called[positive], ids[positive], confidence=settings.confidence)
        spec = proportion_interval(~called[~positive], ids[~positive], confidence=settings.confidence)
        points[name] = {
            "target": target, "threshold": round(float(threshold), 6),
            "val_sensitivity": round(val_sens, 4), "val_specificity": round(val_spec, 4),
            "test_sensitivity": sens.to_dict(), "test_specificity": spec.to_dict(),
        }
    out["operating_points"] = points
    return out


def _configured_grading(
    decoder: Decoder, val: Split, test: Split, train: Split | None, settings: EvalSettings,
    weights: np.ndarray | None, *, seed: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Test grades and p0..p4, validation p0..p4 and what was fitted, for the configured grading.

    The checkpoint's cut-points were tuned on validation outputs without TTA; under TTA they are tuned again,
    on validation outputs with it, with the training run's seed (as the train stage tuned them).
    """
    chosen = (decoder if settings.tta == "none"
              else Decoder(decoder.head, decoder.decode).fitted(val.labels, val.outputs, seed=seed))
    preds, probs = chosen.grades(test.outputs), chosen.probabilities(test.outputs)
    fitted: dict[str, Any] = {"decoder": chosen.to_dict()}
    val_probs = chosen.probabilities(val.outputs)
    if train is not None:
        try:
            blend = fit_blend(decoder.head, train, c=settings.blend_c, weights=weights)
        except ValueError as exc:
            fitted["blend"] = {"fitted": False, "reason": f"{exc}; each eye is graded alone"}
        else:
            preds, probs, fitted = grade_with(chosen, val, test, blend=blend)
            val_probs = blend.probabilities(val.outputs, val.patients, val.eyes)
    return preds, probs, val_probs, fitted


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
    head: str | None = None,
    class_weighting: str = "sqrt_inverse",
    external: ExternalSettings = ExternalSettings(source="none"),
    external_predictions_out: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Predict validation and test images with a trained model (and the training images when the blend needs
    them); write test metrics (with intervals) and test predictions.

    Intervals are bootstraps over test *patients* (both eyes resampled together).
    Validation predictions are used to fit cut-points (under TTA) and to choose the screening
    thresholds; the two-eye blend is fitted on the training images' outputs, weighted per grade by
    ``class_weighting`` as training was; test predictions are never used to fit anything. When the
    blend cannot be fitted (a training set missing a grade) each eye is graded alone and the
    evaluation JSON says why. Unless ``external.source`` is ``none``, the external site is scored too
    (:func:`score_external_site`), its predictions written to ``external_predictions_out``.

    Raises:
        ValueError: ``head`` (the params' head) differs from the head the model was trained with, naming
            both. (``settings`` checks its own values: :class:`retinopathy.settings.EvalSettings`.)
    """
    started = time.perf_counter()
    # The model, its decoding, and the arithmetic to predict in.
    dev = select_device(device)
    model, meta, decoder = _load_model_with_head(model_path, dev, head)
    resolved, _ = resolve_precision(precision, dev)
    # Only what the configured grading reads: training outputs for the blend alone, one TTA setting.
    needed = ("train", "val", "test") if settings.patient_blend else ("val", "test")
    splits = {split: split_outputs(model, meta, data_dir, split, dev, batch_size=settings.batch_size,
                                   num_workers=num_workers, precision=resolved, ttas=(settings.tta,))[settings.tta]
              for split in needed}
    val, test = splits["val"], splits["test"]
    # Grade test with what was fitted on validation (cut-points) and on the training outputs (the blend).
    weights = class_weights(processed_dataset(data_dir, "train", None).labels, class_weighting)
    seed = int(meta.get("config", {}).get("seed", 0))
    preds, probs, val_probs, fitted = _configured_grading(decoder, val, test, splits.get("train"), settings,
                                                          weights, seed=seed)
    # Score test, then write its predictions and the metrics.
    grading = _grading_record(decoder, settings, fitted, test, meta)
    metrics = _test_metrics(val, val_probs, test, preds, probs, settings, grading=grading)
    metrics.update(precision=resolved, hardware=hardware(dev))
    site = None
    if external.source != "none":
        metrics["external"], site = score_external_site(model, meta, decoder, external, metrics["referable"],
                                                        settings, dev, resolved)
        write_csv(external_predictions_out, site.table())
    metrics["temperature_scaling"] = _temperature_scaling(decoder, settings, val.labels, val_probs, test, probs, site,
                                                          metrics)
    write_csv(predictions_out, _predictions_frame(test, preds, probs))
    metrics["seconds"] = round(time.perf_counter() - started, 1)  # the stage's wall time, model loading included
    write_json(metrics_out, metrics)
    print(_summary_line(model_path, metrics))
    return metrics


def _load_model_with_head(
    model_path: str | os.PathLike[str], device: Any, head: str | None
) -> tuple[Any, dict[str, Any], Decoder]:
    """The model at ``model_path``, its metadata and its decoder; ValueError naming both heads when ``head``
    (params.yaml's) is not the one the model was trained with."""
    model, meta = load_model(model_path, device)
    decoder = model_decoder(meta)
    if head is not None and head != decoder.head:
        raise ValueError(f"{model_path} was trained with head {decoder.head!r} but params.yaml asks for head {head!r}; "
                         f"retrain it (dvc repro) or set head: {decoder.head}")
    return model, meta, decoder


def _grading_record(
    decoder: Decoder, settings: EvalSettings, fitted: dict[str, Any], test: Split, meta: dict[str, Any]
) -> dict[str, Any]:
    """The metrics' ``grading`` section: how test was graded, and what was fitted to grade it."""
    counts = pd.Series(np.asarray(test.patients)).value_counts()
    return {
        "head": decoder.head, "tta": settings.tta, "patient_blend": settings.patient_blend, **fitted,
        # Graded from that eye alone (the blend falls back to it).
        "test_patients_with_one_eye": int((counts == 1).sum()),
        # How the train stage left the last layer (retinopathy.refit); absent from model files made before it.
        "refit": meta.get("refit", {"applied": False, "reason": "the model file has no refit record"}),
    }


def _test_metrics(
    val: Split, val_probs: np.ndarray, test: Split, preds: np.ndarray, probs: np.ndarray, settings: EvalSettings, *,
    grading: dict[str, Any],
) -> dict[str, Any]:
    """Test grade metrics with patient-bootstrap intervals, ``grading``, the referable and sight-threatening
    screening metrics (:func:`screening`) and the bootstrap's settings."""
    labels, patients = test.labels, np.asarray(test.patients)
    boot = dict(n_resamples=settings.bootstrap_resamples, confidence=settings.confidence, seed=settings.bootstrap_seed)
    metrics: dict[str, Any] = summarize(labels, preds)
    metrics["intervals"] = {name: patient_bootstrap(fn, [labels, preds], patients, **boot).to_dict()
                            for name, fn in GRADE_METRICS.items()}
    metrics["grading"] = grading
    metrics["referable"] = screening(val.labels, val_probs, labels, probs, patients, settings, from_grade=2)
    metrics["sight_threatening"] = screening(val.labels, val_probs, labels, probs, patients, settings, from_grade=3)
    metrics["calibration"] = calibration_record(labels, probs, preds, patients, **boot)
    metrics["referral"] = referral_record(labels, probs, preds)
    metrics["bootstrap"] = {"unit": "patient", "patients": int(len(set(patients))),
                            "resamples": settings.bootstrap_resamples, "confidence": settings.confidence,
                            "seed": settings.bootstrap_seed}
    return metrics


def _temperature_scaling(decoder: Decoder, settings: EvalSettings, val_labels: np.ndarray, val_probs: np.ndarray,
                         test: Split, test_probs: np.ndarray, site: ScoredSet | None, metrics: dict[str, Any]
                         ) -> dict[str, Any]:
    """What a temperature fitted on validation would do to test's (and the site's) calibration, QWK and referable
    AUC (:func:`retinopathy.calibration.temperature_scaling_record`); reported, never applied to the grades above.
    Only for argmax grading of a classification head without the blend, where scaling cannot change a grade; so the
    unscaled ECE is the one ``metrics`` (test's, and the site's) already hold."""
    if decoder.head != "classification" or decoder.decode != "argmax" or settings.patient_blend:
        return {"fitted": False, "reason": "only for argmax grading of a classification head, without the blend"}
    sets = {"test": (test.labels, test_probs, np.asarray(test.patients))}
    unscaled = {"test": metrics["calibration"]["ece"]}
    if site is not None:
        sets["external"] = (site.labels, site.probs, site.patients)
        unscaled["external"] = metrics["external"]["calibration"]["ece"]
    boot = dict(n_resamples=settings.bootstrap_resamples, confidence=settings.confidence, seed=settings.bootstrap_seed)
    return {"fitted": True, **temperature_scaling_record(val_labels, val_probs, sets, unscaled_ece=unscaled, **boot)}


def score_external_site(
    model: Any, meta: dict[str, Any], decoder: Decoder, external: ExternalSettings, referable: dict[str, Any],
    settings: EvalSettings, device: Any, precision: str,
) -> tuple[dict[str, Any], ScoredSet]:
    """The external site's metrics (:func:`retinopathy.external.site_metrics`) and its predictions.

    Its photographs are cropped as the model's training set was and graded by the model's own decoding, each eye
    alone and without TTA; the referable operating points are the thresholds chosen on in-domain validation
    (``referable``: the test metrics' screening record), applied unchanged. Nothing is fitted on the site.

    Raises:
        ValueError: a photograph of the site could not be cropped (all named), or its label table is bad.
    """
    started = time.perf_counter()
    scored = score_set(model, meta, decoder, read_external(external.source, external.root), device, precision,
                       settings.batch_size, hint="the external site")
    points = {name: point["threshold"] for name, point in referable["operating_points"].items() if "threshold" in point}
    record = site_metrics(scored.labels, scored.preds, scored.probs, scored.patients,
                          resamples=settings.bootstrap_resamples, confidence=settings.confidence,
                          seed=settings.bootstrap_seed, operating_points=points)
    record["site"] = {
        **scored.record,
        "grading": "the model's decoding, each eye alone, no TTA; operating points from in-domain validation",
        "seconds": round(time.perf_counter() - started, 1),
    }
    return record, scored


def _predictions_frame(test: Split, preds: np.ndarray, probs: np.ndarray) -> pd.DataFrame:
    """The test predictions CSV: image, patient, actual and predicted grade, p0..p4 and p_referable."""
    return predictions_table(test.names, np.asarray(test.patients), test.labels, preds, probs)


def _summary_line(model_path: str | os.PathLike[str], metrics: dict[str, Any]) -> str:
    """One line for the terminal: test accuracy, kappa, macro-F1 and referable AUC, with intervals."""
    auc = metrics["referable"]["auc"]
    return (
        f"{model_path}: accuracy {metrics['accuracy']:.4f}, kappa {metrics['kappa']:.4f} "
        f"[{metrics['intervals']['kappa']['low']:.3f}, {metrics['intervals']['kappa']['high']:.3f}], "
        f"macro-F1 {metrics['macro_f1']:.4f}, referable AUC {auc['value']:.3f} [{auc['low']:.3f}, {auc['high']:.3f}]"
    )
