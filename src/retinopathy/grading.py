"""Grade new photographs with a saved model: collect the inputs, predict, explain (Grad-CAM), write one CSV.

Every photograph takes the training path (:func:`retinopathy.inference.photograph_input`), in the arithmetic
the model was trained and evaluated in where the machine runs it natively
(:func:`retinopathy.inference.grading_precision`).
A photograph that cannot be read (not an image, truncated or corrupt, empty, too large, or anything else reading
it raises) is named on stderr with its reason and gets no row in the CSV; the others are still graded. Every
photograph that can be read first passes the gradability gate (:mod:`retinopathy.quality`): one that is not a
fundus photograph, or is one no grader could grade (under- or overexposed, out of focus, too little retina
visible), gets a row with ``gradable`` false, its ``quality_reasons`` and no grade, as screening systems answer
"ungradable", and is named on stderr too. Outputs never go over, into or around an input, the model or each other
(:func:`check_grading_outputs`), and an existing directory is never replaced by a file.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageDraw
from torch import nn
from tqdm.auto import tqdm

from retinopathy.decoding import Decoder
from retinopathy.images import open_rgb
from retinopathy.inference import (
    grading_precision,
    load_model,
    model_decoder,
    outputs,
    photograph_input,
    training_data_warning,
)
from retinopathy.preprocessing import Cropped, CropSettings, failure_reason, image_failure
from retinopathy.quality import GATE_DRAFT_SIDE, Quality, QualityThresholds, assess
from retinopathy.utils import OutputPathError, atomic_path, check_outputs_apart, select_device, write_csv

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".tif", ".tiff")
# A CSV list names its images in one column, or in a column with one of these headers.
LIST_COLUMNS = ("image", "path")
# Grad-CAM on the deepest residual stage (what the head sees, as in the Grad-CAM paper) whose map is at least
# MIN_CAM_SIDE cells wide: at the default 64 px input layer4 is 2x2, one blob per quadrant, so layer3 (4x4) is taken.
CAM_LAYERS = (("layer4", 32), ("layer3", 16), ("layer2", 8), ("layer1", 4))  # (name, stride)
MIN_CAM_SIDE = 4
# Share of the photograph kept under the heatmap (torchcam's alpha).
HEATMAP_ALPHA = 0.5
TABLE_ROWS = 20


@dataclass(frozen=True)
class Failure:
    """An input that could not be graded, and why."""

    path: str
    reason: str

    def __str__(self) -> str:
        return self.reason if self.path in self.reason else f"{self.path}: {self.reason}"


@dataclass
class Grading:
    """What :func:`grade_photographs` produced: one row per photograph read (graded, or refused as ungradable),
    and the failures (photographs not read, heatmaps not written)."""

    frame: pd.DataFrame
    grade_names: Sequence[str]
    failures: list[Failure] = field(default_factory=list)
    heatmaps: list[Path] = field(default_factory=list)

    @property
    def ungradable(self) -> int:
        """Photographs the gradability gate refused: rows without a grade."""
        return int(self.frame["grade"].isna().sum()) if len(self.frame) else 0

    @property
    def graded_against_the_gate(self) -> int:
        """Photographs graded although the gate called them ungradable (``quality_gate`` off)."""
        return int((~self.frame["gradable"] & self.frame["grade"].notna()).sum()) if len(self.frame) else 0


def read_image_list(path: Path) -> list[Path]:
    """The images a CSV lists: its only column, or its ``image``/``path`` column; relative to the CSV's folder.

    Raises:
        ValueError: naming the CSV when it cannot be read or has no such column.
    """
    try:
        frame = pd.read_csv(path, header=None, dtype=str, skip_blank_lines=True, keep_default_na=False)
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ValueError(f"unreadable CSV list {path}: {exc}") from exc
    header = [str(value).strip().lower() for value in frame.iloc[0]] if len(frame) else []
    named = [i for i, name in enumerate(header) if name in LIST_COLUMNS]
    if named:
        values = frame.iloc[1:, named[0]]
    elif frame.shape[1] == 1:
        values = frame.iloc[:, 0]
    else:
        raise ValueError(f"unreadable CSV list {path}: {frame.shape[1]} columns and none named "
                         f"{' or '.join(LIST_COLUMNS)}")
    entries = [value.strip() for value in values if value.strip()]
    if not entries:
        raise ValueError(f"CSV list {path} names no images")
    return [_resolve_listed(path.parent / entry if not Path(entry).is_absolute() else Path(entry)) for entry in entries]


def _resolve_listed(path: Path) -> Path:
    """A listed name without extension (``10_left``, as the course lists have) with the image suffix it has on disk."""
    if path.suffix.lower() in IMAGE_SUFFIXES or path.exists():
        return path
    found = [path.with_name(path.name + suffix) for suffix in IMAGE_SUFFIXES
             if path.with_name(path.name + suffix).is_file()]
    return found[0] if found else path


def collect_inputs(inputs: Iterable[str | os.PathLike[str]]) -> tuple[list[Path], list[Failure]]:
    """Image files, folders (searched recursively for image suffixes, sorted) and CSV lists -> image paths, in order.

    Returns:
        The paths (each once) and the inputs that gave none (missing, empty folder, unreadable CSV).
    """
    paths: list[Path] = []
    failures: list[Failure] = []
    for item in map(Path, inputs):
        if not item.exists():
            failures.append(Failure(str(item), "not found"))
        elif item.is_dir():
            found = sorted(p for p in item.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                failures.append(Failure(str(item), f"folder holds no images ({', '.join(IMAGE_SUFFIXES)})"))
            paths += found
        elif item.suffix.lower() == ".csv":
            try:
                paths += read_image_list(item)
            except ValueError as exc:
                failures.append(Failure(str(item), str(exc)))
        else:
            paths.append(item)  # any other file is tried as an image: its decoder decides
    unique = list(dict.fromkeys(paths))
    return unique, failures


def patient_and_eye(path: Path) -> tuple[str, str]:
    """``clinicA/10_left.jpeg`` -> ``("clinicA/10", "left")``; ``("", "")`` for a name without ``_left``/``_right``.

    The patient is the folder (as given) and the name before ``_left``/``_right``: two clinics' ``10_left``
    are two people, and numbering restarts in every folder a user collects photographs in.
    """
    stem, sep, side = path.stem.rpartition("_")
    return (str(path.parent / stem), side) if sep and stem and side in ("left", "right") else ("", "")


def patient_grade_column(frame: pd.DataFrame) -> pd.Series:
    """The CSV's ``patient_grade``: on every graded row of a patient, the worse eye's predicted grade; NA unless a
    left and a right eye of that patient were graded (an ungradable eye leaves its partner's patient grade NA).

    Two photographs of one eye do not make a two-eye patient.
    """
    out = pd.Series(pd.NA, index=frame.index, dtype="Int64")
    named = frame[(frame["patient"] != "") & frame["grade"].notna()]  # an ungradable eye has no grade to compare
    for _, rows in named.groupby("patient"):
        if {"left", "right"} <= set(rows["eye"]):
            out.loc[rows.index] = int(rows["grade"].max())
    return out


def cam_layer(size: int) -> str:
    """The residual stage Grad-CAM reads for a ``size`` x ``size`` input (see :data:`MIN_CAM_SIDE`)."""
    return next((name for name, stride in CAM_LAYERS if size // stride >= MIN_CAM_SIDE), CAM_LAYERS[-1][0])


def grad_cams(model: nn.Module, images: torch.Tensor, classes: Sequence[int], device: torch.device) -> np.ndarray:
    """Grad-CAM maps (N, h, w) in [0, 1] of ``classes`` (one per image) at :func:`cam_layer`, in fp32."""
    from torchcam.methods import GradCAM  # only --heatmaps needs it

    with GradCAM(model, target_layer=cam_layer(images.shape[-1])) as extractor, torch.enable_grad():
        scores = model(images.to(device))
        cams = extractor(class_idx=[int(c) for c in classes], scores=scores)[0]
    return cams.detach().float().cpu().numpy()


def heatmap_overlay(path: Path, cropped: Cropped, cam: np.ndarray) -> Image.Image:
    """The photograph at full size with ``cam`` (computed on the cropped square) laid over its field-of-view square."""
    from torchcam.utils import overlay_mask

    photo, _ = open_rgb(path)  # full size, upright: the frame the crop was cut from, maybe at a larger scale
    sx, sy = photo.width / cropped.frame_size[0], photo.height / cropped.frame_size[1]
    fov = cropped.fov
    # The same box crop_square cut (in the decoded frame), scaled to the full-size photograph.
    box = (round(fov.cx - fov.radius), round(fov.cy - fov.radius),
           round(fov.cx + fov.radius), round(fov.cy + fov.radius))
    x0, y0, x1, y1 = round(box[0] * sx), round(box[1] * sy), round(box[2] * sx), round(box[3] * sy)
    square = Image.fromarray(cam.astype(np.float32), mode="F").resize(
        (max(1, x1 - x0), max(1, y1 - y0)), Image.Resampling.BILINEAR
    )
    mask = Image.new("F", photo.size, 0.0)
    mask.paste(square, (x0, y0))  # parts of the square outside the frame (a cut-off circle) fall away
    overlay = overlay_mask(photo, mask, colormap="jet", alpha=HEATMAP_ALPHA)
    circle = Image.new("L", photo.size, 0)
    ImageDraw.Draw(circle).ellipse((x0, y0, x1, y1), fill=255)
    return Image.composite(overlay, photo, circle)  # the black border stays as photographed


def heatmap_paths(folder: Path, images: Sequence[Path]) -> dict[Path, Path]:
    """Each image's heatmap, ``<folder>/<stem>.png``, numbered (``<stem>-2.png``) when inputs share a stem."""
    taken: set[Path] = set()
    paths = {}
    for image in images:
        out, n = folder / f"{image.stem}.png", 1
        while out in taken:
            n += 1
            out = folder / f"{image.stem}-{n}.png"
        taken.add(out)
        paths[image] = out
    return paths


def check_grading_outputs(
    model_path: Path, inputs: Sequence[Path], images: Sequence[Path], *, out: Path | None, heatmaps: Path | None
) -> None:
    """Refuse outputs that would write over, into or around what is read, before anything is written.

    ``out`` may not be an existing directory; ``heatmaps`` may be a new or an existing directory (its other
    files are left alone) but not a file. Neither may be, lie inside or contain an input (as given, or an image
    a folder or CSV list yields), the model file, or the other.

    Raises:
        OutputPathError: naming the path and what it collides with.
    """
    if out is not None and out.is_dir():
        raise OutputPathError(f"--out {out} is an existing directory; --out names the CSV file to write "
                              "(nothing was written)")
    if heatmaps is not None and heatmaps.exists() and not heatmaps.is_dir():
        raise OutputPathError(f"--heatmaps {heatmaps} exists and is not a directory (nothing was written)")
    outputs = [(flag, path) for flag, path in (("--out", out), ("--heatmaps", heatmaps)) if path is not None]
    given = [(_input_kind(item), item) for item in inputs]
    check_outputs_apart(outputs, [("the model", model_path), *given, *(("input image", image) for image in images)])
    if heatmaps is not None:
        for image, target in heatmap_paths(heatmaps, images).items():
            if target.is_dir():
                raise OutputPathError(f"--heatmaps: the heatmap of {image} would be {target}, an existing directory "
                                      "(nothing was written)")


def _input_kind(item: Path) -> str:
    """How an INPUT is named in an error."""
    return "input folder" if item.is_dir() else "input CSV list" if item.suffix.lower() == ".csv" else "input"


def grade_photographs(
    model_path: str | os.PathLike[str],
    inputs: Sequence[str | os.PathLike[str]],
    *,
    out: str | os.PathLike[str] | None = None,
    heatmaps: str | os.PathLike[str] | None = None,
    batch_size: int = 32,
    device: str = "auto",
    progress: bool = True,
    quality_gate: bool = True,
    thresholds: QualityThresholds | None = None,
) -> Grading:
    """Grade every photograph ``inputs`` name; write the CSV (``out``) and the heatmaps (``heatmaps``) if asked.

    Columns: image, patient (folder and name before ``_left``/``_right``), eye, gradable, quality_reasons, grade,
    p0..p4, p_referable (p2 + p3 + p4), patient_grade (the worse eye's grade, only when a left and a right eye of
    the patient were graded). A photograph the gradability gate refuses has ``gradable`` false, its reasons, and
    empty grade and probabilities; with ``quality_gate`` false every photograph with a field of view is graded
    and the gate's verdict is only reported. The CSV is written whole at the end, atomically, even when no
    photograph could be graded, so a CSV of an earlier run never stands for this one. A model trained on the
    embedded synthetic set, or one that does not say what it was trained on, is named on stderr first
    (:func:`retinopathy.inference.training_data_warning`).

    Raises:
        FileNotFoundError: the model file is missing.
        ValueError: the model file is not a retinopathy model, ``device`` is not on this machine
            (:class:`retinopathy.utils.DeviceUnavailableError`), or an output collides with an input, the
            model or another output (:class:`retinopathy.utils.OutputPathError`); nothing is written then.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    # The model, its own decoding, and the arithmetic to grade in.
    dev = select_device(device)
    model, meta = load_model(model_path, dev)
    if (warning := training_data_warning(meta, model_path)) is not None:
        print(warning, file=sys.stderr)
    decoder = model_decoder(meta)
    precision, _ = grading_precision(meta, dev, model_path=model_path)
    # The photographs; outputs that collide with what is read are refused before anything is written.
    paths, failures = collect_inputs(inputs)
    heat_dir = Path(heatmaps) if heatmaps is not None else None
    check_grading_outputs(Path(model_path), [Path(item) for item in inputs], paths,
                          out=Path(out) if out is not None else None, heatmaps=heat_dir)
    for failure in failures:
        print(f"cannot grade {failure}", file=sys.stderr)
    heat_targets = heatmap_paths(heat_dir, paths) if heat_dir is not None else None
    if heat_dir is not None:
        heat_dir.mkdir(parents=True, exist_ok=True)
    # Grade batch by batch, then write the table whole.
    gate = _Gate(CropSettings.from_record(meta["preprocessing"]).fov_threshold, thresholds or QualityThresholds(),
                 enforce=quality_gate)
    rows, written = _grade_batches(model, meta, decoder, dev, precision, paths, batch_size=batch_size,
                                   heat_targets=heat_targets, failures=failures, progress=progress, gate=gate)
    frame = _grading_frame(rows, len(meta["grade_names"]))
    if out is not None:
        write_csv(out, frame)
    return Grading(frame, meta["grade_names"], failures, written)


def _grade_batches(
    model: nn.Module, meta: dict[str, Any], decoder: Decoder, device: torch.device, precision: str,
    paths: Sequence[Path], *, batch_size: int, heat_targets: dict[Path, Path] | None, failures: list[Failure],
    progress: bool, gate: _Gate,
) -> tuple[list[dict[str, Any]], list[Path]]:
    """Grade ``paths`` ``batch_size`` at a time, with a progress bar.

    Args:
        heat_targets: each photograph's heatmap file (:func:`heatmap_paths`), or None for no heatmaps.
        failures: each photograph that cannot be read (or whose heatmap cannot be written) is appended here
            and named on stderr.
        gate: the gradability gate; each photograph it refuses is named on stderr and gets a row without a grade.

    Returns:
        The CSV row of each photograph read (:func:`_row`), in order, and the heatmaps written.
    """
    rows: list[dict[str, Any]] = []
    written: list[Path] = []
    bar = tqdm(total=len(paths), desc="grade", unit="img", dynamic_ncols=True, disable=not progress)

    def fail(path: Path, reason: str) -> None:
        failure = Failure(str(path), reason)
        failures.append(failure)
        bar.write(f"cannot grade {failure}", file=sys.stderr)

    def refuse(path: Path, quality: Quality) -> None:
        bar.write(f"ungradable {path}: {quality.reason_text()}", file=sys.stderr)

    for start in range(0, len(paths), batch_size):
        reads = _read_batch(paths[start : start + batch_size], meta, fail, gate, refuse)
        bar.update(min(batch_size, len(paths) - start))
        batch = [read for read in reads if read.tensor is not None]
        graded: dict[Path, dict[str, Any]] = {}
        if batch:
            images = torch.stack([read.tensor for read in batch])
            batch_outputs = outputs(model, images, device, precision=precision, head=decoder.head).numpy()
            # The model's own decoding: argmax, or the cut-points tuned on its validation set.
            probs, grades = decoder.probabilities(batch_outputs), decoder.grades(batch_outputs)
            kept = [True] * len(batch)
            if heat_targets is not None:
                # A regression head has one output: its map shows what raises the predicted grade.
                classes = grades if decoder.head == "classification" else [0] * len(batch)
                kept = _write_heatmaps(batch, grad_cams(model, images, classes, device), heat_targets, fail)
                written += [heat_targets[read.path] for read, keep in zip(batch, kept) if keep]
            graded = {read.path: _row(read.path, p, grade, read.quality)
                      for read, p, grade, keep in zip(batch, probs, grades, kept) if keep}
        # In input order: a refused photograph's row has no grade; one whose heatmap failed has no row.
        rows += [graded[read.path] if read.tensor is not None else
                 _ungradable_row(read.path, read.quality, len(meta["grade_names"]))
                 for read in reads if read.tensor is None or read.path in graded]
    bar.close()
    return rows, written


def _grading_frame(rows: list[dict[str, Any]], grades: int) -> pd.DataFrame:
    """The CSV's table: ``rows`` under the CSV's columns, and each row's ``patient_grade``."""
    columns = ["image", "patient", "eye", "gradable", "quality_reasons", "grade", *[f"p{g}" for g in range(grades)],
               "p_referable"]
    frame = pd.DataFrame(rows, columns=columns)
    frame["gradable"] = frame["gradable"].astype(bool)
    frame["grade"] = frame["grade"].astype("Int64")
    frame["patient_grade"] = patient_grade_column(frame)
    return frame


@dataclass(frozen=True)
class _Gate:
    """The gradability gate of one grading run."""

    fov_threshold: int
    thresholds: QualityThresholds
    enforce: bool = True

    def judge(self, path: Path) -> Quality:
        """The verdict on the photograph at ``path``, decoded at the gate's scale (a JPEG at reduced scale).

        Raises:
            FileNotFoundError, ValueError: the photograph cannot be read (:func:`retinopathy.images.open_rgb`).
        """
        image, _ = open_rgb(path, draft_side=GATE_DRAFT_SIDE)
        return assess(image, fov_threshold=self.fov_threshold, thresholds=self.thresholds)

    def refuses(self, quality: Quality) -> bool:
        """Whether ``quality`` keeps a photograph from being graded: any failure when enforced; without a field of
        view (nothing to crop) always."""
        return not quality.gradable and (self.enforce or not quality.fov_found)


@dataclass(frozen=True)
class _Read:
    """One photograph read: the gate's verdict, and the network's input and its crop unless it is not graded."""

    path: Path
    quality: Quality
    tensor: torch.Tensor | None = None
    cropped: Cropped | None = None


def _read_batch(
    paths: Sequence[Path], meta: dict[str, Any], fail: Callable[[Path, str], None], gate: _Gate,
    refuse: Callable[[Path, Quality], None],
) -> list[_Read]:
    """Each photograph that can be read, in order, with its verdict and (unless ``gate`` refuses it, or it cannot be
    cropped after the gate called it ungradable) its input; ``fail`` is told about each one that cannot be read,
    ``refuse`` about each one not graded."""
    reads = []
    for path in paths:
        try:
            quality = gate.judge(path)
        except Exception as exc:  # missing, corrupt, too large, or anything else one file can cause
            fail(path, image_failure(path, exc))
            continue
        if not gate.refuses(quality):
            try:
                reads.append(_Read(path, quality, *photograph_input(path, meta)))
                continue
            except Exception as exc:
                if quality.gradable:
                    fail(path, image_failure(path, exc))
                    continue
                # Without the gate: a photograph it called ungradable that cannot be cropped either is refused.
        refuse(path, quality)
        reads.append(_Read(path, quality))
    return reads


def _write_heatmaps(
    batch: Sequence[_Read], cams: np.ndarray, targets: dict[Path, Path], fail: Callable[[Path, str], None],
) -> list[bool]:
    """Write each photograph's heatmap to ``targets[path]``; whether each was written (``fail`` is told about the
    others)."""
    written = []
    for read, cam in zip(batch, cams):
        path, cropped = read.path, read.cropped
        try:
            with atomic_path(targets[path]) as tmp:
                heatmap_overlay(path, cropped, cam).save(tmp, format="PNG")
        except Exception as exc:  # one photograph's heatmap: the run goes on, and that photograph counts as failed
            fail(path, f"{path}: heatmap not written: {failure_reason(exc)}")
            written.append(False)
            continue
        written.append(True)
    return written


def _row(path: Path, probs: np.ndarray, grade: int, quality: Quality) -> dict[str, Any]:
    """One CSV row: the photograph, its patient and eye, the gate's verdict, grade and probabilities."""
    patient, eye = patient_and_eye(path)
    return {"image": str(path), "patient": patient, "eye": eye, "gradable": quality.gradable,
            "quality_reasons": quality.reason_text(), "grade": int(grade),
            **{f"p{g}": round(float(probs[g]), 6) for g in range(len(probs))},
            "p_referable": round(float(probs[2:].sum()), 6)}


def _ungradable_row(path: Path, quality: Quality, grades: int) -> dict[str, Any]:
    """The CSV row of a photograph the gate refused: its verdict, and no grade or probabilities."""
    patient, eye = patient_and_eye(path)
    return {"image": str(path), "patient": patient, "eye": eye, "gradable": False,
            "quality_reasons": quality.reason_text(), "grade": pd.NA,
            **{f"p{g}": np.nan for g in range(grades)}, "p_referable": np.nan}


def summary_table(grading: Grading, *, rows: int = TABLE_ROWS) -> str:
    """The first ``rows`` photographs (graded, or refused as ungradable) and the count per grade, as text for the
    terminal."""
    frame, grade_names = grading.frame, grading.grade_names
    lines = []
    if len(frame):
        shown = frame.head(rows).assign(image=[Path(p).name for p in frame["image"].head(rows)])
        shown["name"] = [grade_names[g] if not pd.isna(g) else "ungradable" for g in shown["grade"]]
        for column in ("grade", "patient_grade"):
            shown[column] = ["" if pd.isna(g) else str(g) for g in shown[column]]
        shown["p_referable"] = ["" if pd.isna(p) else f"{p:.6f}" for p in shown["p_referable"]]
        lines.append(
            shown[["image", "grade", "name", "p_referable", "patient_grade"]].to_string(index=False, na_rep="")
        )
        if len(frame) > rows:
            lines.append(f"... {len(frame) - rows} more row(s)")
    graded = frame[frame["grade"].notna()] if len(frame) else frame
    counts = graded["grade"].value_counts() if len(graded) else pd.Series(dtype=int)
    lines.append(
        "per grade: " + ", ".join(f"{g} {name}: {int(counts.get(g, 0))}" for g, name in enumerate(grade_names))
    )
    refused = (f", {grading.ungradable} ungradable (no grade; reasons in quality_reasons and on stderr)"
               if grading.ungradable else "")
    failed = f", {len(grading.failures)} failed (named on stderr, no row in the CSV)" if grading.failures else ""
    against = (f" ({grading.graded_against_the_gate} of them the gate calls ungradable: see quality_reasons)"
               if grading.graded_against_the_gate else "")
    lines.append(f"graded {len(graded)} photograph(s){against}{refused}{failed}")
    return "\n".join(lines)
