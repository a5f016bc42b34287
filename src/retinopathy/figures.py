"""Stage plot: the figures comparing the variants, and the CSVs behind `dvc plots`, from the evaluate and train
stages' outputs.

With several training seeds, confusion matrices, ROC curves, reliability diagrams and referral curves pool the
seeds' predictions (test, and the external site's where it was scored),
accuracy curves average them per epoch, and the summary bars show the mean with the seeds' range.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from retinopathy.calibration import referral_curve, reliability_table
from retinopathy.metrics import confusion, referable, referable_score, roc_auc, roc_table
from retinopathy.plotting import (
    accuracy_curves,
    confusion_pair,
    referral_curves,
    reliability_diagrams,
    roc_curves,
    summary_bars,
)
from retinopathy.results import ARCHS, PRETRAINED, Run, describe, load_runs, variant_name
from retinopathy.utils import atomic_path


def _roc_or_empty(y: np.ndarray, score: np.ndarray) -> pd.DataFrame:
    """The ROC table, or an empty one where the test set lacks cases or non-cases (a small or unusual set)."""
    if len(np.unique(y)) < 2:
        return pd.DataFrame(columns=["fpr", "tpr", "threshold"])
    return roc_table(y, score)


def _pooled(runs: list[Run]) -> pd.DataFrame:
    return pd.concat([run.predictions.assign(seed=run.seed) for run in runs], ignore_index=True)


def _mean_history(runs: list[Run]) -> pd.DataFrame:
    histories = [run.history for run in runs if run.history is not None]
    if not histories:
        raise FileNotFoundError(f"no per-epoch history for {runs[0].variant}: run the train stage")
    return pd.concat(histories).groupby("epoch", as_index=False).mean(numeric_only=True)


def make_figures(
    *,
    seeds: Sequence[int],
    eval_dir: str | os.PathLike[str],
    predictions_dir: str | os.PathLike[str],
    live_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    plots_dir: str | os.PathLike[str],
    dpi: int,
    archs: Sequence[str] = ARCHS,
    external_dir: str | os.PathLike[str] | None = None,
) -> pd.DataFrame:
    """Draw the figures into ``out_dir`` and write the `dvc plots` CSVs into ``plots_dir``; return the summary table."""
    runs = load_runs(seeds, eval_dir=eval_dir, predictions_dir=predictions_dir, live_dir=live_dir,
                     external_dir=external_dir, archs=archs)
    pooled_by_variant = {variant: _pooled(variant_runs) for variant, variant_runs in runs.items()}
    rows = {}
    # Each folder replaces only an earlier run's figures or plots (retinopathy.utils.atomic_path refuses others).
    with atomic_path(out_dir, replace_dir=True) as figures, atomic_path(plots_dir, replace_dir=True) as plots:
        figures.mkdir()
        plots.mkdir()
        for arch in archs:
            matrices, histories = {}, {}
            for pretrained in PRETRAINED:
                variant = variant_name(arch, pretrained)
                pooled = pooled_by_variant[variant]
                matrices[pretrained == "true"] = confusion(pooled["actual"], pooled["predicted"], normalize=True)
                histories[pretrained == "true"] = history = _mean_history(runs[variant])
                pooled[["seed", "image", "actual", "predicted"]].to_csv(plots / f"confusion_{variant}.csv", index=False)
                history.round(5).to_csv(plots / f"history_{variant}.csv", index=False)
                _roc_or_empty(referable(pooled["actual"]), pooled["p_referable"]).round(5).to_csv(
                    plots / f"roc_{variant}.csv", index=False
                )
                values = {m: np.array([run.metrics[m] for run in runs[variant]])
                          for m in ("accuracy", "kappa", "macro_f1")}
                rows[variant] = {**{m: float(v.mean()) for m, v in values.items()},
                                 **{f"{m}_low": float(v.min()) for m, v in values.items()},
                                 **{f"{m}_high": float(v.max()) for m, v in values.items()}}
            confusion_pair(arch, matrices, figures / f"confusion_{arch}.png", dpi=dpi)
            accuracy_curves(arch, histories, figures / f"accuracy_{arch}.png", dpi=dpi)
        table = pd.DataFrame.from_dict(rows, orient="index")
        summary_bars(table, figures / "summary.png", dpi=dpi)
        for grade, name in ((2, "referable"), (3, "sight_threatening")):
            curves, aucs = {}, {}
            for variant, pooled in pooled_by_variant.items():
                probs = pooled[[f"p{g}" for g in range(5)]].to_numpy()
                y, score = referable(pooled["actual"], from_grade=grade), referable_score(probs, from_grade=grade)
                curves[describe(variant)] = _roc_or_empty(y, score)
                aucs[describe(variant)] = roc_auc(y, score)
            roc_curves(curves, aucs, figures / f"roc_{name}.png",
                       title=f"{name.replace('_', '-')} DR (grade >= {grade}), test", dpi=dpi)
        _calibration_figures(runs, figures, plots, dpi)
        table.rename_axis("variant").reset_index().to_csv(figures / "summary.csv", index=False)
    return table


def _calibration_figures(runs: dict[str, list[Run]], figures: Path, plots: Path, dpi: int) -> None:
    """Reliability diagrams and referral curves of every variant, its seeds pooled, on test and on the external
    site where it was scored: ``calibration.png``, ``referral.png`` and the CSVs
    ``reliability_<set>_<variant>.csv`` and ``referral_<set>_<variant>.csv`` (set: test or external)."""
    reliability: dict[str, dict[str, pd.DataFrame]] = {}
    referral: dict[str, dict[str, pd.DataFrame]] = {}
    for variant, variant_runs in runs.items():
        sets = {"test": [run.predictions for run in variant_runs]}
        if all(run.external is not None for run in variant_runs):
            sets["external"] = [run.external for run in variant_runs]
        for name, frames in sets.items():
            pooled = pd.concat(frames, ignore_index=True)
            labels, preds = pooled["actual"].to_numpy(), pooled["predicted"].to_numpy()
            probs = pooled[[f"p{g}" for g in range(5)]].to_numpy()
            for kind, store, rows in (("reliability", reliability, reliability_table(labels, probs, preds)),
                                      ("referral", referral, referral_curve(labels, probs, preds))):
                store.setdefault(name, {})[describe(variant)] = frame = pd.DataFrame(rows)
                frame.to_csv(plots / f"{kind}_{name}_{variant}.csv", index=False)
    reliability_diagrams(reliability, figures / "calibration.png", dpi=dpi)
    referral_curves(referral, figures / "referral.png", dpi=dpi)
