"""Readers for the data layouts users bring. Each returns label tables with the raw image path per row.

Every reader returns ``{"train": frame, "test": frame, "unlabeled": frame}`` (``test`` and
``unlabeled`` only where the layout has them) with columns ``image``, ``level`` (-1 when
unlabelled) and ``path``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from retinopathy.data import read_column, read_course_split

SOURCES = ("synthetic", "course")


def read_course(root: Path, *, suffix: str = ".jpeg") -> dict[str, pd.DataFrame]:
    """The course layout: header-less ``{train,test}_{img,label}.csv`` and ``<root>/<name>.jpeg``.

    An optional ``unlabeled_img.csv`` lists a pool of unlabelled images (the embedded set has one).
    """
    if not root.is_dir():
        raise FileNotFoundError(f"data.root {root} is not a folder")
    tables = {split: read_course_split(root, split) for split in ("train", "test")}
    overlap = set(tables["train"]["image"]) & set(tables["test"]["image"])
    if overlap:
        raise ValueError(f"{root}: images listed in both train_img.csv and test_img.csv: {sorted(overlap)[:10]}")
    pool_csv = root / "unlabeled_img.csv"
    if pool_csv.is_file():
        tables["unlabeled"] = read_column(pool_csv, "image").to_frame().assign(level=-1)
    for frame in tables.values():
        frame["path"] = [str(root / f"{name}{suffix}") for name in frame["image"]]
    return tables


def read_source(source: str, root: str | Path) -> dict[str, pd.DataFrame]:
    """Dispatch on ``data.source``; an unknown source raises naming it and the choices."""
    root = Path(root)
    if source in ("synthetic", "course"):
        # The embedded set is written in the course layout, so one reader serves both.
        return read_course(root)
    raise ValueError(f"unknown data.source {source!r}; choose one of {list(SOURCES)}")
