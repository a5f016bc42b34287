"""External validation: score a trained model on a labelled set it never saw (``retinopathy evaluate``).

A score on the development set says little about the next clinic: a model near 0.97 QWK in-domain (APTOS
2019) scored about 0.55 on Messidor and 0.72 on IDRiD (BloodAxe, APTOS 2019 10th place). This module reads
the labelled sets a user may hold, on the ICDR 0-4 scale the project's grades use, crops every photograph as
the model's training set was cropped, and writes the same metrics as the evaluate stage, with intervals
over patients, and a predictions CSV.

Layouts (``SOURCE``):

- ``course``, ``kaggle``, ``aptos``: the readers of :mod:`retinopathy.sources`; ``course`` scores its test
  split, the others every labelled row (they have no test split of their own).
- ``idrid`` (IDRiD, disease grading): ``B. Disease Grading/2. Groundtruths/a. IDRiD_Disease Grading_Training
  Labels.csv`` and ``b. IDRiD_Disease Grading_Testing Labels.csv``, columns ``Image name``, ``Retinopathy
  grade`` (and ``Risk of macular edema `` with its trailing space, not used), images ``B. Disease Grading/1.
  Original Images/a. Training Set/<name>.jpg`` and ``b. Testing Set/``. One image per eye and no patient key:
  each image is its own patient. Both sets number from ``IDRiD_001``, so an image is named ``<set>/<name>``.
- ``messidor2`` (Messidor-2 with the adjudicated grades of Krause et al. 2018): ``messidor_data.csv``,
  columns ``image_id``, ``adjudicated_dr_grade``, ``adjudicated_dme``, ``adjudicated_gradable``; images found
  by ``image_id`` anywhere under the root (``.png`` and ``.JPG``, any case). Rows with
  ``adjudicated_gradable == 0`` have no grade: they are left out and counted. Where ``messidor-2.csv`` (the
  examination list: the two images of an examination on one row) is under the root, the two images form one
  patient; otherwise each image is its own patient. The output says which.

Every problem in a label table (a grade outside 0..4, a missing column, a duplicate name, an image that is not
on disk) is named with its file and row, all in one error, before anything is written.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from retinopathy.settings import EXTERNAL_SOURCES

IDRID_DIR = Path("B. Disease Grading")
IDRID_SETS = {
    "train": ("2. Groundtruths/a. IDRiD_Disease Grading_Training Labels.csv", "1. Original Images/a. Training Set"),
    "test": ("2. Groundtruths/b. IDRiD_Disease Grading_Testing Labels.csv", "1. Original Images/b. Testing Set"),
}
MESSIDOR_LABELS = "messidor_data.csv"
MESSIDOR_EXAMS = "messidor-2.csv"
MESSIDOR_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


class ExternalSetError(ValueError):
    """Problems in an external set's label table or images; the message names each file and row."""


@dataclass
class ExternalSet:
    """The labelled photographs of one external set: ``frame`` has ``image``, ``level``, ``path`` and ``patient``."""

    source: str
    root: Path
    frame: pd.DataFrame
    patients: str  # how patients were formed, in words
    left_out: dict[str, int] = field(default_factory=dict)  # rows left out, by reason


def _problem_error(root: Path, problems: list[str]) -> ExternalSetError:
    return ExternalSetError(f"{len(problems)} problem(s) in the external set under {root}:\n  " + "\n  ".join(problems))


def _grades(values: pd.Series, images: pd.Series, rows: np.ndarray, source: str, problems: list[str]) -> np.ndarray:
    """``values`` as int grades 0..4; each other value is a problem naming its file row (``rows``) and image."""
    numeric = pd.to_numeric(values.str.strip(), errors="coerce")
    bad = (numeric.isna() | ~numeric.isin(range(5))).to_numpy()
    for i in np.flatnonzero(bad):
        problems.append(f"{source}, row {rows[i]}: {images.iat[i]!r} has grade {values.iat[i]!r}, "
                        "not one of 0..4 on the ICDR scale")
    return numeric.where(~bad, -1).astype("int64").to_numpy()


def _read_table(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    """A CSV with a header, every cell a string, column names stripped (IDRiD's header has trailing spaces)."""
    if not path.is_file():
        raise FileNotFoundError(f"label file not found: {path}")
    # Blank lines are kept (and dropped below), so that index + 2 is each row's line in the file.
    frame = pd.read_csv(path, dtype=str, encoding="utf-8-sig", skip_blank_lines=False, keep_default_na=False)
    frame.columns = [str(c).strip() for c in frame.columns]
    frame = frame[(frame != "").any(axis=1)] if len(frame.columns) else frame
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ExternalSetError(f"{path}: needs columns {list(columns)}, has {[c for c in frame.columns if c]}")
    return frame


def _duplicates(images: pd.Series, rows: np.ndarray, source: str, problems: list[str]) -> None:
    """A problem for each image name listed more than once in one table, with its file rows."""
    names = images.reset_index(drop=True)
    for name, at in names[names.duplicated(keep=False)].groupby(names).groups.items():
        problems.append(f"{source}: image {name!r} is listed more than once, at rows "
                        + ", ".join(str(rows[i]) for i in at))


def _missing_images(frame: pd.DataFrame, rows: np.ndarray, source: str, problems: list[str]) -> None:
    """A problem for each row whose image is not on disk, naming the file row (``rows``) and image."""
    for i, path in enumerate(frame["path"]):
        if not path or not Path(path).is_file():
            problems.append(f"{source}, row {rows[i]}: image {frame['image'].iat[i]!r} not found"
                            + (f" ({path})" if path else " under the root"))


def read_idrid(root: Path, sets: tuple[str, ...] = ("train", "test")) -> ExternalSet:
    """IDRiD's disease-grading part: both sets unless ``sets`` says otherwise; each image its own patient."""
    frames, problems = [], []
    for name in dict.fromkeys(sets):  # each set once
        labels, images = IDRID_SETS[name]
        path = root / IDRID_DIR / labels
        table = _read_table(path, ("Image name", "Retinopathy grade"))
        table = table[table["Image name"].str.strip() != ""]  # the shipped files end in empty rows
        rows = table.index.to_numpy() + 2  # file rows: the header is row 1
        names = table["Image name"].str.strip()
        # Each set numbers its images from IDRiD_001: the set is part of every image's name.
        frame = pd.DataFrame({"image": [f"{name}/{image}" for image in names]})
        frame["level"] = _grades(table["Retinopathy grade"], names, rows, str(path), problems)
        folder = root / IDRID_DIR / images
        frame["path"] = [str(folder / f"{image}.jpg") for image in names]
        _duplicates(names, rows, str(path), problems)
        _missing_images(frame.assign(image=names.to_numpy()), rows, str(path), problems)
        frames.append(frame)
    if problems:
        raise _problem_error(root, problems)
    frame = pd.concat(frames, ignore_index=True)
    frame["patient"] = frame["image"]
    return ExternalSet("idrid", root, frame, "each image is its own patient (IDRiD has one image per eye and no "
                       "patient key); images are named <set>/<Image name>, as each set numbers from IDRiD_001")


def _find_images(root: Path) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    """Every image file under ``root`` (walked in sorted order) by its name and by its name without the suffix,
    lower-cased; and the keys that more than one file answers to."""
    found: dict[str, Path] = {}
    clashes: dict[str, list[Path]] = {}
    for parent, folders, files in os.walk(root):
        folders[:] = sorted(f for f in folders if not f.startswith("."))
        for name in sorted(files):
            if Path(name).suffix.lower() not in MESSIDOR_SUFFIXES:
                continue
            path = Path(parent) / name
            for key in dict.fromkeys((name.lower(), Path(name).stem.lower())):
                if key in found:
                    clashes.setdefault(key, [found[key]]).append(path)
                else:
                    found[key] = path
    return found, clashes


def _messidor_patients(root: Path, images: pd.Series) -> tuple[list[str], str]:
    """One patient per examination where ``messidor-2.csv`` pairs the images, else one per image."""
    exams = next(iter(sorted(root.rglob(MESSIDOR_EXAMS))), None)
    if exams is None:
        return list(images), f"each image is its own patient ({MESSIDOR_EXAMS}, which pairs the two images of an " \
                             "examination, is not under the root)"
    table = pd.read_csv(exams, sep=None, engine="python", dtype=str, header=None, keep_default_na=False)
    exam_of: dict[str, str] = {}
    for row in table.itertuples(index=False):
        names = [str(v).strip() for v in row[:2] if str(v).strip()]
        for name in names:
            exam_of[name.lower()] = exam_of[Path(name).stem.lower()] = names[0]
    patients = [exam_of.get(name.lower(), exam_of.get(Path(name).stem.lower(), name)) for name in images]
    paired = sum(name.lower() in exam_of or Path(name).stem.lower() in exam_of for name in images)
    return patients, f"the two images of an examination form one patient ({exams}); {paired} of {len(images)} " \
                     "images were found there, the others are each their own patient"


def read_messidor2(root: Path) -> ExternalSet:
    """Messidor-2 with adjudicated grades; ungradable rows left out and counted."""
    path = root / MESSIDOR_LABELS
    table = _read_table(path, ("image_id", "adjudicated_dr_grade", "adjudicated_gradable"))
    table = table.assign(image=table["image_id"].str.strip())
    gradable = table["adjudicated_gradable"].str.strip()
    problems = [f"{path}, row {i + 2}: {table['image'].iat[i]!r} has adjudicated_gradable "
                f"{gradable.iat[i]!r}, not 0 or 1" for i in np.flatnonzero(~gradable.isin(["0", "1", "0.0", "1.0"]))]
    ungradable = gradable.isin(["0", "0.0"])
    kept = table[~ungradable]
    rows = kept.index.to_numpy() + 2  # file rows: the header is row 1
    frame = pd.DataFrame({"image": kept["image"].to_numpy()})
    frame["level"] = _grades(kept["adjudicated_dr_grade"], frame["image"], rows, str(path), problems)
    found, clashes = _find_images(root)
    keys = [name.lower() if name.lower() in found else Path(name).stem.lower() for name in frame["image"]]
    frame["path"] = [str(found[key]) if key in found else "" for key in keys]
    for i, key in enumerate(keys):
        if key in clashes:
            problems.append(f"{path}, row {rows[i]}: {frame['image'].iat[i]!r} matches more than one file under the "
                            f"root: {', '.join(map(str, clashes[key]))}")
    _missing_images(frame, rows, str(path), problems)
    _duplicates(frame["image"], rows, str(path), problems)
    if problems:
        raise _problem_error(root, problems)
    patients, how = _messidor_patients(root, frame["image"])
    frame["patient"] = patients
    return ExternalSet("messidor2", root, frame, how, {"ungradable (adjudicated_gradable == 0)": int(ungradable.sum())})


def read_known(source: str, root: Path) -> ExternalSet:
    """A course, Kaggle or APTOS layout through the pipeline's own readers; patients from ``<id>_left/right``."""
    from retinopathy.data import patient_of
    from retinopathy.sources import read_source

    tables = read_source(source, root)
    frame = tables["test"] if source == "course" else tables["train"]
    frame = frame.assign(patient=[patient_of(name) for name in frame["image"]]).reset_index(drop=True)
    # The course's lists have no header (row 1 is the first image); Kaggle's and APTOS's CSVs have one.
    table, rows = (("test_img.csv", np.arange(len(frame)) + 1) if source == "course" else
                   ("trainLabels.csv" if source == "kaggle" else "train.csv", np.arange(len(frame)) + 2))
    problems: list[str] = []
    _missing_images(frame, rows, str(root / table), problems)
    if problems:
        raise _problem_error(root, problems)
    split = "its test split" if source == "course" else "every labelled row"
    paired = int(frame["patient"].duplicated(keep=False).sum())
    how = ("both eyes of a patient (<id>_left, <id>_right) form one patient" if paired else
           "each image is its own patient (no <id>_left/<id>_right names)")
    return ExternalSet(source, root, frame, f"{split}; {how}")


def read_external(source: str, root: str | os.PathLike[str], *, idrid_sets: tuple[str, ...] = ("train", "test")
                  ) -> ExternalSet:
    """The external set of ``source`` under ``root``.

    Raises:
        ValueError: an unknown ``source`` (the grade scale of any other set is not known), naming the choices;
            every problem of the label table or the images (:class:`ExternalSetError`).
        FileNotFoundError: a missing root or label file, named.
    """
    root = Path(root)
    if source not in EXTERNAL_SOURCES:
        raise ValueError(f"unknown source {source!r}: its grade scale is not known; choose one of "
                         f"{list(EXTERNAL_SOURCES)} (all grade on the ICDR 0-4 scale)")
    if not root.is_dir():
        raise FileNotFoundError(f"--root {root} is not a folder")
    if source == "idrid":
        return read_idrid(root, idrid_sets)
    if source == "messidor2":
        return read_messidor2(root)
    return read_known(source, root)


def evaluate_external(
    model_path: str | os.PathLike[str], data: ExternalSet, *, out: str | os.PathLike[str],
    predictions: str | os.PathLike[str], device: str = "auto", batch_size: int = 32, resamples: int = 1000,
    skip_bad_images: bool = False,
) -> dict[str, Any]:
    """Score the model on ``data``; write the metrics JSON (``out``) and the predictions CSV.

    The grades follow the model's own decoding; referable sensitivity and specificity are at P(referable) >= 0.5
    (the model file holds no threshold chosen on in-domain validation). Intervals: patient bootstrap for the grade
    metrics, the AUC and the expected calibration error, :func:`retinopathy.statistics.proportion_interval` for
    sensitivity and specificity. Also the reliability diagram's bins and the referral curve
    (:mod:`retinopathy.calibration`). A model trained on the embedded synthetic set, or one that does not say what it
    was trained on, is named on stderr first (:func:`retinopathy.inference.training_data_warning`).

    Raises:
        ValueError: a photograph without a field of view or unreadable (all named), unless ``skip_bad_images``.
    """
    from retinopathy.inference import grading_precision, load_model, model_decoder, training_data_warning
    from retinopathy.utils import select_device, write_csv, write_json

    started = time.perf_counter()
    dev = select_device(device)
    model, meta = load_model(model_path, dev)
    if (warning := training_data_warning(meta, model_path)) is not None:
        print(warning, file=sys.stderr)
    decoder = model_decoder(meta)
    precision, _ = grading_precision(meta, dev, model_path=model_path)
    scored = score_set(model, meta, decoder, data, dev, precision, batch_size, skip_bad_images=skip_bad_images,
                       hint="nothing was written; --skip-bad-images leaves them out")
    metrics = site_metrics(scored.labels, scored.preds, scored.probs, scored.patients, resamples=resamples)
    metrics["external"] = {**scored.record, "model": str(model_path), "precision": precision,
                           "seconds": round(time.perf_counter() - started, 1)}
    write_csv(predictions, scored.table())
    write_json(out, metrics)
    return metrics


@dataclass
class ScoredSet:
    """A labelled set's photographs as a model graded them: one entry per photograph it could crop."""

    images: np.ndarray
    patients: np.ndarray
    labels: np.ndarray
    preds: np.ndarray
    probs: np.ndarray  # p0..p4
    record: dict[str, Any]  # what was scored: source, root, images, patients, how patients were formed, left out

    def table(self) -> pd.DataFrame:
        """The predictions CSV's rows (:func:`predictions_table`)."""
        return predictions_table(self.images, self.patients, self.labels, self.preds, self.probs)


def score_set(model: Any, meta: dict[str, Any], decoder: Any, data: ExternalSet, device: Any, precision: str,
              batch_size: int, *, skip_bad_images: bool = False, hint: str = "") -> ScoredSet:
    """Every photograph of ``data`` cropped as the model's training set was (:func:`score_photographs`) and graded by
    ``decoder``.

    Raises:
        ExternalSetError: photographs that could not be cropped, all named (with ``hint``), unless
            ``skip_bad_images``, which leaves them out and counts them; no photograph left to score.
    """
    kept, raw, failed = score_photographs(model, meta, decoder.head, data.frame["path"], device, precision, batch_size)
    note = f" ({hint})" if hint else ""
    if failed and not skip_bad_images:
        raise ExternalSetError(f"{len(failed)} photograph(s) under {data.root} could not be cropped{note}:\n  "
                               + "\n  ".join(failed))
    if not kept:
        raise ExternalSetError(f"no photograph under {data.root} could be scored{note}")
    graded = data.frame.iloc[kept].reset_index(drop=True)
    patients = graded["patient"].to_numpy()
    record = {"source": data.source, "root": str(data.root), "images": int(len(graded)),
              "patients": int(len(set(patients))), "patients_formed": data.patients,
              "left_out": {**data.left_out, **({"could not be cropped": len(failed)} if failed else {})}}
    return ScoredSet(graded["image"].to_numpy(), patients, graded["level"].to_numpy(), decoder.grades(raw),
                     decoder.probabilities(raw), record)


def score_photographs(model: Any, meta: dict[str, Any], head: str, paths: pd.Series, device: Any, precision: str,
           batch_size: int) -> tuple[list[int], np.ndarray, list[str]]:
    """The head's outputs of every photograph that can be cropped as the model's training set was, ``batch_size``
    at a time with a progress bar: their row positions, the outputs, and why each of the others failed."""
    import torch
    from tqdm.auto import tqdm

    from retinopathy.inference import outputs, photograph_input
    from retinopathy.preprocessing import image_failure

    kept, scores, failed = [], [], []
    with tqdm(total=len(paths), desc="score", unit="img", dynamic_ncols=True) as bar:
        for start in range(0, len(paths), batch_size):
            tensors = []
            for i in range(start, min(start + batch_size, len(paths))):
                try:
                    tensors.append(photograph_input(paths.iat[i], meta)[0])
                    kept.append(i)
                except Exception as exc:  # unreadable, no field of view: named by the caller
                    failed.append(image_failure(Path(paths.iat[i]), exc))
            if tensors:
                scores.append(outputs(model, torch.stack(tensors), device, precision=precision, head=head).numpy())
            bar.update(min(batch_size, len(paths) - start))
    return kept, (np.concatenate(scores) if scores else np.zeros((0, 5))), failed


def site_metrics(labels: np.ndarray, preds: np.ndarray, probs: np.ndarray, patients: np.ndarray, *,
                 resamples: int = 1000, confidence: float = 0.95, seed: int = 0,
                 operating_points: dict[str, float] | None = None) -> dict[str, Any]:
    """The grade metrics with patient-bootstrap intervals; referable screening at P(referable) >= 0.5 and at each
    of ``operating_points`` (name: threshold, chosen elsewhere and applied unchanged); calibration; the referral
    curve."""
    from retinopathy.calibration import calibration_record, referral_record
    from retinopathy.evaluation import GRADE_METRICS
    from retinopathy.metrics import referable, referable_score, roc_auc, summarize
    from retinopathy.statistics import patient_bootstrap

    boot = dict(n_resamples=resamples, confidence=confidence, seed=seed)
    metrics: dict[str, Any] = summarize(labels, preds)
    metrics["intervals"] = {name: patient_bootstrap(fn, [labels, preds], patients, **boot).to_dict()
                            for name, fn in GRADE_METRICS.items()}
    y, score = referable(labels), referable_score(probs)
    metrics["referable"] = {
        "definition": "grade >= 2, scored by P(grade >= 2) = p2 + p3 + p4; called referable at >= 0.5",
        "positives": int(y.sum()), "negatives": int((1 - y).sum()),
        "auc": patient_bootstrap(roc_auc, [y, score], patients, **boot).to_dict() if 0 < y.sum() < len(y) else None,
        **_called(y, score >= 0.5, patients, confidence),
    }
    if operating_points:
        metrics["referable"]["operating_points"] = {
            name: {"threshold": round(float(t), 6), **_called(y, score >= t, patients, confidence)}
            for name, t in operating_points.items()}
    metrics["calibration"] = calibration_record(labels, probs, preds, patients, **boot)
    metrics["referral"] = referral_record(labels, probs, preds)
    return metrics


def _called(y: np.ndarray, called: np.ndarray, patients: np.ndarray, confidence: float) -> dict[str, Any]:
    """Sensitivity and specificity of ``called`` against ``y``, with :func:`~retinopathy.statistics.proportion_interval`
    intervals (None where the set has no positives or no negatives)."""
    from retinopathy.statistics import proportion_interval

    return {
        "sensitivity": (proportion_interval(called[y == 1], patients[y == 1], confidence=confidence).to_dict()
                        if y.any() else None),
        "specificity": (proportion_interval(~called[y == 0], patients[y == 0], confidence=confidence).to_dict()
                        if (y == 0).any() else None),
    }


def predictions_table(images: Any, patients: Any, labels: np.ndarray, preds: np.ndarray, probs: np.ndarray
                      ) -> pd.DataFrame:
    """A predictions CSV's rows: image, patient, actual and predicted grade, p0..p4 and p_referable."""
    from retinopathy.metrics import referable_score

    table = pd.DataFrame({"image": np.asarray(images), "patient": np.asarray(patients), "actual": labels,
                          "predicted": preds})
    for grade in range(probs.shape[1]):
        table[f"p{grade}"] = probs[:, grade].round(5)
    table["p_referable"] = referable_score(probs).round(5)
    return table
