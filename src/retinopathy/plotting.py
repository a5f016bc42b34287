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


def confusion_pair(
    arch: str, matrices: Mapping[bool, np.ndarray], path: str | os.PathLike[str], *, dpi: int = 110
) -> None:
    """Row-normalised confusion matrices of ``arch`` with and without pretraining, side by side."""
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 4.2), constrained_layout=True)
    for ax, pretrained in zip(axes, (True, False)):
        m = np.asarray(matrices[pretrained], dtype=float)
        im = ax.imshow(m, cmap="Blues", vmin=0.0, vmax=1.0)
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if m[i, j] > 0.5 else "black")
        ax.set(xticks=list(GRADES), yticks=list(GRADES), xlabel="predicted grade", ylabel="true grade",
               title=f"{arch} {LABELS[pretrained]}")
    fig.colorbar(im, ax=axes, shrink=0.8, label="fraction of true grade")
    _save(fig, path, dpi)


def accuracy_curves(
    arch: str, histories: Mapping[bool, pd.DataFrame], path: str | os.PathLike[str], *, dpi: int = 110
) -> None:
    """Train and test accuracy per epoch of ``arch``, with and without pretraining (the study's figure)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2), constrained_layout=True)
    for pretrained, colour in ((True, "tab:blue"), (False, "tab:orange")):
        h = histories[pretrained]
        ax.plot(h["epoch"], h["train_acc"], color=colour, linestyle="--", marker="o",
                label=f"train ({LABELS[pretrained]})")
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
        # Where the table has the seeds' range (``<metric>_low``/``_high``), it is drawn as an error bar.
        err = None
        if f"{name}_low" in table and f"{name}_high" in table:
            err = np.vstack([table[name] - table[f"{name}_low"], table[f"{name}_high"] - table[name]])
        bars = ax.bar(x + (k - 1) * width, table[name], width, label=name, yerr=err, capsize=2)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(x, table.index, rotation=15)
    ax.set(ylim=(min(0.0, float(table[metrics].min().min())), 1.0), ylabel="test score",
           title="test metrics per variant")
    ax.axhline(0, color="black", linewidth=0.6)
    ax.legend(fontsize=8)
    _save(fig, path, dpi)


def roc_curves(
    curves: Mapping[str, pd.DataFrame], aucs: Mapping[str, float], path: str | os.PathLike[str], *, title: str,
    dpi: int = 110,
) -> None:
    """ROC curves (columns ``fpr``, ``tpr``), one per variant, with the AUC in the legend and the chance diagonal."""
    fig, ax = plt.subplots(figsize=(5.2, 5.0), constrained_layout=True)
    for name, curve in curves.items():
        if curve.empty:  # no cases (or no non-cases) in the test set: nothing to draw
            ax.plot([], [], label=f"{name} (undefined: one class only)")
            continue
        ax.plot(curve["fpr"], curve["tpr"], label=f"{name} (AUC {aucs[name]:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    _save(fig, path, dpi)


def forest(rows: list[dict], path: str | os.PathLike[str], *, title: str, dpi: int = 110) -> None:
    """Paired differences with their intervals, one line each (``label``, ``difference``, ``low``, ``high``), and 0
    marked."""
    fig, ax = plt.subplots(figsize=(7.5, 0.42 * len(rows) + 1.2), constrained_layout=True)
    y = np.arange(len(rows))[::-1]
    for yi, row in zip(y, rows):
        spans_zero = row["low"] <= 0 <= row["high"]
        colour = "grey" if spans_zero else "tab:blue"
        ax.plot([row["low"], row["high"]], [yi, yi], color=colour, linewidth=2)
        ax.plot(row["difference"], yi, "o", color=colour)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(y, [row["label"] for row in rows], fontsize=8)
    ax.set(xlabel="difference (first minus second), 95% interval", title=title)
    ax.grid(axis="x", alpha=0.3)
    _save(fig, path, dpi)


def reliability_diagrams(
    tables: Mapping[str, Mapping[str, pd.DataFrame]], path: str | os.PathLike[str], *, dpi: int = 110
) -> None:
    """One panel per set (``tables``: set -> variant -> reliability rows with ``confidence``, ``accuracy``,
    ``images``): accuracy against mean confidence per bin, the diagonal marking perfect calibration."""
    fig, axes = plt.subplots(1, len(tables), figsize=(4.6 * len(tables), 4.4), constrained_layout=True, squeeze=False)
    for ax, (name, variants) in zip(axes[0], tables.items()):
        for variant, rows in variants.items():
            ax.plot(rows["confidence"], rows["accuracy"], "o-", markersize=3, label=variant)
        ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        ax.set(xlabel="mean probability of the predicted grade (bin)", ylabel="accuracy in the bin", title=name,
               xlim=(0, 1), ylim=(0, 1.01))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    _save(fig, path, dpi)


def referral_curves(
    curves: Mapping[str, Mapping[str, pd.DataFrame]], path: str | os.PathLike[str], *, dpi: int = 110
) -> None:
    """QWK and accuracy of the images kept against the share referred (``curves``: set -> variant -> curve rows with
    ``referred_fraction``, ``kappa``, ``accuracy``), one line style per set."""
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 4.2), constrained_layout=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for style, (name, variants) in zip(("-", "--", ":"), curves.items()):
        for colour, (variant, rows) in zip(colours, variants.items()):
            for ax, metric in zip(axes, ("kappa", "accuracy")):
                ax.plot(rows["referred_fraction"], rows[metric], style, marker="o", markersize=3, color=colour,
                        label=f"{variant}, {name}")
    for ax, label in zip(axes, ("QWK of the images kept", "accuracy of the images kept")):
        ax.set(xlabel="share of images referred (least confident first)", ylabel=label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="best")
    _save(fig, path, dpi)
