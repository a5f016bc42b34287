"""Stage compare: the study's two questions as paired differences on the same test patients.

Does pretraining help (for each architecture, pretrained minus from scratch)? Which network is
better (for each pretraining setting, ResNet50 minus ResNet18)? And, where the evaluations scored an external
site, how much each variant loses there (in-domain minus external, :func:`site_shift`). Each difference comes with a 95%
interval (:func:`retinopathy.statistics.paired_difference`): with one seed per variant, a patient
bootstrap; with several, the spread between training seeds added to the patient-bootstrap variance,
on a Student t quantile with Welch-Satterthwaite degrees of freedom, so that few seeds give the wide
interval they warrant. The verdict follows the interval: "no detectable difference" whenever it spans 0.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from retinopathy.metrics import accuracy, macro_f1, quadratic_weighted_kappa, referable, roc_auc
from retinopathy.results import ARCH_LABELS, ARCHS, LABELS, PRETRAINED, Run, describe, variant_name
from retinopathy.settings import CompareSettings
from retinopathy.statistics import paired_difference, site_difference

# name -> (metric, reads the predicted grade (True) or P(referable) (False))
METRICS: dict[str, tuple[Callable[..., float], bool]] = {
    "kappa": (quadratic_weighted_kappa, True),
    "accuracy": (accuracy, True),
    "macro_f1": (macro_f1, True),
    "referable_auc": (roc_auc, False),
}
# Short names for the one metrics file `dvc exp show` reads, so its table stays narrow.
SHORT = {
    "resnet18-true": "r18_pre", "resnet18-false": "r18_scr", "resnet50-true": "r50_pre", "resnet50-false": "r50_scr",
}
SHORT_METRICS = {"accuracy": "acc", "kappa": "qwk", "macro_f1": "f1", "referable_auc": "auc"}


def _inputs(runs: list[Run], by_grade: bool) -> tuple[np.ndarray, list[np.ndarray]]:
    """The test labels (grades, or referable yes/no) and, per seed, the model's outputs aligned with them."""
    return _inputs_of([run.predictions for run in runs], by_grade)


def _reported(run: Run, name: str) -> float:
    """A test metric as the evaluate stage reported it for ``run`` (not recomputed here)."""
    return run.metrics["referable"]["auc"]["value"] if name == "referable_auc" else run.metrics[name]


def per_variant(runs: dict[str, list[Run]]) -> dict[str, dict[str, Any]]:
    """Each variant's test metrics, as evaluated, averaged over its seeds (and their spread when there are several)."""
    out = {}
    for variant, variant_runs in runs.items():
        row: dict[str, Any] = {"seeds": [run.seed for run in variant_runs]}
        for name in METRICS:
            values = np.array([_reported(run, name) for run in variant_runs])
            row[name] = round(float(values.mean()), 4)
            if len(values) > 1:
                row[f"{name}_sd"] = round(float(values.std(ddof=1)), 4)
        out[variant] = row
    return out


def headline(table: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """The compact metrics file: per variant, mean over seeds of accuracy, QWK, macro-F1 and referable AUC."""
    return {SHORT.get(variant, variant): {SHORT_METRICS[m]: row[m] for m in METRICS} for variant, row in table.items()}


def _questions(archs: tuple[str, ...]) -> list[tuple[str, str, str]]:
    """(question, first variant, second variant): the difference is first minus second."""
    out = [(f"Does pretraining help {ARCH_LABELS[a]}?", variant_name(a, "true"), variant_name(a, "false"))
           for a in archs]
    if len(archs) == 2:
        for pretrained in PRETRAINED:
            out.append((f"ResNet50 or ResNet18, {LABELS[pretrained]}?", variant_name(archs[1], pretrained),
                        variant_name(archs[0], pretrained)))
    return out


def compare(runs: dict[str, list[Run]], settings: CompareSettings, archs: tuple[str, ...] = ARCHS) -> dict[str, Any]:
    """Per-variant metrics and every paired difference with its interval and verdict, as a JSON-ready dict."""
    patients = runs[next(iter(runs))][0].predictions["patient"].astype(str).to_numpy()
    comparisons = []
    for question, first, second in _questions(archs):
        for name, (metric, by_grade) in METRICS.items():
            y, a = _inputs(runs[first], by_grade)
            _, b = _inputs(runs[second], by_grade)
            result = paired_difference(
                metric, y, a, b, patients, n_resamples=settings.bootstrap_resamples, confidence=settings.confidence,
                seed=settings.bootstrap_seed, names=(describe(first), describe(second)),
            )
            comparisons.append({"question": question, "metric": name, "first": first, "second": second, **result})
    return {
        "variants": per_variant(runs),
        "comparisons": comparisons,
        "external": site_shift(runs, settings),
        "settings": {"resamples": settings.bootstrap_resamples, "confidence": settings.confidence,
                     "seed": settings.bootstrap_seed, "test_images": int(len(patients)),
                     "test_patients": int(len(set(patients)))},
    }


SITE_METRICS = ("kappa", "accuracy", "referable_auc")


def site_shift(runs: dict[str, list[Run]], settings: CompareSettings) -> dict[str, Any] | None:
    """Per variant and metric, the in-domain test score minus the external site's, with an interval over both sets'
    patients (and seeds; :func:`retinopathy.statistics.site_difference`); None when no run scored a site.

    Raises:
        ValueError: some runs of a variant scored the site and others did not, or they scored other images.
    """
    scored = [run.external is not None for variant_runs in runs.values() for run in variant_runs]
    if not any(scored):
        return None
    if not all(scored):
        raise ValueError("some evaluations scored the external site and others did not: rerun evaluate")
    out: dict[str, Any] = {}
    for variant, variant_runs in runs.items():
        images = variant_runs[0].external["image"].tolist()
        if any(run.external["image"].tolist() != images for run in variant_runs):
            raise ValueError(f"{variant}: the seeds' external predictions cover other images: rerun evaluate")
        rows = {}
        for name in SITE_METRICS:
            metric, by_grade = METRICS[name]
            sets = [(*_inputs_of(frames, by_grade), frames[0]["patient"].astype(str).to_numpy())
                    for frames in ([run.predictions for run in variant_runs], [run.external for run in variant_runs])]
            rows[name] = site_difference(metric, *sets, n_resamples=settings.bootstrap_resamples,
                                         confidence=settings.confidence, seed=settings.bootstrap_seed,
                                         names=("in-domain", "external"))
        out[variant] = rows
    site = runs[next(iter(runs))][0].metrics["external"]["site"]
    return {"site": {k: site[k] for k in ("source", "root", "images", "patients")}, "variants": out}


def _inputs_of(frames: list[Any], by_grade: bool) -> tuple[np.ndarray, list[np.ndarray]]:
    """The labels (grades, or referable yes/no) and per seed the outputs, of predictions tables of one set."""
    y = frames[0]["actual"].to_numpy()
    if by_grade:
        return y, [frame["predicted"].to_numpy() for frame in frames]
    return referable(y), [frame["p_referable"].to_numpy() for frame in frames]


def forest_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The forest plot's rows of a :func:`compare` result, each labelled ``<metric>: <first> - <second>``."""
    return [{"label": f"{c['metric']}: {c['first']} - {c['second']}", **c} for c in result["comparisons"]]


def verdict_lines(result: dict[str, Any]) -> list[str]:
    """One line per comparison of a :func:`compare` result: the difference, its interval and its verdict."""
    return [f"{c['metric']:>13}  {c['first']} - {c['second']}: {c['difference']:+.4f} "
            f"[{c['low']:+.4f}, {c['high']:+.4f}]  {c['verdict']}" for c in result["comparisons"]]
