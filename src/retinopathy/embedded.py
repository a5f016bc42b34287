"""The embedded default data set: synthetic fundus photographs written in the course layout.

``<root>/<patient>_<left|right>.jpeg`` images, header-less one-column CSVs
(``train_img.csv``, ``train_label.csv``, ``test_img.csv``, ``test_label.csv``) and an unlabelled
pool listed in ``unlabeled_img.csv``, so the same reader serves this set and the course's real one.

Patients look like screening patients: both eyes share one camera session (image size, JPEG quality,
framing, exposure, colour cast, optics; :class:`retinopathy.synthetic.Camera`), and their grades are
correlated (``eye_agreement`` of the patients have one grade in both eyes, see
:func:`retinopathy.synthetic.pair_grades`), while each eye keeps its own anatomy and lesions.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from retinopathy.settings import SyntheticSpec
from retinopathy.synthetic import draw_camera, pair_grades, render_fundus
from retinopathy.utils import atomic_path


def _render_one(job: tuple[int, int, str, int, SyntheticSpec, str]) -> None:
    """Render and save one image; its own generators make the result independent of worker order."""
    seed, index, name, grade, spec, out_dir = job
    patient, eye = name.rsplit("_", 1)
    # The camera session (size, JPEG quality, framing, exposure, colour) is the patient's: both eyes draw
    # the same from a generator seeded by the patient alone. None of it depends on the grade.
    session = np.random.default_rng([seed, int(patient), 1])
    size = int(session.integers(spec.min_size, spec.max_size + 1))
    quality = int(session.integers(spec.jpeg_quality_min, spec.jpeg_quality_max + 1))
    camera = draw_camera(session)
    image = render_fundus(grade, np.random.default_rng([seed, index]), size=size, eye=eye, camera=camera)
    image.save(Path(out_dir) / f"{name}.jpeg", quality=quality)


def render_all(render: Callable[[Any], None], jobs: list, workers: int, desc: str, *, chunksize: int = 8) -> None:
    """``render`` over ``jobs`` on ``workers`` processes (0: every core), with a progress bar; each job renders and
    saves one photograph with generators of its own, so the result does not depend on the order."""
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        list(tqdm(pool.map(render, jobs, chunksize=chunksize), total=len(jobs), desc=desc, unit="img"))


def write_synthetic_set(root: str | os.PathLike[str], spec: SyntheticSpec, *, workers: int = 0) -> pd.DataFrame:
    """Render the whole set into ``root`` (replaced atomically) and return its table (image, level, split)."""
    if spec.min_size > spec.max_size:
        raise ValueError(f"synthetic.min_size {spec.min_size} exceeds synthetic.max_size {spec.max_size}")
    if not 0.0 <= spec.eye_agreement <= 1.0:
        raise ValueError(f"synthetic.eye_agreement must be in [0, 1], got {spec.eye_agreement!r}")
    rng = np.random.default_rng(spec.seed)
    rows = []
    patient = 1
    for split, n_patients in (("train", spec.train_patients), ("test", spec.test_patients),
                              ("unlabeled", spec.unlabeled_patients)):
        # The pool keeps the EyePACS mix and the eye pairing too, unseen labels and all, as a real pool would.
        grades = pair_grades(n_patients, rng, agreement=spec.eye_agreement)
        for k in range(n_patients):
            for side, grade in zip(("left", "right"), grades[k]):
                labelled = split != "unlabeled"
                rows.append({"image": f"{patient}_{side}", "level": int(grade) if labelled else -1,
                             "split": split, "pool_grade": -1 if labelled else int(grade)})
            patient += 1
    table = pd.DataFrame(rows)
    # An earlier set is replaced; a folder holding other files is refused (retinopathy.utils.atomic_path).
    with atomic_path(root, replace_dir=True) as tmp:
        tmp.mkdir()
        jobs = [
            (spec.seed, index, row.image, int(row.level if row.level >= 0 else row.pool_grade), spec, str(tmp))
            for index, row in enumerate(table.itertuples())
        ]
        render_all(_render_one, jobs, workers, "synthesize", chunksize=16)
        for split in ("train", "test"):
            part = table[table["split"] == split]
            part[["image"]].to_csv(tmp / f"{split}_img.csv", header=False, index=False)
            part[["level"]].to_csv(tmp / f"{split}_label.csv", header=False, index=False)
        table.loc[table["split"] == "unlabeled", ["image"]].to_csv(tmp / "unlabeled_img.csv", header=False, index=False)
    return table.drop(columns=["pool_grade"], errors="ignore")
