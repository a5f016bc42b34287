"""Stage plot: the figures comparing the variants, from the evaluate and train stages' outputs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from retinopathy.plotting import accuracy_curves, confusion_pair, summary_bars
from retinopathy.utils import atomic_path


def make_figures(
    *,
    archs: list[str],
    eval_dir: str | os.PathLike[str],
    history_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    dpi: int,
) -> pd.DataFrame:
    """Draw the comparison figures and write a summary table of the four variants; return the table."""
    eval_dir, history_dir = Path(eval_dir), Path(history_dir)
    rows = {}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for arch in archs:
            matrices, histories = {}, {}
            for pretrained in (True, False):
                variant = f"{arch}-{str(pretrained).lower()}"
                metrics = json.loads((eval_dir / f"{variant}.json").read_text())
                cm = np.asarray(metrics["confusion"])
                matrices[pretrained] = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
                histories[pretrained] = pd.read_csv(history_dir / f"{variant}.tsv", sep="\t")
                rows[variant] = {k: metrics[k] for k in ("accuracy", "kappa", "macro_f1")}
            confusion_pair(arch, matrices, tmp / f"confusion_{arch}.png", dpi=dpi)
            accuracy_curves(arch, histories, tmp / f"accuracy_{arch}.png", dpi=dpi)
        table = pd.DataFrame.from_dict(rows, orient="index")
        summary_bars(table, tmp / "summary.png", dpi=dpi)
        table.rename_axis("variant").reset_index().to_csv(tmp / "summary.csv", index=False)
    return table
