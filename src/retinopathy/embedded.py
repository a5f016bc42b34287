"""The embedded default data set: synthetic fundus photographs written in the course layout.

``<root>/<patient>_<left|right>.jpeg`` images, header-less one-column CSVs
(``train_img.csv``, ``train_label.csv``, ``test_img.csv``, ``test_label.csv``) and an unlabelled
pool listed in ``unlabeled_img.csv``, so the same reader serves this set and the course's real one.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from retinopathy.synthetic import render_fundus, sample_grades
from retinopathy.utils import atomic_path


@dataclass(frozen=True)
class SyntheticSpec:
    """Sizes of the embedded set; every random choice derives from ``seed``."""

    seed: int = 2015
    train_patients: int = 500
    test_patients: int = 150
    unlabeled_patients: int = 200
    min_size: int = 192
    max_size: int = 320
    jpeg_quality_min: int = 70
    jpeg_quality_max: int = 95


def _render_one(job: tuple[int, int, str, int, SyntheticSpec, str]) -> None:
    """Render and save one image; its own generator makes the result independent of worker order."""
    seed, index, name, grade, spec, out_dir = job
    rng = np.random.default_rng([seed, index])
    # Size and JPEG quality vary per image and never depend on the grade (no shortcut to learn).
    size = int(rng.integers(spec.min_size, spec.max_size + 1))
    quality = int(rng.integers(spec.jpeg_quality_min, spec.jpeg_quality_max + 1))
    eye = name.rsplit("_", 1)[1]
    image = render_fundus(grade, rng, size=size, eye=eye)
    image.save(Path(out_dir) / f"{name}.jpeg", quality=quality)


def write_synthetic_set(root: str | os.PathLike[str], spec: SyntheticSpec, *, workers: int = 0) -> pd.DataFrame:
    """Render the whole set into ``root`` (replaced atomically) and return its table (image, level, split)."""
    if spec.min_size > spec.max_size:
        raise ValueError(f"synthetic.min_size {spec.min_size} exceeds synthetic.max_size {spec.max_size}")
    rng = np.random.default_rng(spec.seed)
    rows = []
    patient = 1
    for split, n_patients in (("train", spec.train_patients), ("test", spec.test_patients), ("unlabeled", spec.unlabeled_patients)):
        grades = sample_grades(2 * n_patients, rng) if split != "unlabeled" else np.full(2 * n_patients, -1)
        for k in range(n_patients):
            for side, grade in zip(("left", "right"), grades[2 * k : 2 * k + 2]):
                rows.append({"image": f"{patient}_{side}", "level": int(grade), "split": split})
            patient += 1
    table = pd.DataFrame(rows)
    if (table["split"] == "unlabeled").any():
        # The pool keeps the EyePACS mix too, unseen labels and all, as a real unlabelled pool would.
        pool = table["split"] == "unlabeled"
        table.loc[pool, "pool_grade"] = sample_grades(int(pool.sum()), rng)
    workers = workers or os.cpu_count() or 1
    with atomic_path(root) as tmp:
        tmp.mkdir()
        jobs = [
            (spec.seed, index, row.image, int(row.level if row.level >= 0 else row.pool_grade), spec, str(tmp))
            for index, row in enumerate(table.itertuples())
        ]
        with ProcessPoolExecutor(max_workers=workers) as pool_exec:
            list(tqdm(pool_exec.map(_render_one, jobs, chunksize=16), total=len(jobs), desc="synthesize", unit="img"))
        for split in ("train", "test"):
            part = table[table["split"] == split]
            part[["image"]].to_csv(tmp / f"{split}_img.csv", header=False, index=False)
            part[["level"]].to_csv(tmp / f"{split}_label.csv", header=False, index=False)
        table.loc[table["split"] == "unlabeled", ["image"]].to_csv(tmp / "unlabeled_img.csv", header=False, index=False)
    return table.drop(columns=["pool_grade"], errors="ignore")
