"""Turn raw photographs into the processed set: field-of-view crop, resize, one PNG per image, in parallel."""

from __future__ import annotations

import json
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from retinopathy.data import channel_stats, label_balance, load_rgb, split_by_patient
from retinopathy.fundus import crop_to_fov, local_average_subtraction
from retinopathy.utils import atomic_path, write_json


@dataclass(frozen=True)
class CropSettings:
    """How every image is processed (the ``preprocess`` section of params.yaml)."""

    size: int = 64
    fov_threshold: int = 20
    graham: bool = False
    graham_sigma: float = 1 / 30


def process_image(src: Path, dst: Path, settings: CropSettings) -> str | None:
    """Process one image; return an error message instead of raising, so all failures can be listed."""
    try:
        image = crop_to_fov(load_rgb(src), settings.size, threshold=settings.fov_threshold)
        if settings.graham:
            image = local_average_subtraction(image, sigma_fraction=settings.graham_sigma)
        image.save(dst, format="PNG")
    except (OSError, ValueError) as exc:
        return f"{src}: {exc}"
    return None


def _process_job(job: tuple[Path, Path, CropSettings]) -> str | None:
    return process_image(*job)


def process_images(pairs: list[tuple[Path, Path]], settings: CropSettings, *, workers: int = 0, desc: str = "preprocess") -> list[str]:
    """Process ``(src, dst)`` pairs on ``workers`` processes (0: all cores) with a progress bar.

    Returns:
        One message per image that could not be processed (missing, corrupt, no field of view).
    """
    workers = workers or os.cpu_count() or 1
    jobs = [(src, dst, settings) for src, dst in pairs]
    if workers == 1:
        results = [_process_job(job) for job in tqdm(jobs, desc=desc, unit="img")]
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            chunk = max(1, min(64, len(jobs) // (workers * 8) or 1))
            results = list(tqdm(pool.map(_process_job, jobs, chunksize=chunk), total=len(jobs), desc=desc, unit="img"))
    return [r for r in results if r is not None]


def build_processed_set(
    tables: dict[str, pd.DataFrame],
    *,
    out_dir: str | os.PathLike[str],
    balance_path: str | os.PathLike[str],
    settings: CropSettings,
    val_fraction: float,
    seed: int,
    workers: int = 0,
) -> dict[str, int]:
    """Split validation out of train by patient, process every image, write tables, stats and label balance.

    ``out_dir`` gets ``<split>/<image>.png`` and ``<split>.csv`` (image, level) for train, val, test
    (and ``unlabeled`` where there is a pool), plus ``stats.json`` with the training set's channel
    mean and std. The folder appears only when every image succeeded.

    Raises:
        ValueError: listing every image that could not be processed.
    """
    train, val = split_by_patient(tables["train"], fraction=val_fraction, seed=seed)
    splits = {"train": train, "val": val, "test": tables["test"]}
    if "unlabeled" in tables:
        splits["unlabeled"] = tables["unlabeled"]
    with atomic_path(out_dir) as tmp:
        pairs = []
        for split, frame in splits.items():
            (tmp / split).mkdir(parents=True)
            pairs += [(Path(p), tmp / split / f"{name}.png") for p, name in zip(frame["path"], frame["image"])]
        failures = process_images(pairs, settings, workers=workers)
        if failures:
            listing = "\n  ".join(failures)
            raise ValueError(f"{len(failures)} of {len(pairs)} images could not be processed:\n  {listing}")
        for split, frame in splits.items():
            columns = ["image"] if split == "unlabeled" else ["image", "level"]
            frame[columns].to_csv(tmp / f"{split}.csv", index=False)
        mean, std = channel_stats([tmp / "train" / f"{name}.png" for name in train["image"]])
        (tmp / "stats.json").write_text(json.dumps({"mean": mean, "std": std, "size": settings.size}, indent=2) + "\n")
    balance = {split: label_balance(frame["level"]) for split, frame in splits.items() if split != "unlabeled"}
    write_json(balance_path, balance)
    counts = {split: len(frame) for split, frame in splits.items()}
    print(f"processed {len(pairs)} images into {out_dir}: {counts}")
    return counts
