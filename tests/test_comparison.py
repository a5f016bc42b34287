"""The compare stage's paired differences: seed-aware intervals, verdicts in the variants' own names."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from retinopathy.comparison import compare
from retinopathy.metrics import quadratic_weighted_kappa, referable
from retinopathy.results import Run
from retinopathy.settings import CompareSettings
from retinopathy.statistics import PATIENT_PERCENTILE, PATIENTS_ONLY, SEED_T, SEEDS_AND_PATIENTS

ARCHS = ("resnet18", "resnet50")


def fake_runs(seeds: list[int], *, n_patients: int = 40) -> dict[str, list[Run]]:
    """Every variant's runs on one test set: pretrained ResNet50 grades almost every eye right, the rest half."""
    rng = np.random.default_rng(0)
    actual = rng.choice(5, size=2 * n_patients, p=[0.6, 0.1, 0.2, 0.05, 0.05])
    patients = np.repeat(np.arange(n_patients), 2).astype(str)
    runs: dict[str, list[Run]] = {}
    for arch in ARCHS:
        for pretrained in ("true", "false"):
            variant, right = f"{arch}-{pretrained}", 0.95 if (arch, pretrained) == ("resnet50", "true") else 0.5
            runs[variant] = []
            for seed in seeds:
                predicted = np.where(rng.random(len(actual)) < right, actual, 0)
                frame = pd.DataFrame({"patient": patients, "actual": actual, "predicted": predicted,
                                      "p_referable": referable(predicted) * 0.8 + 0.2 * rng.random(len(actual))})
                metrics = {"accuracy": float(np.mean(predicted == actual)),
                           "kappa": quadratic_weighted_kappa(actual, predicted),
                           "macro_f1": 0.5, "referable": {"auc": {"value": 0.9}}}
                runs[variant].append(Run(variant, seed, metrics, frame))
    return runs


def test_several_seeds_give_t_intervals_with_degrees_of_freedom_and_named_verdicts() -> None:
    out = compare(fake_runs([1, 2, 3]), CompareSettings(bootstrap_resamples=60), ARCHS)
    assert len(out["comparisons"]) == 4 * 4
    for c in out["comparisons"]:
        assert c["method"] == SEED_T and c["accounts_for"] == SEEDS_AND_PATIENTS and c["df"] >= 1
        assert c["seeds_a"] == c["seeds_b"] == 3 and c["low"] <= c["difference"] <= c["high"]
    question = "Does pretraining help ResNet50?"
    kappa = next(c for c in out["comparisons"] if c["question"] == question and c["metric"] == "kappa")
    assert kappa["low"] > 0
    assert kappa["verdict"] == "ResNet50, pretrained better than ResNet50, from scratch (95% interval excludes 0)"


def test_one_seed_gives_patient_bootstrap_intervals_without_degrees_of_freedom() -> None:
    out = compare(fake_runs([7]), CompareSettings(bootstrap_resamples=60), ARCHS)
    for c in out["comparisons"]:
        assert c["method"] == PATIENT_PERCENTILE and c["accounts_for"] == PATIENTS_ONLY and "df" not in c
    assert out["settings"]["test_patients"] == 40 and out["variants"]["resnet18-true"]["seeds"] == [7]
    with pytest.raises(KeyError):
        out["variants"]["resnet18-true"]["kappa_sd"]  # one seed: no spread to report
