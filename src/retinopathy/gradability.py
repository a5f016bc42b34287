"""Stage quality_gate: the gradability gate's error rates on the embedded gradability set (``data/quality``).

Every photograph of the set (:mod:`retinopathy.sites`: half gradable, half with one defect each) goes through
:func:`retinopathy.quality.assess` with the params' thresholds. The positive class is *ungradable*:

- **sensitivity**: the share of ungradable photographs the gate refuses, overall and per defect;
- **specificity**: the share of gradable photographs it passes.

Each with a Clopper-Pearson interval (every photograph is its own patient). The set is rendered, so these are
the gate's error rates on the defects as rendered; docs/quality.md gives its verdicts on real photographs too.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from retinopathy.images import open_rgb
from retinopathy.quality import GATE_DRAFT_SIDE, QualityThresholds, assess
from retinopathy.statistics import proportion_interval
from retinopathy.utils import write_csv, write_json

LABELS = "labels.csv"


def read_quality_set(root: str | os.PathLike[str]) -> pd.DataFrame:
    """The gradability set's table (``image``, ``gradable``, ``defect``) with each image's path.

    Raises:
        FileNotFoundError: no ``labels.csv`` under ``root``, or a listed image missing (all named).
        ValueError: a missing column or a ``gradable`` other than 0/1, naming the file and rows.
    """
    root = Path(root)
    path = root / LABELS
    if not path.is_file():
        raise FileNotFoundError(f"gradability set labels not found: {path}")
    table = pd.read_csv(path, dtype={"image": str, "defect": str})
    missing = {"image", "gradable", "defect"} - set(table.columns)
    if missing:
        raise ValueError(f"{path}: needs columns image, gradable, defect; missing {sorted(missing)}")
    bad = np.flatnonzero(~table["gradable"].isin([0, 1]).to_numpy())
    if bad.size:
        raise ValueError(f"{path}: gradable must be 0 or 1, not on rows {[int(i) + 2 for i in bad[:10]]}")
    table["path"] = [str(root / f"{name}.jpeg") for name in table["image"]]
    absent = [p for p in table["path"] if not Path(p).is_file()]
    if absent:
        raise FileNotFoundError(f"{len(absent)} image(s) of {path} not found: {absent[:10]}")
    return table


def _rate(outcomes: np.ndarray, images: np.ndarray, confidence: float) -> dict[str, Any]:
    """A share with its interval (each image its own patient)."""
    interval = proportion_interval(outcomes.astype(int), images, confidence=confidence).to_dict()
    return {key: interval[key] for key in ("value", "low", "high", "images")}


def gate_error_rates(table: pd.DataFrame, refused: np.ndarray, *, confidence: float = 0.95) -> dict[str, Any]:
    """Sensitivity (ungradable refused) overall and per defect, and specificity (gradable passed), with intervals."""
    ungradable = table["gradable"].to_numpy() == 0
    images = table["image"].to_numpy()
    per_defect = {}
    for defect in sorted(set(table.loc[ungradable, "defect"])):
        rows = (table["defect"] == defect).to_numpy()
        per_defect[defect] = _rate(refused[rows], images[rows], confidence)
    return {
        "positive": "ungradable", "confidence": confidence,
        "interval": "Clopper-Pearson, each photograph its own patient",
        "sensitivity": _rate(refused[ungradable], images[ungradable], confidence),
        "specificity": _rate(~refused[~ungradable], images[~ungradable], confidence),
        "sensitivity_per_defect": per_defect,
    }


def evaluate_gate(root: str | os.PathLike[str], *, thresholds: QualityThresholds, fov_threshold: int,
                  metrics_out: str | os.PathLike[str], verdicts_out: str | os.PathLike[str]) -> dict[str, Any]:
    """Judge every photograph under ``root``; write the error rates (JSON) and each photograph's verdict (CSV)."""
    table = read_quality_set(root)
    verdicts = []
    for path in tqdm(table["path"], desc="quality gate", unit="img", dynamic_ncols=True):
        # Decoded as `retinopathy predict` decodes a photograph before its gate judges it.
        image, _ = open_rgb(path, draft_side=GATE_DRAFT_SIDE)
        verdicts.append(assess(image, fov_threshold=fov_threshold, thresholds=thresholds))
    refused = np.array([not q.gradable for q in verdicts])
    result = gate_error_rates(table, refused)
    result.update(set=str(root), images=int(len(table)), fov_threshold=fov_threshold,
                  thresholds=asdict(thresholds))
    frame = table[["image", "gradable", "defect"]].assign(
        passed=[int(q.gradable) for q in verdicts], fundus=[int(q.fundus) for q in verdicts],
        reasons=[q.reason_text() for q in verdicts])
    write_csv(verdicts_out, frame)
    write_json(metrics_out, result)
    return result
