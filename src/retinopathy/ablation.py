"""Every grading setup of one trained model, side by side: the grading study's table (``studies/grading/``).

The evaluate stage scores the configured grading only. This module grades the same model every way the
pipeline offers (argmax or tuned cut-points, flips TTA or not, the two-eye blend or not), so that each
piece's contribution can be read off. Its validation figures come from a 2-fold split of the validation
patients (cut-points fitted on one half, scored on the other, and back), so tuning never scores itself;
its test figures fit on all of validation.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from retinopathy import GRADES
from retinopathy.data import class_weight_values, processed_dataset
from retinopathy.decoding import Decoder, PatientBlend
from retinopathy.evaluation import GRADE_METRICS, Split, fit_blend, grade_with, split_outputs
from retinopathy.inference import TTA, load_model
from retinopathy.precision import resolve_precision
from retinopathy.utils import select_device


def _grade_scores(labels: np.ndarray, preds: np.ndarray) -> dict[str, float]:
    return {name: round(float(fn(labels, preds)), 4) for name, fn in GRADE_METRICS.items()}


def _patient_folds(split: Split, seed: int) -> list[np.ndarray]:
    """Two halves of a split's images, by patient (both eyes in one half), seeded."""
    patients = np.asarray(split.patients)
    unique = np.random.default_rng(seed).permutation(np.unique(patients))
    first = np.isin(patients, unique[: len(unique) // 2])
    return [np.flatnonzero(first), np.flatnonzero(~first)]


def components(
    head: str, val: dict[str, Split], test: dict[str, Split], train: dict[str, Split], *, seed: int = 0,
    blend_c: float = 0.03, class_weights: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """Every grading setup of one model on validation (2-fold over patients) and test (fitted on validation).

    Args:
        head: the model's head.
        val, test, train: outputs per TTA setting (``"none"``, ``"flips"``); the blend is fitted on ``train``.
        blend_c, class_weights: the blend's regularisation and per-grade weights.
    """
    decodes = ["argmax", "expected"] if head == "classification" else ["expected"]
    rows = []
    for tta in val:
        try:
            blend: PatientBlend | None = fit_blend(head, train[tta], c=blend_c, class_weights=class_weights)
            blend_error = ""
        except ValueError as exc:  # e.g. a label fraction whose training images miss a grade
            blend, blend_error = None, str(exc)
        for decode in decodes:
            for blended in (False, True):
                decoder = Decoder(head=head, decode=decode)
                row: dict[str, Any] = {"tta": tta, "decode": "cut-points" if head == "regression" else decode, "patient_blend": blended}
                if blended and blend is None:
                    rows.append({**row, "error": blend_error})
                    continue
                use = blend if blended else None
                try:
                    folds = _patient_folds(val[tta], seed)
                    val_preds = np.empty(len(val[tta].labels), dtype=np.int64)
                    for fit_idx, score_idx in (folds, folds[::-1]):
                        val_preds[score_idx] = grade_with(decoder, val[tta].take(fit_idx), val[tta].take(score_idx), blend=use)[0]
                    test_preds = grade_with(decoder, val[tta], test[tta], blend=use)[0]
                except ValueError as exc:  # e.g. a validation half too small to tune cut-points
                    rows.append({**row, "error": str(exc)})
                    continue
                rows.append({
                    **row,
                    "val_2fold": _grade_scores(val[tta].labels, val_preds),
                    "test": _grade_scores(test[tta].labels, test_preds),
                    "val_predicted_grades": np.bincount(val_preds, minlength=len(GRADES)).tolist(),
                    "test_predicted_grades": np.bincount(test_preds, minlength=len(GRADES)).tolist(),
                })
    return rows


def model_components(
    model_path: str | os.PathLike[str], data_dir: str | os.PathLike[str], *, device: str = "auto", precision: str = "auto",
    batch_size: int = 64, num_workers: int = 0, seed: int = 0, blend_c: float = 0.03, class_weighting: str = "sqrt_inverse",
) -> list[dict[str, Any]]:
    """:func:`components` of the model file at ``model_path``: its outputs on every split under every TTA setting."""
    dev = select_device(device)
    model, meta = load_model(model_path, dev)
    resolved, _ = resolve_precision(precision, dev)
    splits = {split: split_outputs(model, meta, data_dir, split, dev, batch_size=batch_size, num_workers=num_workers,
                                   precision=resolved, ttas=tuple(TTA)) for split in ("train", "val", "test")}
    weights = class_weight_values(processed_dataset(data_dir, "train", None).labels, class_weighting)
    return components(meta["head"], splits["val"], splits["test"], splits["train"], seed=seed, blend_c=blend_c,
                      class_weights=weights)
