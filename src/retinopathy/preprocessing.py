"""Turn raw photographs into the processed set: field-of-view crop, resize, one PNG per image, in parallel.

Bad images (missing, corrupt or truncated, larger than :data:`retinopathy.images.MAX_PIXELS`,
or without a visible field of view) are all found in one pass. With ``on_bad_image="error"`` the set
is not written and one error lists every one of them; with ``"skip"`` they are left out. Either way
the report names them and gives the throughput of the run. Given a gradability gate
(:class:`retinopathy.quality.QualityGate`), each image's decoded frame also gets its verdict; the report counts
and lists the ungradable ones, and ``on_ungradable="skip"`` leaves them out of every split.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple, NoReturn, Protocol, Sequence

import numpy as np
import pandas as pd
from PIL import Image
from tqdm.auto import tqdm

from retinopathy import NUM_CLASSES
from retinopathy.data import keep_labelled_fraction, label_balance, patient_grades, patient_of, split_by_patient
from retinopathy.fundus import FieldOfView, crop_square, find_fov, local_average_subtraction
from retinopathy.images import open_rgb
from retinopathy.settings import BAD_IMAGE_POLICIES, LEAK_POLICIES, UNGRADABLE_POLICIES, QualityThresholds
from retinopathy.utils import atomic_path, write_json

# libjpeg decodes at 1/2, 1/4 or 1/8 scale for a fraction of the full cost. Asking for a shorter
# side of at least 1.25 x the output keeps the field of view (as tall as the frame, or taller
# where the camera cuts it) wider than the output; where it is not, the image is decoded again
# at full size, so the crop never loses resolution.
DRAFT_MARGIN = 1.25
# Errors list at most this many files per kind when the full list goes to the report.
MAX_LISTED = 50


@dataclass(frozen=True)
class CropSettings:
    """How every image is processed (the ``preprocess`` section of params.yaml).

    ``draft`` decodes large JPEGs at reduced scale (several times faster, same crop); it is not
    a params key, only a switch for measuring what it buys.
    """

    size: int = 64
    fov_threshold: int = 20
    graham: bool = False
    graham_sigma: float = 0.0333
    draft: bool = True

    def to_record(self) -> dict[str, Any]:
        """The settings that change the pixels (``draft`` does not), as written to stats.json and into each model."""
        return {"size": self.size, "fov_threshold": self.fov_threshold, "graham": self.graham,
                "graham_sigma": self.graham_sigma}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> "CropSettings":
        """The settings a :meth:`to_record` record holds (a model's ``preprocessing``), ``draft`` at its default."""
        return cls(**record)


class Processed(NamedTuple):
    """One image's outcome: a problem (``kind``, ``message``) or the output's per-channel sums (and the gate's
    verdict, when one was asked for)."""

    kind: str | None
    message: str | None
    sums: np.ndarray | None  # [sum over pixels, sum of squares] per channel, of 0-255 values; shape (2, 3)
    pixels: int
    gradable: bool | None = None  # None: no gate, or the image could not be processed
    reasons: tuple[str, ...] = ()  # why the gate calls it ungradable


class Gate(Protocol):
    """What preprocessing asks of the gradability gate (:class:`retinopathy.quality.QualityGate`)."""

    thresholds: QualityThresholds

    def __call__(self, image: Image.Image, fov: FieldOfView) -> Any:
        """The verdict on a decoded frame and its field of view: an object with ``gradable`` and ``reasons``."""


def default_workers() -> int:
    """The cores this process may use (fewer than ``os.cpu_count()`` under a CPU affinity mask)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def open_image(path: Path, *, min_side: int | None = None) -> tuple[Image.Image, bool]:
    """Decode ``path`` upright as 8-bit RGB (see :func:`retinopathy.images.open_rgb`); a JPEG at the smallest
    scale whose shorter side is at least ``min_side``.

    Returns:
        The image and whether it was decoded at reduced scale.

    Raises:
        FileNotFoundError: naming the missing file.
        ValueError: naming a corrupt, truncated or unreadable file.
    """
    return open_rgb(path, draft_side=min_side)


class Cropped(NamedTuple):
    """A photograph after :func:`crop_photograph`: the network's square input and where it came from."""

    image: Image.Image  # settings.size x settings.size, RGB, Graham-processed when the settings say so
    fov: FieldOfView  # the field of view in pixels of the decoded frame
    frame_size: tuple[int, int]  # (width, height) of the decoded frame: smaller than the file's for a draft JPEG


def decode_photograph(src: str | os.PathLike[str], settings: CropSettings) -> tuple[Image.Image, FieldOfView]:
    """Decode one photograph at the scale its crop needs (a JPEG at reduced scale where that keeps the field of view
    wider than the output), and find its field of view.

    Raises:
        FileNotFoundError: naming the missing file.
        ValueError: naming a corrupt, truncated or unreadable file, or one without a field of view.
    """
    min_side = math.ceil(DRAFT_MARGIN * settings.size) if settings.draft else None
    image, reduced = open_image(Path(src), min_side=min_side)
    fov = find_fov(image, threshold=settings.fov_threshold)
    if reduced and 2 * fov.radius < settings.size:
        image, _ = open_image(Path(src))
        fov = find_fov(image, threshold=settings.fov_threshold)
    return image, fov


def crop_frame(image: Image.Image, fov: FieldOfView, settings: CropSettings) -> Cropped:
    """A decoded frame (:func:`decode_photograph`) as the network's input: its field of view's square, resized, and
    Graham-processed when the settings say so."""
    frame_size = image.size
    image = crop_square(image, fov, settings.size)
    if settings.graham:
        image = local_average_subtraction(image, sigma_fraction=settings.graham_sigma)
    return Cropped(image, fov, frame_size)


def crop_photograph(src: str | os.PathLike[str], settings: CropSettings) -> Cropped:
    """Decode one photograph and turn it into the network's input: the one crop the processed set and grading share.

    Raises:
        FileNotFoundError: naming the missing file.
        ValueError: naming a corrupt, truncated or unreadable file, or one without a field of view.
    """
    return crop_frame(*decode_photograph(src, settings), settings)


def process_image(src: Path, dst: Path, settings: CropSettings, gate: Gate | None = None) -> Processed:
    """Crop, resize and save one image; return its problem instead of raising, so all can be listed.

    ``dst``'s folder is made where it is missing: an image name with folders (``clinicB/10_left``) is
    written to the same subfolders of its split's folder. A failure to write ``dst`` raises, naming it:
    it is the output's problem, not the photograph's. ``gate`` judges the frame as decoded for the crop, with the
    crop's field of view; its verdict is part of the outcome (the image is written whatever it says).
    """
    try:
        frame, fov = decode_photograph(src, settings)
        verdict = gate(frame, fov) if gate is not None else None
        image = crop_frame(frame, fov, settings).image
    except FileNotFoundError as exc:
        return Processed("missing", str(exc), None, 0)
    except Exception as exc:  # whatever one file makes the decoder or the crop raise is that file's problem,
        # not the run's
        dst.unlink(missing_ok=True)
        return Processed("unreadable", image_failure(src, exc), None, 0)
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        # zlib level 1: twice as fast as the default 6 for files ~15% larger.
        image.save(dst, format="PNG", compress_level=1)
    except OSError as exc:  # a full disk or a read-only folder stops the run instead of listing every image as bad
        raise OSError(f"cannot write the processed image {dst}: {exc}") from exc
    flat = np.asarray(image).reshape(-1, 3).astype(np.float64)
    sums = np.stack([flat.sum(axis=0), (flat**2).sum(axis=0)])
    gradable, reasons = (None, ()) if verdict is None else (bool(verdict.gradable), tuple(verdict.reasons))
    return Processed(None, None, sums, flat.shape[0], gradable, reasons)


def failure_reason(exc: Exception) -> str:
    """Why one file failed, in one line: the message of our own errors, the exception's type and message otherwise."""
    return str(exc) if isinstance(exc, (OSError, ValueError)) else f"{type(exc).__name__}: {exc}"


def image_failure(src: str | os.PathLike[str], exc: Exception) -> str:
    """One line naming ``src`` and why it could not be read or cropped (:func:`failure_reason`)."""
    reason = failure_reason(exc)
    return reason if str(src) in reason else f"{src}: {reason}"


def _process_job(job: tuple[Path, Path, CropSettings, Gate | None]) -> Processed:
    return process_image(*job)


def process_images(
    pairs: Sequence[tuple[Path, Path]], settings: CropSettings, *, workers: int = 0, desc: str = "preprocess",
    progress: bool = True, gate: Gate | None = None,
) -> list[Processed]:
    """Process ``(src, dst)`` pairs on ``workers`` processes (0: all cores) with a progress bar, each image judged by
    ``gate`` where one is given (:func:`process_image`).

    Returns:
        One outcome per pair, in order.
    """
    workers = workers or default_workers()
    jobs = [(Path(src), Path(dst), settings, gate) for src, dst in pairs]
    bar = {"desc": desc, "unit": "img", "disable": not progress}
    if workers == 1 or len(jobs) < 2:
        return [_process_job(job) for job in tqdm(jobs, **bar)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        chunk = max(1, min(64, len(jobs) // (workers * 8)))
        return list(tqdm(pool.map(_process_job, jobs, chunksize=chunk), total=len(jobs), **bar))


def assign_splits(
    tables: dict[str, pd.DataFrame], *, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, pd.DataFrame]:
    """Train, val and test (and ``unlabeled`` where there is a pool), every split by patient.

    A layout with a given test split (the course one) keeps it; otherwise ``test_fraction`` of the
    labelled patients is held out first. Validation is ``val_fraction`` of the patients that remain for
    training, each share to within half a patient (:func:`retinopathy.data.split_by_patient`).
    """
    train = tables["train"]
    if "test" in tables:
        test = tables["test"]
    else:
        train, test = _split(train, fraction=test_fraction, seed=seed, what="test (data.test_fraction)")
    train, val = _split(train, fraction=val_fraction, seed=seed, what="validation (data.val_fraction)")
    splits = {"train": train, "val": val, "test": test}
    if "unlabeled" in tables:
        splits["unlabeled"] = tables["unlabeled"]
    return splits


LABELLED_SPLITS = ("train", "val", "test")


# The splits a model is scored on: no eye of their patients may reach training or pretraining.
HELD_OUT_SPLITS = ("val", "test")


class SplitLeakError(ValueError):
    """Patients with eyes on both sides of a given split; the message lists them."""


def of_held_out_patients(images: pd.Series, splits: dict[str, pd.DataFrame]) -> dict[str, np.ndarray]:
    """For ``val`` and ``test``: which of ``images`` belong to a patient with an eye in that split
    (:func:`patient_of`)."""
    patients = images.astype(str).map(patient_of)
    return {split: patients.isin({patient_of(str(image)) for image in splits[split]["image"]}).to_numpy(dtype=bool)
            for split in HELD_OUT_SPLITS}


def split_leaks(splits: dict[str, pd.DataFrame]) -> list[dict[str, Any]]:
    """Patients whose eyes fall in more than one of train, val and test, each with its images per split.

    The patient is the part of the image name before ``_left``/``_right`` (:func:`patient_of`).
    """
    where: dict[str, dict[str, list[str]]] = {}
    for split in LABELLED_SPLITS:
        for image in splits.get(split, pd.DataFrame(columns=["image"]))["image"]:
            where.setdefault(patient_of(str(image)), {}).setdefault(split, []).append(str(image))
    return [{"patient": patient, **sides} for patient, sides in sorted(where.items()) if len(sides) > 1]


def resolve_split_leaks(
    splits: dict[str, pd.DataFrame], policy: str
) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """Apply ``data.on_split_leak`` and keep every validation and test patient out of the pretraining pool.

    ``error`` stops, listing the leaking patients; ``warn`` keeps the given split (so results stay
    comparable with others who use it) and lists them; ``resplit`` moves each leaking patient's
    eyes to test when one of them is there (the given test set stays whole), else to val. Whatever
    the policy, pool images of patients with an eye in validation or test are dropped: self-supervised
    pretraining on them would show the network the other eye of a patient it is scored on (validation
    chooses the epoch, the cut-points and the screening thresholds; test reports the results).

    Returns:
        The splits to process, and the report's ``split_leaks`` section.
    """
    if policy not in LEAK_POLICIES:
        raise ValueError(f"data.on_split_leak must be one of {list(LEAK_POLICIES)}, got {policy!r}")
    leaks = split_leaks(splits)
    if leaks and policy == "error":
        raise _split_leak_error(leaks)
    out, moved = _move_leaking_patients(splits, leaks) if leaks and policy == "resplit" else (dict(splits), [])
    pool_dropped = _drop_pool_images_of_held_out_patients(out)
    if leaks and policy == "warn":
        print(
            f"WARNING: {len(leaks)} patient(s) have eyes on both sides of the given split (kept as given, "
            f"data.on_split_leak: warn); they are listed under split_leaks in the preprocess report",
            file=sys.stderr,
        )
    report = {
        "policy": policy,
        "patient_count": len(leaks),
        "patients": leaks,
        "moved": moved,
        "pool_images_of_val_patients_dropped": pool_dropped["val"],
        "pool_images_of_test_patients_dropped": pool_dropped["test"],
    }
    return out, report


def _split_leak_error(leaks: list[dict[str, Any]]) -> SplitLeakError:
    """The error of ``on_split_leak: error``, naming the first 20 leaking patients and the images of each split."""
    lines = [", ".join(f"{split}: {', '.join(leak[split])}" for split in LABELLED_SPLITS if split in leak)
             for leak in leaks]
    shown = "\n    ".join(f"patient {leak['patient']!r}: {line}" for leak, line in list(zip(leaks, lines))[:20])
    more = f"\n    ... and {len(leaks) - 20} more" if len(leaks) > 20 else ""
    return SplitLeakError(
        f"{len(leaks)} patient(s) have eyes on both sides of the given split, so test scores would be inflated:"
        f"\n    {shown}{more}\n"
        "Set data.on_split_leak: warn to keep the split as given (listed in the report) or resplit to move them "
        "to one side."
    )


def _move_leaking_patients(
    splits: dict[str, pd.DataFrame], leaks: list[dict[str, Any]]
) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """``resplit``: each leaking patient's eyes moved to test when one is there, else to val; and each move, as
    ``"<image> (<from> -> <to>)"``."""
    out = dict(splits)
    moved: list[str] = []
    for leak in leaks:
        target = "test" if "test" in leak else "val"
        for split in LABELLED_SPLITS:
            if split in leak and split != target:
                frame = out[split]
                leaving = frame["image"].isin(leak[split])
                out[target] = pd.concat([out[target], frame[leaving]], ignore_index=True)
                out[split] = frame[~leaving].reset_index(drop=True)
                moved += [f"{image} ({split} -> {target})" for image in leak[split]]
    return out, moved


def _drop_pool_images_of_held_out_patients(splits: dict[str, pd.DataFrame]) -> dict[str, list[str]]:
    """Take the pool images of validation and test patients out of ``splits["unlabeled"]`` (in place, where there
    is a pool); the images dropped for each of ``val`` and ``test``."""
    if "unlabeled" not in splits:
        return {split: [] for split in HELD_OUT_SPLITS}
    pool = splits["unlabeled"]
    of_held_out = of_held_out_patients(pool["image"], splits)
    dropped = {split: pool.loc[mask, "image"].astype(str).tolist() for split, mask in of_held_out.items()}
    splits["unlabeled"] = pool[~np.logical_or.reduce(list(of_held_out.values()))].reset_index(drop=True)
    return dropped


def apply_label_fraction(
    splits: dict[str, pd.DataFrame], *, fraction: float, seed: int
) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """Keep ``data.label_fraction`` of the training patients; the rest join the unlabelled pool.

    Applied once validation and test are taken out (and split leaks resolved), so those two splits are
    the same at every fraction. Whole patients only, stratified by patient grade (the worse eye) and
    seeded (:func:`retinopathy.data.keep_labelled_fraction`). Set-aside images join ``unlabeled``, which
    self-supervised pretraining reads, so pretraining sees the same pictures at every fraction; those of a
    patient with an eye in validation or test (a given split kept with ``on_split_leak: warn``) are dropped
    instead, since the pool never holds an eye of a patient the model is scored on. At 1.0 the splits are
    returned unchanged.

    Returns:
        The splits, and the report's ``label_fraction`` section (patients and images kept and moved).
    """
    train = splits["train"]
    kept, aside = keep_labelled_fraction(train, fraction=fraction, seed=seed)
    of_held_out = of_held_out_patients(aside["image"], splits)
    dropped = np.logical_or.reduce(list(of_held_out.values()))
    grades_before, grades_kept = patient_grades(train), patient_grades(kept)
    report = {
        "fraction": fraction,
        "seed": seed,
        "stratified_by": "patient grade (the worse eye in train)",
        "train_patients": int(len(grades_before)),
        "train_images": int(len(train)),
        "kept_patients": int(len(grades_kept)),
        "kept_images": int(len(kept)),
        "patients_moved_to_pool": int(aside.loc[~dropped, "image"].map(patient_of).nunique()),
        "images_moved_to_pool": int((~dropped).sum()),
        "train_patients_per_grade": np.bincount(grades_before, minlength=NUM_CLASSES).tolist(),
        "kept_patients_per_grade": np.bincount(grades_kept, minlength=NUM_CLASSES).tolist(),
        **{f"set_aside_images_of_{split}_patients_dropped": aside.loc[mask, "image"].astype(str).tolist()
           for split, mask in of_held_out.items()},
    }
    if aside.empty:
        return splits, report
    out = dict(splits)
    out["train"] = kept
    pooled = aside[~dropped].assign(level=-1)
    pool = [splits["unlabeled"]] if "unlabeled" in splits else []
    out["unlabeled"] = pd.concat([*pool, pooled], ignore_index=True)
    return out, report


def _split(frame: pd.DataFrame, *, fraction: float, seed: int, what: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``split_by_patient``, with an error that says which split could not be made and why."""
    try:
        return split_by_patient(frame, fraction=fraction, seed=seed)
    except ValueError as exc:
        raise ValueError(
            f"cannot hold out {fraction:g} of the patients of {len(frame)} images for {what}: {exc} "
            "(choose a fraction that leaves at least one patient on each side)"
        ) from exc


def _bad_image_error(bad: list[dict], unlisted: Sequence[str], listed: int, report_path: Path | None) -> ValueError:
    """One error naming every bad image and unlisted file (up to ``MAX_LISTED`` each when a report has them all)."""
    cap = MAX_LISTED if report_path is not None else None
    sections = []
    for kind, title in (("missing", "listed but missing"),
                        ("unreadable", "corrupt, truncated, too large or without a field of view")):
        lines = [f"{b['split']} {b['image']!r}: {b['message']}" for b in bad if b["kind"] == kind]
        if lines:
            sections.append((f"{len(lines)} {title}", lines))
    if unlisted:
        sections.append((f"{len(unlisted)} image file(s) that no row names", list(unlisted)))
    text = []
    for title, lines in sections:
        more = [f"... and {len(lines) - cap} more (all in {report_path})"] if cap and len(lines) > cap else []
        text.append(f"{title}:\n    " + "\n    ".join(lines[:cap] + more))
    head = f"{len(bad)} of {listed} images could not be processed"
    if unlisted:
        head += f" and {len(unlisted)} image file(s) are not in the label tables"
    hint = "Fix or remove them, or set preprocess.on_bad_image: skip to leave them out (listed in the report)."
    return ValueError(f"{head}:\n  " + "\n  ".join(text) + f"\n{hint}")


Row = tuple[str, str, Path]  # (split, image name, source path) of one image to process


def build_processed_set(
    tables: dict[str, pd.DataFrame],
    *,
    out_dir: str | os.PathLike[str],
    balance_path: str | os.PathLike[str],
    settings: CropSettings,
    val_fraction: float,
    seed: int,
    workers: int = 0,
    test_fraction: float = 0.2,
    on_bad_image: str = "error",
    on_split_leak: str = "warn",
    unlisted: Sequence[str] = (),
    report_path: str | os.PathLike[str] | None = None,
    label_fraction: float = 1.0,
    gate: Gate | None = None,
    on_ungradable: str = "keep",
    data_source: dict[str, Any] | None = None,
) -> dict[str, int]:
    """Split by patient, process every image, write tables, stats, label balance and the report.

    ``out_dir`` gets ``<split>/<image>.png`` (in subfolders where the name has folders, ``clinicB/10_left``)
    and ``<split>.csv`` (image, level) for train, val, test (and ``unlabeled`` where there is a pool), plus
    ``stats.json`` with the training set's channel mean and std, the crop settings (``crop``) and ``data_source``
    (where the images came from), which every trained model copies. The folder appears only when the run succeeds.
    ``unlisted`` names image files that no table row names; they count as bad input like a missing or corrupt image.
    ``label_fraction`` keeps that share of the training patients and moves the rest to the pool
    (:func:`apply_label_fraction`). ``gate`` judges every image (the report's ``quality``); ``on_ungradable="skip"``
    leaves the ungradable ones out of every split.

    Returns:
        The number of images in each split.

    Raises:
        ValueError: with ``on_bad_image="error"``, listing every bad image and unlisted file; naming the policy
            when ``on_bad_image`` or ``on_ungradable`` is not one of its choices.
    """
    _check_policies(on_bad_image, on_ungradable, gate)
    # The splits: by patient, split leaks resolved, data.label_fraction of the training patients kept.
    splits = assign_splits(tables, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    report_path = Path(report_path) if report_path is not None else None
    splits, leaks = _resolve_leaks_or_report(splits, on_split_leak, report_path)
    splits, fraction_report = apply_label_fraction(splits, fraction=label_fraction, seed=seed)
    workers = workers or default_workers()
    rows = _image_rows(splits)
    # A folder left by an earlier run is replaced (DVC removes it before a rerun); one holding other files is refused.
    with atomic_path(out_dir, replace_dir=True) as tmp:
        # Crop every image, then stop on bad input or leave it out, as on_bad_image says.
        outcomes, bad, seconds = _process_rows(rows, tmp, list(splits), settings, workers, gate)
        report = _processing_report(rows, bad, unlisted, seconds, on_bad_image=on_bad_image, leaks=leaks,
                                    fraction_report=fraction_report, settings=settings, workers=workers)
        report["quality"] = quality_report(rows, outcomes, gate, on_ungradable)
        if on_bad_image == "error" and (bad or unlisted):
            _stop_on_bad_input(report, bad, unlisted, len(rows), report_path)
        # Bad images are left out (on_bad_image skip), and ungradable ones with on_ungradable skip.
        ungradable = _skipped_ungradable(tmp, report["quality"], on_ungradable)
        kept = _without_images(splits, {(b["split"], b["image"]) for b in bad}, ungradable)
        _write_tables(tmp, kept)
        _write_stats(tmp, rows, outcomes, settings, left_out=ungradable, data_source=data_source)
    return _finish(kept, report, out_dir=out_dir, balance_path=balance_path, report_path=report_path)


def _finish(
    kept: dict[str, pd.DataFrame], report: dict[str, Any], *, out_dir: str | os.PathLike[str],
    balance_path: str | os.PathLike[str], report_path: Path | None,
) -> dict[str, int]:
    """Outside the set: the label balance, the report (if any) and one line for the terminal; the split sizes."""
    _write_label_balance(balance_path, kept)
    counts = {split: len(frame) for split, frame in kept.items()}
    if report_path is not None:
        write_json(report_path, {"status": "ok", **report, "splits": counts})
    print(f"processed {report['images_processed']} images into {out_dir} at {report['images_per_second']} images/s "
          f"on {report['workers']} worker(s): {counts}{_left_out_note(report, report_path)}")
    return counts


def _check_policies(on_bad_image: str, on_ungradable: str, gate: Gate | None) -> None:
    """ValueError naming ``preprocess.on_bad_image`` or ``preprocess.on_ungradable`` when it is not one of its
    choices, or when ``on_ungradable="skip"`` has no gate to judge the images."""
    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise ValueError(f"preprocess.on_bad_image must be one of {list(BAD_IMAGE_POLICIES)}, got {on_bad_image!r}")
    if on_ungradable not in UNGRADABLE_POLICIES:
        raise ValueError(f"preprocess.on_ungradable must be one of {list(UNGRADABLE_POLICIES)}, got "
                         f"{on_ungradable!r}")
    if on_ungradable == "skip" and gate is None:
        raise ValueError("preprocess.on_ungradable: skip needs a gradability gate to judge the images (gate=...)")


def quality_report(
    rows: Sequence[Row], outcomes: Sequence[Processed], gate: Gate | None, on_ungradable: str
) -> dict[str, Any]:
    """The report's ``quality`` section: the gate's thresholds, the gradable and ungradable images per split, how
    many images each kind of reason (its text before the colon) refuses, and every ungradable image with its
    reasons. Images that could not be processed are not judged; without a gate, ``{"assessed": False}``."""
    if gate is None:
        return {"assessed": False}
    counts = {verdict: dict.fromkeys((split for split, _, _ in rows), 0) for verdict in ("gradable", "ungradable")}
    kinds: dict[str, int] = {}
    listed = []
    for (split, name, _), out in zip(rows, outcomes):
        if out.gradable is None:
            continue
        counts["gradable" if out.gradable else "ungradable"][split] += 1
        if not out.gradable:
            for kind in dict.fromkeys(reason.split(":")[0] for reason in out.reasons):
                kinds[kind] = kinds.get(kind, 0) + 1
            listed.append({"image": name, "split": split, "reasons": list(out.reasons)})
    return {
        "assessed": True,
        "on_ungradable": on_ungradable,
        "thresholds": asdict(gate.thresholds),
        "gradable_count": sum(counts["gradable"].values()),
        "ungradable_count": len(listed),
        **counts,
        "reasons": dict(sorted(kinds.items(), key=lambda item: (-item[1], item[0]))),
        "left_out": len(listed) if on_ungradable == "skip" else 0,
        "ungradable_images": listed,
    }


def _skipped_ungradable(folder: Path, quality: dict[str, Any], on_ungradable: str) -> set[tuple[str, str]]:
    """With ``on_ungradable="skip"``: the (split, image) of every ungradable image, its PNG removed from ``folder``;
    with ``keep``, none."""
    if on_ungradable != "skip":
        return set()
    skipped = {(item["split"], item["image"]) for item in quality["ungradable_images"]}
    for split, name in skipped:
        (folder / split / f"{name}.png").unlink(missing_ok=True)
    return skipped


def _left_out_note(report: dict[str, Any], report_path: Path | None) -> str:
    """The end of the run's line: the bad images left out, and the ungradable images kept or left out."""
    note = f", {report['bad_image_count']} bad image(s) left out" if report["bad_image_count"] else ""
    quality = report["quality"]
    if quality.get("ungradable_count"):
        where = f"; listed under quality in {report_path}" if report_path is not None else ""
        done = "left out" if quality["left_out"] else "kept"
        note += (f", {quality['ungradable_count']} ungradable image(s) {done} "
                 f"(preprocess.on_ungradable: {quality['on_ungradable']}{where})")
    return note


def _resolve_leaks_or_report(
    splits: dict[str, pd.DataFrame], policy: str, report_path: Path | None
) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """:func:`resolve_split_leaks`; when it stops on a leak, the report (if any) says so and lists the patients."""
    try:
        return resolve_split_leaks(splits, policy)
    except SplitLeakError:
        if report_path is not None:
            write_json(report_path, {"status": "stopped on split leak",
                                     "split_leaks": {"policy": policy, "patients": split_leaks(splits)}})
        raise


def _image_rows(splits: dict[str, pd.DataFrame]) -> list[Row]:
    """Every image to process, split by split in table order."""
    return [(split, name, Path(path))
            for split, frame in splits.items() for name, path in zip(frame["image"], frame["path"])]


def _process_rows(
    rows: Sequence[Row], folder: Path, splits: Sequence[str], settings: CropSettings, workers: int,
    gate: Gate | None = None,
) -> tuple[list[Processed], list[dict[str, Any]], float]:
    """Each row's image processed into ``folder/<split>/<image>.png`` (and judged by ``gate``, where one is given).

    Returns:
        Each row's outcome; the report's entry (split, image, path, kind, message) of each image that could not
        be processed; and the seconds the processing took.
    """
    for split in splits:
        (folder / split).mkdir(parents=True)
    start = time.perf_counter()
    outcomes = process_images([(src, folder / split / f"{name}.png") for split, name, src in rows], settings,
                              workers=workers, gate=gate)
    seconds = time.perf_counter() - start
    bad = [
        {"split": split, "image": name, "path": str(src), "kind": out.kind, "message": out.message}
        for (split, name, src), out in zip(rows, outcomes)
        if out.kind is not None
    ]
    return outcomes, bad, seconds


def _processing_report(
    rows: Sequence[Row], bad: list[dict[str, Any]], unlisted: Sequence[str], seconds: float, *, on_bad_image: str,
    leaks: dict[str, Any], fraction_report: dict[str, Any], settings: CropSettings, workers: int,
) -> dict[str, Any]:
    """The preprocess report: bad input, split leaks, the label fraction, and the run's throughput."""
    return {
        "on_bad_image": on_bad_image,
        "images_listed": len(rows),
        "images_processed": len(rows) - len(bad),
        "bad_image_count": len(bad),
        "bad_images": bad,
        "unlisted_file_count": len(unlisted),
        "unlisted_files": list(unlisted),
        "split_leaks": leaks,
        "label_fraction": fraction_report,
        "size": settings.size,
        "workers": workers,
        "seconds": round(seconds, 2),
        "images_per_second": round(len(rows) / seconds, 2) if seconds > 0 else None,
    }


def _stop_on_bad_input(
    report: dict[str, Any], bad: list[dict], unlisted: Sequence[str], listed: int, report_path: Path | None
) -> NoReturn:
    """Write the report (if any) as stopped and raise the error naming every bad image and unlisted file."""
    if report_path is not None:
        write_json(report_path, {"status": "stopped on bad input", **report})
    raise _bad_image_error(bad, unlisted, listed, report_path)


def _without_images(
    splits: dict[str, pd.DataFrame], bad: set[tuple[str, str]], ungradable: set[tuple[str, str]]
) -> dict[str, pd.DataFrame]:
    """Each split less its bad and its left-out ungradable images, each a (split, image) pair; ValueError when that
    leaves train, val or test empty."""
    dropped = bad | ungradable
    kept = {split: frame[[(split, name) not in dropped for name in frame["image"]]].reset_index(drop=True)
            for split, frame in splits.items()}
    empty = [split for split in ("train", "val", "test") if kept[split].empty]
    if empty:
        raise ValueError(f"no images left in split(s) {empty} after leaving out {len(bad)} bad image(s) and "
                         f"{len(ungradable)} ungradable image(s) (preprocess.on_ungradable: skip)")
    return kept


def _write_tables(folder: Path, splits: dict[str, pd.DataFrame]) -> None:
    """``<split>.csv`` in ``folder``: image and level (image only for the unlabelled pool)."""
    for split, frame in splits.items():
        columns = ["image"] if split == "unlabeled" else ["image", "level"]
        frame[columns].to_csv(folder / f"{split}.csv", index=False)


def _write_label_balance(path: str | os.PathLike[str], splits: dict[str, pd.DataFrame]) -> None:
    """The label balance of each labelled split (:func:`retinopathy.data.label_balance`), as JSON at ``path``."""
    write_json(path, {split: label_balance(frame["level"]) for split, frame in splits.items() if split != "unlabeled"})


def _write_stats(
    folder: Path, rows: Sequence[Row], outcomes: Sequence[Processed], settings: CropSettings, *,
    left_out: set[tuple[str, str]], data_source: dict[str, Any] | None,
) -> None:
    """``stats.json`` in ``folder``: the kept training images' channel mean and std, the crop settings, and where the
    images came from (``data_source``, None where unknown)."""
    train = [out for (split, name, _), out in zip(rows, outcomes)
             if split == "train" and out.kind is None and (split, name) not in left_out]
    mean, std = _channel_stats(np.sum([out.sums for out in train], axis=0), sum(out.pixels for out in train))
    stats = {"mean": mean, "std": std, "size": settings.size, "crop": settings.to_record(), "data_source": data_source}
    (folder / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")


def _channel_stats(sums: np.ndarray, pixels: int) -> tuple[list[float], list[float]]:
    """Mean and std per channel in [0, 1] from summed 0-255 values and their squares."""
    if pixels == 0:
        raise ValueError("cannot compute channel statistics of an empty image set")
    mean = sums[0] / pixels / 255.0
    std = np.sqrt(np.maximum(sums[1] / pixels / 255.0**2 - mean**2, 1e-12))
    return [round(float(m), 6) for m in mean], [round(float(s), 6) for s in std]
