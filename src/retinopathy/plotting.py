"""Figures comparing the variants. Drawing only: inputs are arrays and tables, outputs PNG files."""

from __future__ import annotations

import os
from typing import Mapping

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from retinopathy import GRADES
from retinopathy.utils import atomic_path

LABELS = {True: "with pretraining", False: "without pretraining"}


def _save(fig: plt.Figure, path: str | os.PathLike[str], dpi: int) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    plt.close(fig)


def confusion_pair(arch: str, matrices: Mapping[bool, np.ndarray], path: str | os.PathLike[str], *, dpi: int = 110) -> None:
    """Row-normalised confusion matrices of ``arch`` with and without pretraining, side by side."""
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 4.2), constrained_layout=True)
    for ax, pretrained in zip(axes, (True, False)):
        m = np.asarray(matrices[pretrained], dtype=float)
        im = ax.imshow(m, cmap="Blues", vmin=0.0, vmax=1.0)
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=8, color="white" if m[i, j] > 0.5 else "black")
        ax.set(xticks=list(GRADES), yticks=list(GRADES), xlabel="predicted grade", ylabel="true grade", title=f"{arch} {LABELS[pretrained]}")
    fig.colorbar(im, ax=axes, shrink=0.8, label="fraction of true grade")
    _save(fig, path, dpi)


def accuracy_curves(arch: str, histories: Mapping[bool, pd.DataFrame], path: str | os.PathLike[str], *, dpi: int = 110) -> None:
    """Train and test accuracy per epoch of ``arch``, with and without pretraining (the study's figure)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2), constrained_layout=True)
    for pretrained, colour in ((True, "tab:blue"), (False, "tab:orange")):
        h = histories[pretrained]
        ax.plot(h["epoch"], h["train_acc"], color=colour, linestyle="--", marker="o", label=f"train ({LABELS[pretrained]})")
        ax.plot(h["epoch"], h["test_acc"], color=colour, marker="s", label=f"test ({LABELS[pretrained]})")
    ax.set(xlabel="epoch", ylabel="accuracy", title=f"{arch}: accuracy per epoch")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path, dpi)


def summary_bars(table: pd.DataFrame, path: str | os.PathLike[str], *, dpi: int = 110) -> None:
    """Grouped bars of accuracy, kappa and macro-F1, one group per variant (``table`` indexed by variant)."""
    metrics = ["accuracy", "kappa", "macro_f1"]
    fig, ax = plt.subplots(figsize=(7.5, 4.2), constrained_layout=True)
    x = np.arange(len(table))
    width = 0.8 / len(metrics)
    for k, name in enumerate(metrics):
        bars = ax.bar(x + (k - 1) * width, table[name], width, label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(x, table.index, rotation=15)
    ax.set(ylim=(min(0.0, float(table[metrics].min().min())), 1.0), ylabel="test score", title="test metrics per variant")
    ax.axhline(0, color="black", linewidth=0.6)
    ax.legend(fontsize=8)
    _save(fig, path, dpi)
