"""Readers for the data layouts users bring. Each returns label tables with the raw image path per row.

``read_source`` returns ``{"train": frame, "test": frame, "unlabeled": frame}`` (``test`` and
``unlabeled`` only where the layout has them) with columns ``image``, ``level`` (-1 when
unlabelled) and ``path``. Kaggle 2015 and APTOS 2019 come without a labelled test split; the
preprocess stage holds one out by patient.

Every problem in the label tables (labels outside 0..4, duplicate names, files of different
lengths) is gathered and raised in one error, so a user fixes them in one pass.
``unlisted_images`` names the image files that no row names.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from retinopathy.data import listing, read_column, table_problems
from retinopathy.settings import DATA_SOURCES


@dataclass(frozen=True)
class Layout:
    """Where a layout keeps its images: ``<root>/<image_dir>/<image><suffix>``."""

    image_dir: str
    suffix: str


LAYOUTS = {
    "synthetic": Layout(image_dir="", suffix=".jpeg"),
    "course": Layout(image_dir="", suffix=".jpeg"),
    "kaggle": Layout(image_dir="train", suffix=".jpeg"),
    "aptos": Layout(image_dir="train_images", suffix=".png"),
}

# The course layout keeps its CSVs next to the images, so only these count as image files there.
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".tif", ".tiff", ".bmp"}
class SourceError(ValueError):
    """One or more problems in a data set's label tables; the message lists each of them."""


def _finish(
    tables: dict[str, pd.DataFrame], problems: list[str], root: Path, layout: Layout
) -> dict[str, pd.DataFrame]:
    """Raise every problem at once, else make levels int and add each row's image path."""
    labelled = [name for name in tables if name != "unlabeled"]
    splits = list(tables)
    for i, first in enumerate(splits):
        for second in splits[i + 1 :]:
            both = sorted(set(tables[first]["image"]) & set(tables[second]["image"]))
            if both:
                problems.append(f"{root}: {len(both)} image(s) listed in both {first} and {second}:{listing(both)}")
    if problems:
        raise SourceError(f"{len(problems)} problem(s) in the label tables under {root}:\n  " + "\n  ".join(problems))
    image_dir = root / layout.image_dir
    out = {}
    for split, frame in tables.items():
        frame = frame.reset_index(drop=True)
        frame = frame.assign(level=frame["level"].astype(float).astype("int64") if split in labelled else -1)
        frame["path"] = [str(image_dir / f"{name}{layout.suffix}") for name in frame["image"]]
        out[split] = frame[["image", "level", "path"]]
    return out


def _require_dir(root: Path) -> None:
    if not root.is_dir():
        raise FileNotFoundError(f"data.root {root} is not a folder")


def read_course(root: Path, *, layout: Layout = LAYOUTS["course"]) -> dict[str, pd.DataFrame]:
    """The course layout: header-less ``{train,test}_{img,label}.csv`` and ``<root>/<name>.jpeg``.

    Read with ``header=None``: the files have no header row, and a header-reading CSV reader
    would take each file's first image for a column name (28,099 / 7,025 images instead of
    28,100 / 7,026). An optional ``unlabeled_img.csv`` lists a pool of unlabelled images (the
    embedded set has one).
    """
    root = Path(root)
    _require_dir(root)
    tables, problems = {}, []
    for split in ("train", "test"):
        names = read_column(root / f"{split}_img.csv", "image")
        levels = read_column(root / f"{split}_label.csv", "level")
        if len(names) != len(levels):
            problems.append(f"{root}: {split}_img.csv has {len(names)} rows but {split}_label.csv has {len(levels)}")
            continue
        frame = pd.concat([names, levels], axis=1)
        problems += table_problems(frame, str(root / f"{split}_label.csv"))
        tables[split] = frame
    pool_csv = root / "unlabeled_img.csv"
    if pool_csv.is_file():
        pool = read_column(pool_csv, "image").to_frame()
        problems += table_problems(pool, str(pool_csv), labelled=False)
        tables["unlabeled"] = pool
    return _finish(tables, problems, root, layout)


def read_labelled_csv(root: Path, csv_name: str, columns: tuple[str, str], layout: Layout) -> dict[str, pd.DataFrame]:
    """One CSV with a header naming the image and label columns (Kaggle 2015, APTOS 2019): a ``train`` split only."""
    root = Path(root)
    _require_dir(root)
    path = root / csv_name
    if not path.is_file():
        raise FileNotFoundError(f"label file not found: {path}")
    # utf-8-sig: a CSV saved by a spreadsheet may start with a byte-order mark before the header.
    frame = pd.read_csv(path, dtype=str, encoding="utf-8-sig", skip_blank_lines=True)
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise SourceError(f"{path}: needs columns {list(columns)}, has {list(frame.columns)}")
    frame = frame[list(columns)].rename(columns=dict(zip(columns, ("image", "level"))))
    frame = frame.assign(image=frame["image"].str.strip(), level=frame["level"].str.strip())
    return _finish({"train": frame}, table_problems(frame, str(path), first_row=2), root, layout)


def read_source(source: str, root: str | Path) -> dict[str, pd.DataFrame]:
    """Dispatch on ``data.source``; an unknown source raises naming it and the choices."""
    root = Path(root)
    if source in ("synthetic", "course"):
        # The embedded set is written in the course layout, so one reader serves both.
        return read_course(root, layout=LAYOUTS[source])
    if source == "kaggle":
        return read_labelled_csv(root, "trainLabels.csv", ("image", "level"), LAYOUTS[source])
    if source == "aptos":
        return read_labelled_csv(root, "train.csv", ("id_code", "diagnosis"), LAYOUTS[source])
    raise ValueError(f"unknown data.source {source!r}; choose one of {list(DATA_SOURCES)}")


def unlisted_images(source: str, root: str | Path, tables: dict[str, pd.DataFrame]) -> list[str]:
    """Files under the layout's image folder, subfolders included, that no row names, sorted.

    Files and rows are compared by their path relative to that folder, so with names that hold folders
    (``clinicB/10_left``) a top-level ``10_left.jpeg`` is not taken for ``clinicB/10_left.jpeg``, and a
    subfolder's files are checked like the top level's. For Kaggle and APTOS that is every file in
    ``train/`` or ``train_images/`` (hidden files and folders aside); the course layout shares its folder
    with the CSVs, so there only image files count.
    """
    layout = LAYOUTS[source]
    folder = Path(root) / layout.image_dir
    if not folder.is_dir():
        return []
    listed = {os.path.relpath(path, folder) for frame in tables.values() for path in frame["path"]}
    unlisted = []
    for parent, folders, files in os.walk(folder):
        folders[:] = [name for name in folders if not name.startswith(".")]
        inside = os.path.relpath(parent, folder)
        for name in files:
            if name.startswith(".") or os.path.normpath(os.path.join(inside, name)) in listed:
                continue
            if layout.image_dir or Path(name).suffix.lower() in IMAGE_SUFFIXES:
                unlisted.append(os.path.join(parent, name))
    return sorted(unlisted)
