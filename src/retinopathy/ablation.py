"""Every grading setup of one trained model, side by side: the grading study's table (``studies/grading/``).

The evaluate stage scores the configured grading only. This module grades the same model every way the
pipeline offers (argmax or tuned cut-points, flips TTA or not, the two-eye blend or not), so that each
piece's contribution can be read off. Its validation figures come from a 2-fold split of the validation
patients (cut-points fitted on one half, scored on the other, and back), so tuning never scores itself;
its test figures fit on all of validation.

:func:`grade_network` is the grading study's stage ``grade@<seed>``: one network as trained and refitted at
each C of the study (:func:`retinopathy.refit.refit_on_training_images`, the train stage's refit, in memory),
each graded by :func:`components` and by its argmax arms (:func:`blend_arms`: no TTA, without and with the
two-eye blend at each C of the study). The argmax arms fit nothing on validation, so validation scores them
directly; their per-image grades feed the study's paired differences (:mod:`retinopathy.grading_summary`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from retinopathy import GRADES
from retinopathy.data import class_weights, processed_dataset
from retinopathy.decoding import Decoder, PatientBlend
from retinopathy.evaluation import GRADE_METRICS, Split, fit_blend, grade_with, split_outputs
from retinopathy.grading_study import SPLITS, StudyAxes, StudyLayout, arm_name, machine, setting_label
from retinopathy.inference import load_model
from retinopathy.params import ParamsError, get
from retinopathy.precision import resolve_precision
from retinopathy.refit import refit_on_training_images
from retinopathy.settings import CLASS_WEIGHTING, PRECISIONS, TTA
from retinopathy.utils import atomic_path, select_device, write_json


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
    blend_c: float = 0.03, weights: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """Every grading setup of one model on validation (2-fold over patients) and test (fitted on validation).

    Args:
        head: the model's head.
        val, test, train: outputs per TTA setting (``"none"``, ``"flips"``); the blend is fitted on ``train``.
        blend_c, weights: the blend's regularisation and per-grade weights (:func:`retinopathy.data.class_weights`).
    """
    decodes = ["argmax", "expected"] if head == "classification" else ["expected"]
    rows = []
    for tta in val:
        try:
            blend: PatientBlend | None = fit_blend(head, train[tta], c=blend_c, weights=weights)
            blend_error = ""
        except ValueError as exc:  # e.g. a label fraction whose training images miss a grade
            blend, blend_error = None, str(exc)
        for decode in decodes:
            for blended in (False, True):
                decoder = Decoder(head=head, decode=decode)
                row: dict[str, Any] = {"tta": tta, "decode": "cut-points" if head == "regression" else decode,
                                       "patient_blend": blended}
                if blended and blend is None:
                    rows.append({**row, "error": blend_error})
                    continue
                use = blend if blended else None
                try:
                    folds = _patient_folds(val[tta], seed)
                    val_preds = np.empty(len(val[tta].labels), dtype=np.int64)
                    for fit_idx, score_idx in (folds, folds[::-1]):
                        val_preds[score_idx] = grade_with(decoder, val[tta].take(fit_idx), val[tta].take(score_idx),
                                                          blend=use)[0]
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


def model_outputs(
    model: Any, meta: dict[str, Any], data_dir: str | os.PathLike[str], device: Any, *, precision: str = "fp32",
    batch_size: int = 64, num_workers: int = 0,
) -> dict[str, dict[str, Split]]:
    """A loaded model's outputs on every processed split under every TTA setting: ``{split: {tta: Split}}``."""
    return {split: split_outputs(model, meta, data_dir, split, device, batch_size=batch_size, num_workers=num_workers,
                                 precision=precision, ttas=tuple(TTA)) for split in ("train", "val", "test")}


def model_components(
    model_path: str | os.PathLike[str], data_dir: str | os.PathLike[str], *, device: str = "auto",
    precision: str = "auto", batch_size: int = 64, num_workers: int = 0, seed: int = 0, blend_c: float = 0.03,
    class_weighting: str = "sqrt_inverse",
) -> list[dict[str, Any]]:
    """:func:`components` of the model file at ``model_path``: its outputs on every split under every TTA setting."""
    dev = select_device(device)
    model, meta = load_model(model_path, dev)
    resolved, _ = resolve_precision(precision, dev)
    splits = model_outputs(model, meta, data_dir, dev, precision=resolved, batch_size=batch_size,
                           num_workers=num_workers)
    weights = class_weights(processed_dataset(data_dir, "train", None).labels, class_weighting)
    return components(meta["head"], splits["val"], splits["test"], splits["train"], seed=seed, blend_c=blend_c,
                      weights=weights)


# ---------------------------------------------------------------------------------------------------------------
# Stage grade@<seed>: the network as trained and refitted, graded every way, and the argmax arms' grades.


@dataclass(frozen=True)
class GradeSettings:
    """What grading one network reads from the project's params.yaml."""

    class_weighting: str = "sqrt_inverse"  # each grade's weight in the refit and the blend, as in the training loss
    train_batch_size: int = 32  # batch_size: the refit's pass over the training images, as the train stage makes it
    batch_size: int = 64  # evaluate.batch_size: every other pass
    blend_c: float = 0.03  # evaluate.blend_c: the blend of the ablation's rows (the study's blend_c list is separate)
    num_workers: int = 0
    device: str = "auto"
    precision: str = "auto"
    folds_seed: int = 0  # the ablation's 2-fold split of the validation patients


def grade_settings(params: dict[str, Any]) -> GradeSettings:
    """:class:`GradeSettings` from the project's params.yaml (ParamsError naming a bad key)."""
    blend_c = get(params, "evaluate.blend_c", float)
    if not blend_c > 0:
        raise ParamsError(f"params.yaml: key 'evaluate.blend_c' must be positive, got {blend_c}")
    return GradeSettings(
        class_weighting=get(params, "class_weighting", str, choices=CLASS_WEIGHTING),
        train_batch_size=get(params, "batch_size", int), batch_size=get(params, "evaluate.batch_size", int),
        blend_c=blend_c, num_workers=get(params, "num_workers", int), device=get(params, "device", str),
        precision=get(params, "precision", str, choices=PRECISIONS),
    )


def _graded_frame(split: str, outputs: Split, grades: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"split": split, "image": outputs.names, "patient": outputs.patients, "actual": outputs.labels,
                         "predicted": grades})


def blend_arms(
    refit: str, outputs: dict[str, Split], blend_cs: Sequence[float], weights: np.ndarray | None,
) -> list[tuple[dict[str, Any], pd.DataFrame | None]]:
    """The argmax arms of one network (``outputs``: un-flipped train, val and test): no blend, then the blend at
    each C, fitted on the training outputs. Each: its record (scores, predicted-grade counts) and its per-image
    grades on validation and test; an arm whose blend cannot be fitted has an ``error`` and no grades."""
    argmax = Decoder("classification", "argmax")  # fits nothing on validation, so validation is scored directly
    arms: list[tuple[dict[str, Any], pd.DataFrame | None]] = []
    for c in (None, *blend_cs):
        entry: dict[str, Any] = {"refit": refit, "blend": setting_label(c)}
        blend = None
        if c is not None:
            try:
                blend = fit_blend("classification", outputs["train"], c=c, weights=weights)
            except ValueError as exc:  # e.g. training images missing a grade
                arms.append(({**entry, "error": str(exc)}, None))
                continue
            entry["partner_to_own_weight"] = blend.to_dict().get("partner_to_own_weight")
        grades = {split: grade_with(argmax, outputs["val"], outputs[split], blend=blend)[0] for split in SPLITS}
        for split in SPLITS:
            entry[split] = _grade_scores(outputs[split].labels, grades[split])
            entry[f"{split}_predicted_grades"] = np.bincount(grades[split], minlength=len(GRADES)).tolist()
        frame = pd.concat([_graded_frame(split, outputs[split], grades[split]) for split in SPLITS], ignore_index=True)
        arms.append((entry, frame))
    return arms


def _refit(model: Any, meta: dict[str, Any], data_dir: str | os.PathLike[str], device: torch.device, c: float | None, *,
           weights: np.ndarray | None, settings: GradeSettings, precision: str) -> dict[str, Any]:
    """Refit ``model``'s last layer in place at ``c``, as the train stage does; None leaves it as trained."""
    if c is None:
        return {"applied": False, "reason": "the network as trained (the study's baseline)"}
    return refit_on_training_images(model, data_dir, device, mean=meta["mean"], std=meta["std"],
                                    class_weights=weights, c=c, batch_size=settings.train_batch_size,
                                    num_workers=settings.num_workers, precision=precision)


def grade_network(
    model_path: str | os.PathLike[str], data_dir: str | os.PathLike[str], axes: StudyAxes, *,
    settings: GradeSettings = GradeSettings(),
) -> tuple[dict[str, Any], dict[str, pd.DataFrame]]:
    """One network graded at each refit of ``axes``: the ablation's rows and the argmax arms.

    Returns:
        The record (``refits``: what each refit did; ``components``: :func:`components`
        rows, each with its ``refit``; ``arms``: :func:`blend_arms` records; ``machine``, ``seconds``) and the
        argmax arms' per-image grades by :func:`arm_name`.

    Raises:
        ValueError: for a model file without a classification head.
    """
    started = time.perf_counter()
    dev = select_device(settings.device)
    precision, _ = resolve_precision(settings.precision, dev)
    weights = class_weights(processed_dataset(data_dir, "train", None).labels, settings.class_weighting)
    record: dict[str, Any] = {"model": str(model_path), "class_weighting": settings.class_weighting,
                              "components_blend_c": settings.blend_c, "refits": [], "components": [], "arms": []}
    predictions: dict[str, pd.DataFrame] = {}
    for c in axes.refits:
        model, meta = load_model(model_path, dev)  # afresh for each refit: the refit replaces fc in place
        if meta["head"] != "classification":
            raise ValueError(f"{model_path} has a {meta['head']} head; the grading study refits and grades a "
                             "classification head")
        refit = setting_label(c)
        record["refits"].append({"refit": refit, **_refit(model, meta, data_dir, dev, c, weights=weights,
                                                           settings=settings, precision=precision)})
        splits = model_outputs(model, meta, data_dir, dev, precision=precision, batch_size=settings.batch_size,
                               num_workers=settings.num_workers)
        rows = components("classification", splits["val"], splits["test"], splits["train"], seed=settings.folds_seed,
                          blend_c=settings.blend_c, weights=weights)
        record["components"] += [{"refit": refit, **row} for row in rows]
        for entry, frame in blend_arms(refit, {split: splits[split]["none"] for split in splits}, axes.blend_cs,
                                       weights):
            record["arms"].append(entry)
            if frame is not None:
                predictions[arm_name(entry["refit"], entry["blend"])] = frame
    record.update(machine=machine(), precision=precision, seconds=round(time.perf_counter() - started, 1))
    return record, predictions


def write_grading(layout: StudyLayout, name: str, record: dict[str, Any], predictions: dict[str, pd.DataFrame]) -> None:
    """The grade stage's outputs: the record (JSON) and a folder of one CSV per arm, each written atomically."""
    write_json(layout.grading(name), {"network": name, **record})
    with atomic_path(layout.predictions(name), replace_dir=True) as folder:
        folder.mkdir()
        for arm, frame in predictions.items():
            frame.to_csv(folder / f"{arm}.csv", index=False)
