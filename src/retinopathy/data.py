"""Label tables, patient-level splits and the image Dataset.

The course layout (used by the embedded synthetic set too) is four one-column CSVs with no
header (``train_img.csv``, ``train_label.csv``, ``test_img.csv``, ``test_label.csv``) and images
at ``<root>/<name>.jpeg``. Reading those CSVs with a header row silently drops the first image of
each file, so they are always read with ``header=None``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError
from sklearn.model_selection import StratifiedGroupKFold
from torch.utils.data import Dataset
from torchvision import transforms as T

from retinopathy import NUM_CLASSES

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


def check_levels(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """Make ``level`` int64 in 0..4; otherwise raise naming the file, row and value."""
    numeric = pd.to_numeric(frame["level"], errors="coerce")
    bad = numeric.isna() | ~numeric.isin(range(NUM_CLASSES))
    if bad.any():
        rows = ", ".join(f"row {i + 1} ({frame['image'].iat[i]}: {frame['level'].iat[i]!r})" for i in np.flatnonzero(bad)[:10])
        more = f" and {int(bad.sum()) - 10} more" if bad.sum() > 10 else ""
        raise ValueError(f"{source}: labels must be integers 0..{NUM_CLASSES - 1}; bad: {rows}{more}")
    out = frame.copy()
    out["level"] = numeric.astype("int64")
    dup = out["image"].duplicated(keep=False)
    if dup.any():
        raise ValueError(f"{source}: duplicate image names: {sorted(set(out.loc[dup, 'image']))[:10]}")
    return out


def read_course_split(root: str | os.PathLike[str], split: str) -> pd.DataFrame:
    """Read ``<split>_img.csv`` + ``<split>_label.csv`` into a frame with columns ``image, level``."""
    root = Path(root)
    names = read_column(root / f"{split}_img.csv", "image")
    levels = read_column(root / f"{split}_label.csv", "level")
    if len(names) != len(levels):
        raise ValueError(
            f"{root}: {split}_img.csv has {len(names)} rows but {split}_label.csv has {len(levels)}"
        )
    return check_levels(pd.concat([names, levels], axis=1), f"{root / (split + '_label.csv')}")


def patient_of(image: str) -> str:
    """``'10_left'`` -> ``'10'``: both eyes of a patient share the part before the last underscore."""
    stem, sep, side = image.rpartition("_")
    return stem if sep and side in {"left", "right"} else image


def split_by_patient(frame: pd.DataFrame, *, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out about ``fraction`` of ``frame``, stratified by level, both eyes of a patient together.

    Returns:
        (kept, held_out), both with the original row order.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"split fraction must be in (0, 1), got {fraction}")
    n_splits = max(2, round(1.0 / fraction))
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    groups = frame["image"].map(patient_of)
    _, held = next(folds.split(np.zeros(len(frame)), frame["level"], groups))
    mask = np.zeros(len(frame), dtype=bool)
    mask[held] = True
    return frame[~mask].reset_index(drop=True), frame[mask].reset_index(drop=True)


def label_balance(levels: Sequence[int]) -> dict[str, list[float] | int]:
    """Counts, proportions and inverse-frequency class weights (mean 1 over samples) for one split."""
    counts = np.bincount(np.asarray(levels, dtype=np.int64), minlength=NUM_CLASSES)
    total = int(counts.sum())
    proportions = counts / max(total, 1)
    weights = np.where(counts > 0, total / (NUM_CLASSES * np.maximum(counts, 1)), 0.0)
    return {
        "total": total,
        "counts": counts.tolist(),
        "proportions": [round(float(p), 4) for p in proportions],
        "class_weights": [round(float(w), 4) for w in weights],
    }


def build_transform(
    *, mean: Sequence[float], std: Sequence[float], train: bool, hflip: bool = True, vflip: bool = True, rotation: float = 0.0
) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image -> normalised tensor; random flips and rotation only when ``train``.

    Flips are safe for fundus images: a flipped left eye looks like a right eye, and lesions
    have no preferred orientation.
    """
    steps: list[Callable] = []
    if train:
        if hflip:
            steps.append(T.RandomHorizontalFlip())
        if vflip:
            steps.append(T.RandomVerticalFlip())
        if rotation > 0:
            steps.append(T.RandomRotation(rotation))
    steps += [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(steps)


def load_rgb(path: Path) -> Image.Image:
    """Open an image as RGB, naming the file when it is missing or unreadable."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {path}") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"corrupt or unreadable image {path}: {exc}") from exc


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
            frame = check_levels(frame, source)
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


def channel_stats(paths: Sequence[Path]) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] over a set of images (the data's own normalisation)."""
    total = np.zeros(3)
    total_sq = np.zeros(3)
    count = 0
    for path in paths:
        arr = np.asarray(load_rgb(path), dtype=np.float64) / 255.0
        flat = arr.reshape(-1, 3)
        total += flat.sum(axis=0)
        total_sq += (flat**2).sum(axis=0)
        count += flat.shape[0]
    if count == 0:
        raise ValueError("cannot compute channel statistics of an empty image set")
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-12))
    return [round(float(m), 6) for m in mean], [round(float(s), 6) for s in std]


def processed_dataset(
    data_dir: str | os.PathLike[str], split: str, transform: Callable[[Image.Image], torch.Tensor] | None, *, labelled: bool = True
) -> FundusDataset:
    """A split of the preprocess stage's output (``<data_dir>/<split>.csv`` and ``<data_dir>/<split>/``)."""
    data_dir = Path(data_dir)
    return FundusDataset(data_dir / f"{split}.csv", data_dir / split, transform, suffix=".png", labelled=labelled)
