"""Reading the evaluate and train stages' outputs back, one entry per (architecture, pretraining) variant
and training seed, for the stages that compare, plot and report them."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

ARCHS = ("resnet18", "resnet50")
PRETRAINED = ("true", "false")
LABELS = {"true": "pretrained", "false": "from scratch"}
ARCH_LABELS = {"resnet18": "ResNet18", "resnet50": "ResNet50"}
# A training run's per-epoch history, in the order the tables and plots show it.
HISTORY_COLUMNS = ("train_loss", "train_acc", "val_loss", "val_acc", "val_kappa", "test_loss", "test_acc", "test_kappa")


def variant_name(arch: str, pretrained: str) -> str:
    """``resnet18``, ``true`` -> ``resnet18-true``."""
    return f"{arch}-{pretrained}"


def describe(variant: str) -> str:
    """``resnet18-true`` -> ``ResNet18, pretrained``."""
    arch, _, pretrained = variant.partition("-")
    return f"{ARCH_LABELS.get(arch, arch)}, {LABELS.get(pretrained, pretrained)}"


@dataclass
class Run:
    """One trained and evaluated model: its evaluation JSON, test predictions and training summary/history."""

    variant: str
    seed: int
    metrics: dict[str, Any]
    predictions: pd.DataFrame
    summary: dict[str, Any] | None = None
    history: pd.DataFrame | None = None
    external: pd.DataFrame | None = None  # the external site's predictions, where it was scored


def read_json(path: Path) -> dict[str, Any]:
    """A stage output's JSON, naming the file and the fix when it is missing."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the stage that writes it (dvc repro)")
    return json.loads(path.read_text())


def read_history(folder: str | os.PathLike[str]) -> pd.DataFrame | None:
    """A training run's per-epoch history from its dvclive folder, one row per epoch; None when it has none.

    Columns: ``epoch`` and ``<split>_<metric>`` (``train_loss``, ``val_kappa``, ...) in :data:`HISTORY_COLUMNS`' order,
    read from dvclive's ``plots/metrics/<split>/<metric>.tsv`` (:class:`retinopathy.train_stage.EpochLog`).
    """
    frame: pd.DataFrame | None = None
    for path in sorted((Path(folder) / "plots" / "metrics").glob("*/*.tsv")):
        column = f"{path.parent.name}_{path.stem}"
        one = pd.read_csv(path, sep="\t").rename(columns={"step": "epoch", path.stem: column})
        frame = one if frame is None else frame.merge(one, on="epoch", how="outer")
    if frame is None:
        return None
    known = [c for c in HISTORY_COLUMNS if c in frame.columns]
    return frame[["epoch", *known, *sorted(set(frame.columns) - {"epoch", *known})]]


def load_runs(
    seeds: Sequence[int],
    *,
    eval_dir: str | os.PathLike[str] = "metrics/eval",
    predictions_dir: str | os.PathLike[str] = "metrics/predictions",
    train_dir: str | os.PathLike[str] | None = None,
    live_dir: str | os.PathLike[str] | None = None,
    external_dir: str | os.PathLike[str] | None = None,
    archs: Sequence[str] = ARCHS,
) -> dict[str, list[Run]]:
    """Every variant's runs for ``seeds`` (in that order); files of other seeds in the folders are ignored.

    ``train_dir`` holds the train stage's summaries (``<variant>-<seed>.json``), ``live_dir`` its per-epoch
    dvclive folders (``<variant>-<seed>/``), ``external_dir`` the external site's predictions (read for the runs
    whose evaluation scored one); each may be None when not wanted.

    Raises:
        FileNotFoundError: naming the first missing file.
        ValueError: when two runs were evaluated on different test images (or in another order).
    """
    if not seeds:
        raise ValueError("params.yaml: 'seeds' is empty; give at least one training seed")
    runs: dict[str, list[Run]] = {}
    reference: list[str] | None = None
    for arch in archs:
        for pretrained in PRETRAINED:
            variant = variant_name(arch, pretrained)
            for seed in seeds:
                key = f"{variant}-{seed}"
                predictions_path = Path(predictions_dir) / f"{key}.csv"
                if not predictions_path.is_file():
                    raise FileNotFoundError(f"{predictions_path} is missing: run the evaluate stage "
                                            f"(dvc repro evaluate@{key})")
                predictions = pd.read_csv(predictions_path, dtype={"image": str, "patient": str})
                images = predictions["image"].tolist()
                if reference is None:
                    reference = images
                elif images != reference:
                    raise ValueError(f"{predictions_path} covers other test images (or another order) than the "
                                     "first run: rerun evaluate")
                run = Run(variant, int(seed), read_json(Path(eval_dir) / f"{key}.json"), predictions)
                if train_dir is not None:
                    run.summary = read_json(Path(train_dir) / f"{key}.json")
                if live_dir is not None:
                    run.history = read_history(Path(live_dir) / key)
                if external_dir is not None and "external" in run.metrics:
                    run.external = pd.read_csv(Path(external_dir) / f"{key}.csv", dtype={"image": str, "patient": str})
                runs.setdefault(variant, []).append(run)
    return runs
