"""The label-efficiency study: test QWK against the number of labelled training images, pretrained vs from scratch.

Each point of the study (``studies/label_efficiency/dvc.yaml``) is the project's pipeline run with
``data.label_fraction`` set to one fraction: the preprocess stage keeps that share of the training
patients (validation and test stay the same) and moves the rest to the unlabelled pool, ResNet18 is
pretrained on the images and trained with and without that pretraining for each training seed, and
the evaluate stage scores it on the test patients. This module reads those outputs back and writes
the study's table (CSV and markdown) and figure. Intervals come from :mod:`retinopathy.statistics`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from retinopathy.metrics import quadratic_weighted_kappa
from retinopathy.results import ARCH_LABELS, read_json
from retinopathy.statistics import Interval, IntervalSettings, paired_difference, patient_bootstrap
from retinopathy.utils import atomic_path, write_csv

ARMS = {"true": "pretrained", "false": "scratch"}
ARM_LABELS = {"true": "self-supervised pretraining", "false": "from scratch"}
ARM_COLOURS = {"true": "tab:blue", "false": "tab:orange"}


@dataclass(frozen=True)
class SummarySettings(IntervalSettings):
    """The ``summary`` section of the study's params.yaml: how its intervals are drawn, and its figure's resolution."""

    dpi: int = 110


@dataclass(frozen=True)
class StudyLayout:
    """Where the study's stages write, each folder holding one subfolder per fraction (named as DVC writes it)."""

    root: Path = Path("studies/label_efficiency")

    def preprocess(self, fraction: str) -> Path:
        return self.root / "metrics" / "preprocess" / fraction

    def eval(self, fraction: str) -> Path:
        return self.root / "metrics" / "eval" / fraction

    def predictions(self, fraction: str) -> Path:
        return self.root / "metrics" / "predictions" / fraction


def fraction_name(fraction: float | int) -> str:
    """A fraction as its folders and stages are named: DVC writes the value as YAML read it (0.1, 0.25, 1.0)."""
    return str(fraction)


def mean_kappa(y_true: np.ndarray, *predictions: np.ndarray) -> float:
    """Test QWK averaged over training seeds (one predicted-grade array per seed)."""
    return float(np.mean([quadratic_weighted_kappa(y_true, p) for p in predictions]))


def _predictions(folder: Path, arch: str, pretrained: str, seeds: Sequence[int]) -> list[pd.DataFrame]:
    frames = []
    for seed in seeds:
        path = folder / f"{arch}-{pretrained}-{seed}.csv"
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run the study's evaluate stages (make label-efficiency)")
        frames.append(pd.read_csv(path, dtype={"image": str, "patient": str}))
    return frames


def _labelled_counts(layout: StudyLayout, fraction: float | int, seeds: Sequence[int]) -> dict[str, Any]:
    """A point's first columns: its fraction, the labelled patients it kept, each split's images, and the seeds."""
    name = fraction_name(fraction)
    report = read_json(layout.preprocess(name) / "preprocess_report.json")
    balance = read_json(layout.preprocess(name) / "label_balance.json")
    kept = report.get("label_fraction")
    if kept is None:
        path = layout.preprocess(name) / "preprocess_report.json"
        raise ValueError(f"{path} has no label_fraction section: rerun the study's preprocess@{name} stage")
    return {
        "fraction": float(fraction),
        "train_patients": kept["kept_patients"],
        "train_images": balance["train"]["total"],
        "val_images": balance["val"]["total"],
        "test_images": balance["test"]["total"],
        "seeds": " ".join(str(seed) for seed in seeds),
    }


def _same_test_images(
    frames: Sequence[pd.DataFrame], reference: list[str] | None, folder: Path, arch: str, pretrained: str,
    seeds: Sequence[int],
) -> list[str]:
    """The test images every prediction file must cover: ``reference``, or the first frame's where there is none yet
    (ValueError naming a file of ``folder`` that covers others)."""
    for seed, frame in zip(seeds, frames):
        images = frame["image"].tolist()
        if reference is None:
            reference = images
        elif images != reference:
            raise ValueError(
                f"{folder}/{arch}-{pretrained}-{seed}.csv covers other test images than the "
                "first point: every fraction must be evaluated on the same test patients "
                "(rerun the study's preprocess stages)"
            )
    assert reference is not None
    return reference


def _arm_columns(arm: str, interval: Interval, per_seed: Sequence[float]) -> dict[str, Any]:
    """One arm's columns: its mean test QWK with the interval, and the seeds' spread and values."""
    return {
        f"{arm}_qwk": round(interval.point, 4),
        f"{arm}_low": round(interval.low, 4),
        f"{arm}_high": round(interval.high, 4),
        f"{arm}_seed_sd": round(float(np.std(per_seed, ddof=1)), 4) if len(per_seed) > 1 else float("nan"),
        f"{arm}_per_seed": " ".join(f"{value:.4f}" for value in per_seed),
    }


def _difference_columns(diff: dict[str, Any]) -> dict[str, Any]:
    """The pretrained-minus-scratch columns, from :func:`retinopathy.statistics.paired_difference`'s result."""
    return {
        "difference": round(diff["difference"], 4),
        "difference_low": round(diff["low"], 4),
        "difference_high": round(diff["high"], 4),
        "difference_df": diff.get("df", float("nan")),
        "difference_covers": diff["accounts_for"],
        "verdict": diff["verdict"],
    }


def summarize_study(
    fractions: Sequence[float | int],
    seeds: Sequence[int],
    *,
    layout: StudyLayout = StudyLayout(),
    arch: str = "resnet18",
    settings: SummarySettings = SummarySettings(),
) -> pd.DataFrame:
    """One row per fraction: labelled patients and images, each arm's test QWK with its interval, and the paired
    difference.

    Each arm's QWK is the mean over ``seeds`` of the test QWK; its interval is a percentile bootstrap of that
    mean over test patients (both eyes together; the same resample for every seed), so it covers test
    sampling, not training randomness, whose spread is ``*_seed_sd``. The difference (pretrained minus
    from scratch) is :func:`retinopathy.statistics.paired_difference`: the same test patients for both
    arms, and, with two or more seeds per arm, the spread between seeds added on a Student t quantile
    with Welch-Satterthwaite degrees of freedom (``difference_df``), which with two seeds per arm can be
    as few as 1 and gives a wide interval, honestly.

    Raises:
        FileNotFoundError: naming the first missing stage output.
        ValueError: when the fractions were evaluated on different test images, which the study rules out.
    """
    if not fractions or not seeds:
        raise ValueError("the study's params.yaml needs at least one fraction in 'fractions' and one seed in 'seeds'")
    boot = settings.keywords()
    rows: list[dict[str, Any]] = []
    reference: list[str] | None = None
    for fraction in sorted(fractions):
        name = fraction_name(fraction)
        # What the point trained on: its labelled patients, and each split's images.
        row = _labelled_counts(layout, fraction, seeds)
        # Each arm's test QWK over the seeds, every point on the test images of the first.
        outputs = {}
        for pretrained, arm in ARMS.items():
            frames = _predictions(layout.predictions(name), arch, pretrained, seeds)
            reference = _same_test_images(frames, reference, layout.predictions(name), arch, pretrained, seeds)
            y = frames[0]["actual"].to_numpy()
            patients = frames[0]["patient"].astype(str).to_numpy()
            outputs[pretrained] = [frame["predicted"].to_numpy() for frame in frames]
            interval = patient_bootstrap(mean_kappa, [y, *outputs[pretrained]], patients, **boot)
            per_seed = [float(read_json(layout.eval(name) / f"{arch}-{pretrained}-{seed}.json")["kappa"])
                        for seed in seeds]
            row.update(_arm_columns(arm, interval, per_seed))
        # Pretrained minus scratch, paired on the same test patients.
        diff = paired_difference(
            quadratic_weighted_kappa, y, outputs["true"], outputs["false"], patients,
            names=("pretrained", "from scratch"), **boot,
        )
        row.update(_difference_columns(diff))
        rows.append(row)
    return pd.DataFrame(rows)


def interval_note(seeds: Sequence[int], settings: SummarySettings) -> str:
    """What the intervals of the table and the figure cover, in one paragraph."""
    level = f"{100 * settings.confidence:g}%"
    seed_text = f"{len(seeds)} training seed{'s' if len(seeds) != 1 else ''} ({', '.join(map(str, seeds))})"
    return (
        f"QWK: test quadratic weighted kappa, mean over {seed_text}. Its {level} interval is a percentile bootstrap "
        f"over test patients (both eyes resampled together, {settings.bootstrap_resamples} replicates, "
        "retinopathy.statistics.patient_bootstrap): it covers test-set sampling only, not training randomness, "
        "whose spread over seeds is the seed SD column (and the dots of the figure). Pretrained minus scratch: "
        "paired on the same test patients (retinopathy.statistics.paired_difference); "
        + ("its interval adds the variance between each arm's seeds to the patient-bootstrap variance and takes a "
           "Student t quantile with Welch-Satterthwaite degrees of freedom (df column), so it covers training "
           "randomness too; with few seeds the df are few and the interval wide."
           if len(seeds) > 1 else "with one seed per arm it is a patient bootstrap and covers test patients only.")
    )


def _cell(value: float, low: float, high: float, *, signed: bool = False) -> str:
    """``0.812 (0.771 to 0.850)``; with a sign for differences."""
    sign = "+" if signed else ""
    return f"{value:{sign}.3f} ({low:{sign}.3f} to {high:{sign}.3f})"


def markdown_table(table: pd.DataFrame, *, seeds: Sequence[int], settings: SummarySettings, arch: str = "resnet18",
                   figure: str | None = None) -> str:
    """The study's table as markdown, with the note on what its intervals cover."""
    first, level = table.iloc[0], f"{100 * settings.confidence:g}%"
    lines = [
        f"# Label efficiency: {ARCH_LABELS.get(arch, arch)} with and without self-supervised pretraining",
        "",
        "Test QWK against the number of labelled training images. Each row keeps `data.label_fraction` of the training "
        "patients (whole patients, stratified by worse-eye grade); the rest join the unlabelled pool that pretraining "
        f"uses. Validation ({first['val_images']} images) and test ({first['test_images']} images) are the same in "
        "every row.",
        "",
        interval_note(seeds, settings),
        "",
        f"| label fraction | labelled patients | labelled images | pretrained QWK ({level} interval) | seed SD "
        f"| from scratch QWK ({level} interval) | seed SD | pretrained - scratch ({level} interval) | df | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for _, row in table.iterrows():
        arms = [(_cell(row[f"{arm}_qwk"], row[f"{arm}_low"], row[f"{arm}_high"]),
                 "-" if pd.isna(row[f"{arm}_seed_sd"]) else f"{row[f'{arm}_seed_sd']:.3f}") for arm in ARMS.values()]
        difference = _cell(row["difference"], row["difference_low"], row["difference_high"], signed=True)
        df = "-" if pd.isna(row.get("difference_df")) else f"{row['difference_df']:.1f}"
        lines.append(
            f"| {row['fraction']:g} | {row['train_patients']} | {row['train_images']} | {arms[0][0]} | {arms[0][1]} "
            f"| {arms[1][0]} | {arms[1][1]} | {difference} | {df} | {row['verdict']} |"
        )
    if figure is not None:
        lines += ["", f"![test QWK against labelled training images]({figure})"]
    return "\n".join(lines) + "\n"


def draw_curve(
    table: pd.DataFrame, path: str | os.PathLike[str], *, note: str, arch: str = "resnet18", dpi: int = 110
) -> None:
    """Left: each arm's test QWK with its interval against labelled images (log scale), seeds as dots.
    Right: pretrained minus scratch with its interval. Draws ``table`` only."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.6), constrained_layout=True)
    x = table["train_images"].to_numpy(dtype=float)
    for (pretrained, arm), shift in zip(ARMS.items(), (0.97, 1.03)):  # side by side, so the bars do not hide each other
        value, low, high = (table[f"{arm}_{part}"].to_numpy(dtype=float) for part in ("qwk", "low", "high"))
        colour = ARM_COLOURS[pretrained]
        left.errorbar(x * shift, value, yerr=[value - low, high - value], color=colour, marker="o", capsize=3,
                      label=f"{ARM_LABELS[pretrained]} (mean, 95% interval)")
        for xi, seeds in zip(x, table[f"{arm}_per_seed"]):
            values = [float(v) for v in str(seeds).split()]
            left.plot([xi * shift] * len(values), values, ".", color=colour, alpha=0.45)
    left.set_xscale("log")
    left.set_xticks(x, [f"{int(n)}\n({f:g})" for n, f in zip(x, table["fraction"])])
    left.minorticks_off()
    left.set(xlabel="labelled training images (label fraction)", ylabel="test QWK",
             title=f"{ARCH_LABELS.get(arch, arch)}: test QWK against labelled images")
    left.grid(alpha=0.3)
    left.legend(fontsize=8)
    diff, low, high = (table[c].to_numpy(dtype=float) for c in ("difference", "difference_low", "difference_high"))
    right.errorbar(x, diff, yerr=[diff - low, high - diff], color="tab:green", marker="o", capsize=3)
    right.axhline(0, color="black", linewidth=0.8)
    right.set_xscale("log")
    right.set_xticks(x, [f"{int(n)}\n({f:g})" for n, f in zip(x, table["fraction"])])
    right.minorticks_off()
    right.set(xlabel="labelled training images (label fraction)", ylabel="QWK difference",
              title="pretrained minus from scratch (paired, 95% interval)")
    right.grid(alpha=0.3)
    fig.text(0.01, -0.02, note, fontsize=7, wrap=True, ha="left", va="top")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
    plt.close(fig)


def write_study(
    table: pd.DataFrame,
    out_dir: str | os.PathLike[str],
    *,
    seeds: Sequence[int],
    settings: SummarySettings,
    arch: str = "resnet18",
) -> dict[str, Path]:
    """``label_efficiency.csv``, ``.md`` and ``.png`` in ``out_dir``, each written atomically."""
    out = Path(out_dir)
    paths = {kind: out / f"label_efficiency.{kind}" for kind in ("csv", "md", "png")}
    write_csv(paths["csv"], table)
    draw_curve(table, paths["png"], note=interval_note(seeds, settings), arch=arch, dpi=settings.dpi)
    with atomic_path(paths["md"]) as tmp:
        tmp.write_text(markdown_table(table, seeds=seeds, settings=settings, arch=arch, figure=paths["png"].name))
    return paths
