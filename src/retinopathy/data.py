"""Label-table checks, patient-level splits and the image Dataset.

The readers of the layouts users bring (``sources.py``) and the Dataset share one set of checks
(:func:`table_problems`), so a bad label reads the same wherever it is found. Header-less CSVs
(the course layout) are read with ``header=None``: a header-reading reader silently drops the
first image of each file.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from retinopathy import NUM_CLASSES
from retinopathy.images import open_rgb
from retinopathy.settings import CLASS_WEIGHTING

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def read_column(path: Path, name: str) -> pd.Series:
    """One header-less CSV column, as strings, every row kept."""
    if not path.is_file():
        raise FileNotFoundError(f"label file not found: {path}")
    frame = pd.read_csv(path, header=None, dtype=str, skip_blank_lines=True)
    if frame.shape[1] != 1:
        raise ValueError(f"{path}: expected one column, found {frame.shape[1]}")
    return frame.iloc[:, 0].str.strip().rename(name)


# Table problems of one kind named in an error before "and N more".
MAX_LISTED = 20


def listing(items: list[str]) -> str:
    """Indented lines for an error message, the first ``MAX_LISTED`` of them and a count of the rest."""
    shown = "\n    ".join(items[:MAX_LISTED])
    more = f"\n    ... and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return f"\n    {shown}{more}"


def table_problems(frame: pd.DataFrame, source: str, *, first_row: int = 1, labelled: bool = True) -> list[str]:
    """Labels outside 0..4 and duplicate, empty or folder-escaping image names in one table, each naming file and row.

    Args:
        frame: columns ``image`` and (when ``labelled``) ``level``, as strings, in file order.
        source: the file named in each message.
        first_row: the line number of the first data row (2 below a header), so rows read as in an editor.
    """
    problems = _label_problems(frame, source, first_row) if labelled else []
    first = first_row
    names = frame["image"].fillna("").astype(str)
    empty = names == ""
    if empty.any():
        problems.append(f"{source}: {int(empty.sum())} row(s) without an image name:"
                        f"{listing([f'row {i + first}' for i in np.flatnonzero(empty)])}")
    # A name must stay inside the image folder (and the processed set's folder, which mirrors it).
    escaping = names.map(lambda n: n.startswith(("/", "\\")) or ".." in n.replace("\\", "/").split("/")) & ~empty
    if escaping.any():
        rows = [f"row {i + first}: {names.iat[i]!r}" for i in np.flatnonzero(escaping)]
        problems.append(f"{source}: {len(rows)} image name(s) leave the image folder (absolute, or with '..'):"
                        f"{listing(rows)}")
    dup = names.duplicated(keep=False) & ~empty
    if dup.any():
        where = pd.Series(np.flatnonzero(dup) + first, index=names[dup].to_numpy()).groupby(level=0).agg(list)
        rows = [f"{name!r} at rows {', '.join(map(str, at))}" for name, at in where.items()]
        problems.append(f"{source}: {len(rows)} image name(s) listed more than once:{listing(rows)}")
    return problems


def _label_problems(frame: pd.DataFrame, source: str, first: int) -> list[str]:
    """One message listing every label that is not an integer 0..4, with its row."""
    numeric = pd.to_numeric(frame["level"], errors="coerce")
    bad = numeric.isna() | ~numeric.isin(range(NUM_CLASSES))
    if bad.any():
        rows = [f"row {i + first}: {frame['image'].iat[i]!r} has label {frame['level'].iat[i]!r}"
                for i in np.flatnonzero(bad)]
        hint = ""
        if first == 1 and bad.iat[0] and not str(frame["level"].iat[0]).strip().lstrip("-").isdigit():
            hint = " (row 1 looks like a header, but this layout's CSVs have none)"
        return [f"{source}: {int(bad.sum())} label(s) outside 0..{NUM_CLASSES - 1}{hint}:{listing(rows)}"]
    return []


def check_levels(frame: pd.DataFrame, source: str, *, first_row: int = 1) -> pd.DataFrame:
    """Make ``level`` int64 in 0..4; otherwise raise every bad label or duplicate name, naming file and row."""
    problems = table_problems(frame, source, first_row=first_row)
    if problems:
        raise ValueError("\n".join(problems))
    out = frame.copy()
    out["level"] = pd.to_numeric(out["level"]).astype("int64")
    return out


def patient_of(image: str) -> str:
    """``'10_left'`` -> ``'10'``: both eyes of a patient share the part before the last underscore.

    A folder in the name stays part of the id (``'clinicB/10_left'`` -> ``'clinicB/10'``), so patient 10
    of one clinic's folder and patient 10 of another's stay two patients; the side is read from the
    file name alone. A name without ``_left``/``_right`` is its own patient.
    """
    stem, sep, side = image.rpartition("_")
    # A last underscore inside the folder part leaves a "/" in ``side``, so such a name is its own patient.
    return stem if sep and side in {"left", "right"} else image


def split_by_patient(frame: pd.DataFrame, *, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out ``round(fraction * patients)`` whole patients of ``frame``, stratified by patient grade.

    Both eyes of a patient (:func:`patient_of`) land on the same side. Each grade (a patient's worse eye,
    :func:`patient_grades`) holds out its share of the count by largest remainder, so the held-out share
    is ``fraction`` up to half a patient. Where there are enough patients, every grade with two or more
    patients keeps at least one and holds out at least one, so neither side misses a grade that could
    be on both; a grade's patients are drawn with ``seed``.

    Args:
        frame: ``image`` and ``level`` per row.
        fraction: the share of patients to hold out, in (0, 1).
        seed: seeds which patients of each grade are held out.

    Returns:
        (kept, held_out), both with the original row order.

    Raises:
        ValueError: for a fraction outside (0, 1), or one that holds out no patient or every patient.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"split fraction must be in (0, 1), got {fraction}")
    grades = patient_grades(frame)
    n = len(grades)
    count = math.floor(fraction * n + 0.5)
    if count == 0:
        raise ValueError(f"{fraction:g} x {n} patients rounds to no held-out patient")
    if count == n:
        raise ValueError(f"{fraction:g} x {n} patients rounds to all of them, leaving none to keep")
    rng = np.random.default_rng(seed)
    sizes = grades.value_counts().sort_index()
    counts = _allocate(sizes.to_numpy(), count, rng)
    held: set[str] = set()
    for grade, take in zip(sizes.index, counts):
        patients = grades.index[grades == grade].to_numpy()
        held.update(patients[rng.permutation(len(patients))[:take]])
    mask = frame["image"].map(patient_of).isin(held).to_numpy()
    return frame[~mask].reset_index(drop=True), frame[mask].reset_index(drop=True)


def _allocate(sizes: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
    """Split ``total`` over strata of ``sizes`` in proportion, by largest remainder, within bounds.

    A stratum of two or more gets between 1 and ``size - 1`` (one on each side of the split) where the
    total allows that for every such stratum; ties go to a seeded order of the strata.
    """
    quota = sizes * total / sizes.sum()
    two_or_more = sizes >= 2
    low, high = np.where(two_or_more, 1, 0), np.where(two_or_more, sizes - 1, sizes)
    # Too few patients held out (or kept) for one of every grade: that side goes without the smallest grades.
    if low.sum() > total:
        low = np.zeros_like(sizes)
    if high.sum() < total:
        high = sizes.copy()
    counts = np.clip(np.floor(quota).astype(np.int64), low, high)
    tiebreak = rng.permutation(len(sizes))
    while counts.sum() < total:
        room = np.where(counts < high, quota - counts, -np.inf)
        counts[np.lexsort((tiebreak, -room))[0]] += 1
    while counts.sum() > total:
        excess = np.where(counts > low, counts - quota, -np.inf)
        counts[np.lexsort((tiebreak, -excess))[0]] -= 1
    return counts


def check_label_fraction(fraction: float) -> float:
    """``data.label_fraction`` itself, or a ValueError naming the key when it is not in (0, 1]."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction <= 1.0:
        raise ValueError(
            "data.label_fraction must be in (0, 1] (the share of training patients that keep their labels), "
            f"got {fraction!r}"
        )
    return float(fraction)


def patient_grades(frame: pd.DataFrame) -> pd.Series:
    """Each patient's grade, the worse of its eyes' ``level``, indexed by patient id (sorted)."""
    return frame["level"].groupby(frame["image"].map(patient_of)).max()


def keep_labelled_fraction(frame: pd.DataFrame, *, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Keep ``round(fraction * patients)`` whole patients of ``frame``, stratified by patient grade; set the rest aside.

    The patients are put in one seeded order that does not depend on ``fraction``: shuffled, then
    interleaved so that the i-th patient of a grade with n patients sits at (i + 1/2) / n (Webster's
    rounding). The first patients in that order are kept, so every grade keeps the same share of its
    patients up to half a patient, and a smaller fraction keeps a subset of what a larger one keeps.

    Args:
        frame: ``image`` (``<patient>_<left|right>``) and ``level`` per row.
        fraction: the share of patients to keep, in (0, 1]; 1 keeps ``frame`` as it is.
        seed: seeds the order; the same seed keeps the same patients.

    Returns:
        ``(kept, set_aside)``, both in ``frame``'s row order.

    Raises:
        ValueError: naming ``data.label_fraction`` when it is outside (0, 1] or keeps no patient.
    """
    fraction = check_label_fraction(fraction)
    if fraction == 1.0:
        return frame, frame.iloc[:0]
    grades = patient_grades(frame)
    keep = math.floor(fraction * len(grades) + 0.5)
    if keep == 0:
        raise ValueError(
            f"data.label_fraction {fraction:g} keeps no training patient "
            f"({fraction:g} x {len(grades)} patients rounds to 0); "
            f"use at least {0.5 / max(len(grades), 1):.4g}"
        )
    shuffled = grades.iloc[np.random.default_rng(seed).permutation(len(grades))]
    position = shuffled.groupby(shuffled).cumcount()
    size = shuffled.map(shuffled.value_counts())
    order = ((position + 0.5) / size).sort_values(kind="stable")  # ties keep the seeded shuffle's order
    kept = frame["image"].map(patient_of).isin(set(order.index[:keep]))
    return frame[kept].reset_index(drop=True), frame[~kept].reset_index(drop=True)


def class_weights(labels: Iterable[int], mode: str) -> np.ndarray | None:
    """Loss weights per grade: ``inverse`` frequency, its square root (gentler), or None for ``none``.

    Scaled so the weighted mean over the given samples is 1, so ``lr`` keeps its meaning whatever
    the scheme. Training and ``label_balance.json`` both call this, so the report shows the
    weights that training uses.
    """
    if mode not in CLASS_WEIGHTING:
        raise ValueError(f"class_weighting {mode!r}; choose one of {CLASS_WEIGHTING}")
    if mode == "none":
        return None
    counts = np.bincount(np.asarray(list(labels), dtype=np.int64), minlength=NUM_CLASSES).astype(np.float64)
    inv = np.where(counts > 0, counts.sum() / np.maximum(counts, 1), 0.0)
    weights = np.sqrt(inv) if mode == "sqrt_inverse" else inv
    return weights / (weights * counts).sum() * counts.sum()


def label_balance(levels: Sequence[int]) -> dict[str, Any]:
    """Counts, proportions and the loss weights each ``class_weighting`` scheme would give this split."""
    counts = np.bincount(np.asarray(levels, dtype=np.int64), minlength=NUM_CLASSES)
    total = int(counts.sum())
    proportions = counts / max(total, 1)
    weights = {mode: class_weights(levels, mode) for mode in CLASS_WEIGHTING if mode != "none"}
    return {
        "total": total,
        "counts": counts.tolist(),
        "proportions": [round(float(p), 4) for p in proportions],
        "class_weights": {mode: [round(float(w), 4) for w in values] for mode, values in weights.items()},
    }


class _RandomFlip:
    """Flip a PIL image with probability 1/2: torchvision's ``RandomHorizontalFlip``/``RandomVerticalFlip``,
    with the same draw from torch's generator, so a seed gives the same augmentations."""

    def __init__(self, method: Image.Transpose) -> None:
        self.method = method

    def __call__(self, image: Image.Image) -> Image.Image:
        return image.transpose(self.method) if torch.rand(1) < 0.5 else image


class _RandomRotation:
    """Rotate a PIL image by an angle drawn uniformly from [-degrees, degrees], nearest-neighbour, black corners:
    torchvision's ``RandomRotation(degrees)`` defaults, with the same draw."""

    def __init__(self, degrees: float) -> None:
        self.degrees = float(degrees)

    def __call__(self, image: Image.Image) -> Image.Image:
        angle = float(torch.empty(1).uniform_(-self.degrees, self.degrees).item())
        return image.rotate(angle, Image.Resampling.NEAREST, expand=False, center=None,
                            fillcolor=(0,) * len(image.getbands()))


class _ToNormalizedTensor:
    """8-bit RGB PIL image -> float C x H x W in [0, 1], minus ``mean``, over ``std`` per channel: torchvision's
    ``ToTensor`` then ``Normalize``, the same operations in the same order, so the tensors are bit-identical."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)
        if (self.std == 0).any():
            raise ValueError(f"std has a zero channel: {list(std)}")

    def __call__(self, image: Image.Image) -> torch.Tensor:
        pixels = torch.from_numpy(np.array(image, np.uint8, copy=True))
        tensor = pixels.view(image.size[1], image.size[0], len(image.getbands())).permute((2, 0, 1)).contiguous()
        return tensor.to(dtype=torch.float32).div(255).sub_(self.mean).div_(self.std)


class _Compose:
    """Apply transforms in order (torchvision's ``Compose``)."""

    def __init__(self, steps: Sequence[Callable]) -> None:
        self.steps = list(steps)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        for step in self.steps:
            image = step(image)
        return image


def build_transform(
    *, mean: Sequence[float], std: Sequence[float], train: bool, hflip: bool = True, vflip: bool = True,
    rotation: float = 0.0,
) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image -> normalised tensor; random flips and rotation only when ``train``.

    Flips are safe for fundus images: a flipped left eye looks like a right eye, and lesions
    have no preferred orientation. The steps are torchvision's, written out here because importing
    torchvision adds seconds to every stage's start-up (benchmarks/stage_imports.py); tests/test_data.py
    checks they match torchvision's bit for bit under the same seed.
    """
    steps: list[Callable] = []
    if train:
        if hflip:
            steps.append(_RandomFlip(Image.Transpose.FLIP_LEFT_RIGHT))
        if vflip:
            steps.append(_RandomFlip(Image.Transpose.FLIP_TOP_BOTTOM))
        if rotation > 0:
            steps.append(_RandomRotation(rotation))
    steps.append(_ToNormalizedTensor(mean, std))
    return _Compose(steps)


def load_rgb(path: Path) -> Image.Image:
    """Open an image upright as 8-bit RGB (see :func:`retinopathy.images.open_rgb`), naming the file when it is
    missing or unreadable."""
    return open_rgb(path)[0]


class FundusDataset(Dataset):
    """Images listed in a label table (``image`` and, for labelled sets, ``level``) under one folder.

    Args:
        table: a CSV path or DataFrame with an ``image`` column (name without extension).
        image_dir: folder holding ``<image><suffix>``.
        transform: applied to each PIL image; None returns the PIL image.
        suffix: file extension of the images.
        labelled: whether to read ``level``; unlabelled items return ``-1``.
    """

    def __init__(
        self,
        table: str | os.PathLike[str] | pd.DataFrame,
        image_dir: str | os.PathLike[str],
        transform: Callable[[Image.Image], torch.Tensor] | None = None,
        *,
        suffix: str = ".png",
        labelled: bool = True,
    ) -> None:
        source = str(table) if not isinstance(table, pd.DataFrame) else "label table"
        frame = pd.read_csv(table, dtype={"image": str}) if not isinstance(table, pd.DataFrame) else table
        if "image" not in frame.columns or (labelled and "level" not in frame.columns):
            need = "'image' and 'level'" if labelled else "'image'"
            raise ValueError(f"{source}: needs columns {need}, has {list(frame.columns)}")
        if labelled:
            # A CSV's first data row is line 2, under its header.
            frame = check_levels(frame, source, first_row=1 if isinstance(table, pd.DataFrame) else 2)
        self.image_dir = Path(image_dir)
        self.names: list[str] = frame["image"].astype(str).tolist()
        self.labels: list[int] = frame["level"].astype(int).tolist() if labelled else [-1] * len(frame)
        self.paths = [self.image_dir / f"{name}{suffix}" for name in self.names]
        missing = [str(p) for p in self.paths if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} image(s) listed in {source} are missing: {missing[:10]}")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | Image.Image, int]:
        image = load_rgb(self.paths[index])
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[index]


def processed_dataset(
    data_dir: str | os.PathLike[str], split: str, transform: Callable[[Image.Image], torch.Tensor] | None, *,
    labelled: bool = True,
) -> FundusDataset:
    """A split of the preprocess stage's output (``<data_dir>/<split>.csv`` and ``<data_dir>/<split>/``)."""
    data_dir = Path(data_dir)
    return FundusDataset(data_dir / f"{split}.csv", data_dir / split, transform, suffix=".png", labelled=labelled)


def read_stats(data_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The processed set's ``stats.json`` (channel mean/std of train, image size)."""
    path = Path(data_dir) / "stats.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the preprocess stage first (dvc repro preprocess)")
    return json.loads(path.read_text())


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    train: bool,
    num_workers: int,
    generator: torch.Generator | None,
    device: torch.device,
    sampler: Sampler | None = None,
) -> DataLoader:
    """DataLoader with shuffling for training; pinned memory and persistent workers where they help.

    ``sampler`` replaces the shuffle (under torchrun: a ``DistributedSampler`` drawing this
    process's share; ``batch_size`` is then per process). The last, short training batch is
    dropped: a batch of one breaks BatchNorm.
    """
    count = len(sampler) if sampler is not None else len(dataset)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        drop_last=train and count > batch_size,
        num_workers=num_workers,
        generator=generator,
        pin_memory=device.type == "cuda",
        persistent_workers=num_workers > 0,
    )
