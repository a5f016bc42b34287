"""Patient-level bootstrap intervals and paired model comparisons, on small generated data."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from scipy import stats

from retinopathy.metrics import roc_auc
from retinopathy.statistics import (
    PATIENTS_ONLY,
    SEEDS_AND_PATIENTS,
    Interval,
    paired_difference,
    patient_bootstrap,
    verdict,
)


def fast_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Plain numpy accuracy: the paired bootstrap calls the metric thousands of times."""
    return float(np.mean(y_true == y_pred))


def two_eyes(n_patients: int) -> np.ndarray:
    """Patient ids for ``n_patients`` patients, left then right eye: ``[0, 0, 1, 1, ...]`` as strings."""
    return np.repeat(np.arange(n_patients), 2).astype(str)


def graded_pairs(correct_patients: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels and predictions where both eyes of patient p are right exactly when ``correct_patients[p]``."""
    y_true = np.repeat(np.arange(len(correct_patients)) % 5, 2)
    y_pred = np.where(np.repeat(correct_patients, 2), y_true, (y_true + 1) % 5)
    return y_true, y_pred


def test_accuracy_interval_matches_the_binomial_spread_of_patients() -> None:
    # 15 of 20 patients right, both eyes alike: the replicate accuracy is Binomial(20, 0.75) / 20.
    y_true, y_pred = graded_pairs(np.arange(20) < 15)
    out = patient_bootstrap(fast_accuracy, [y_true, y_pred], two_eyes(20), n_resamples=2000)
    assert out.point == pytest.approx(0.75)
    assert out.low == pytest.approx(stats.binom.ppf(0.025, 20, 0.75) / 20, abs=0.051)
    assert out.high == pytest.approx(stats.binom.ppf(0.975, 20, 0.75) / 20, abs=0.051)
    assert out.low < out.point < out.high


def test_mean_interval_has_the_width_of_patients_not_of_images() -> None:
    # Both eyes share a value, so there are 200 independent observations, not 400.
    values = np.repeat(np.random.default_rng(1).normal(size=200), 2)
    out = patient_bootstrap(np.mean, [values], two_eyes(200), n_resamples=2000)
    patient_width = 2 * 1.96 * values[::2].std(ddof=1) / np.sqrt(200)
    assert out.high - out.low == pytest.approx(patient_width, rel=0.15)
    # An image-level bootstrap would be sqrt(2) narrower, outside the tolerance above.
    assert out.high - out.low > 1.2 * patient_width / np.sqrt(2)


def test_same_seed_gives_the_same_interval_and_another_seed_differs() -> None:
    values = np.random.default_rng(2).normal(size=60)
    patients = two_eyes(30)
    first = patient_bootstrap(np.mean, [values], patients, seed=3)
    assert patient_bootstrap(np.mean, [values], patients, seed=3) == first
    assert patient_bootstrap(np.mean, [values], patients, seed=4) != first


def test_resampling_keeps_both_eyes_of_a_patient_together() -> None:
    seen: list[np.ndarray] = []

    def recording(images: np.ndarray) -> float:
        seen.append(images.copy())
        return float(len(images))

    n = 12
    images = np.arange(2 * n)  # image 2p is patient p's left eye, 2p + 1 the right
    patient_bootstrap(recording, [images], two_eyes(n), n_resamples=200)
    resamples = seen[1:]  # seen[0] is the point estimate on all images
    assert len(resamples) == 200
    for drawn in resamples:
        counts = Counter(drawn.tolist())
        assert len(drawn) == 2 * n
        assert all(counts[2 * p] == counts[2 * p + 1] for p in range(n))
    # Resampled with replacement: some patient appears twice in some replicate.
    assert any(max(Counter(d.tolist()).values()) > 1 for d in resamples)


def test_auc_replicates_with_one_class_are_dropped_and_the_interval_stays_finite() -> None:
    # Two referable patients out of 30: about 13% of resamples hold no positive and have no AUC.
    y = np.zeros(60, dtype=int)
    y[:4] = 1
    score = np.random.default_rng(5).random(60) + y * 0.5
    out = patient_bootstrap(roc_auc, [y, score], two_eyes(30), n_resamples=500)
    assert 0 < out.dropped < 250
    assert np.isfinite(out.low) and np.isfinite(out.high) and out.low <= out.point <= out.high


def test_interval_is_undefined_when_most_replicates_are_undefined() -> None:
    def defined_only_when_patient_zero_appears_once(images: np.ndarray) -> float:
        return 1.0 if np.sum(images == 0) == 1 else float("nan")

    out = patient_bootstrap(defined_only_when_patient_zero_appears_once, [np.arange(40)], two_eyes(20), n_resamples=300)
    assert out.point == 1.0
    assert np.isnan(out.low) and np.isnan(out.high) and out.dropped > 150


def test_constant_metric_gives_an_interval_of_width_zero() -> None:
    out = patient_bootstrap(lambda a: 0.5, [np.arange(20)], two_eyes(10), n_resamples=100)
    assert out == Interval(0.5, 0.5, 0.5)
    assert out.to_dict() == {"value": 0.5, "low": 0.5, "high": 0.5}


def test_bootstrap_rejects_patient_ids_that_do_not_match_the_images() -> None:
    with pytest.raises(ValueError, match="one id per image"):
        patient_bootstrap(np.mean, [np.arange(10)], two_eyes(4))


@pytest.mark.parametrize(
    ("low", "high", "higher_is_better", "expected"),
    [
        (-0.1, 0.2, True, "no detectable difference (the 95% interval spans 0)"),
        (0.0, 0.2, True, "no detectable difference (the 95% interval spans 0)"),
        (0.05, 0.2, True, "A better than B (95% interval excludes 0)"),
        (-0.2, -0.05, True, "A worse than B (95% interval excludes 0)"),
        (0.05, 0.2, False, "A worse than B (95% interval excludes 0)"),
        (float("nan"), 0.2, True, "undetermined (the interval is undefined)"),
    ],
)
def test_verdict_reads_the_sign_of_the_interval(low: float, high: float, higher_is_better: bool, expected: str) -> None:
    assert verdict(low, high, higher_is_better=higher_is_better) == expected


def test_identical_models_show_no_difference() -> None:
    y_true, y_pred = graded_pairs(np.random.default_rng(6).random(50) < 0.7)
    out = paired_difference(fast_accuracy, y_true, [y_pred], [y_pred.copy()], two_eyes(50), n_resamples=200)
    assert out["difference"] == 0.0 and out["low"] == 0.0 and out["high"] == 0.0
    assert out["verdict"].startswith("no detectable difference")
    assert out["accounts_for"] == PATIENTS_ONLY and out["seeds_a"] == out["seeds_b"] == 1


def test_clearly_better_model_is_called_better() -> None:
    rng = np.random.default_rng(7)
    y_true, good = graded_pairs(rng.permutation(100) < 95)
    _, poor = graded_pairs(rng.permutation(100) < 60)
    out = paired_difference(fast_accuracy, y_true, [good], [poor], two_eyes(100), names=("ResNet50", "ResNet18"))
    assert out["difference"] == pytest.approx(0.35)
    assert 0 < out["low"] < 0.35 < out["high"]
    assert out["verdict"] == "ResNet50 better than ResNet18 (95% interval excludes 0)"
    flipped = paired_difference(fast_accuracy, y_true, [poor], [good], two_eyes(100))
    assert flipped["verdict"] == "A worse than B (95% interval excludes 0)"


def test_paired_difference_resamples_the_same_patients_for_both_models() -> None:
    # B equals A except on 5 of 100 patients, which only A gets right. Paired, every replicate's
    # difference is the share of those 5 patients: small but positive. Unpaired, A's own spread (50%
    # accuracy, sd ~ 0.05) would swamp a 0.05 difference.
    correct = np.arange(100) < 50
    y_true, a = graded_pairs(correct)
    _, b = graded_pairs(correct & (np.arange(100) >= 5))
    out = paired_difference(fast_accuracy, y_true, [a], [b], two_eyes(100))
    assert out["difference"] == pytest.approx(0.05)
    assert out["low"] > 0 and out["verdict"].startswith("A better than B")


def test_resampling_training_seeds_widens_the_interval() -> None:
    rng = np.random.default_rng(8)
    y_true, _ = graded_pairs(np.ones(100, dtype=bool))
    # A's three seeds differ a lot (60%, 80%, 100% of patients right); B has three near-identical seeds.
    arm_a = [graded_pairs(rng.permutation(100) < k)[1] for k in (60, 80, 100)]
    b = graded_pairs(rng.permutation(100) < 70)[1]
    arm_b = [b, b.copy(), b.copy()]
    patients = two_eyes(100)
    out = paired_difference(fast_accuracy, y_true, arm_a, arm_b, patients, n_resamples=500)
    assert out["accounts_for"] == SEEDS_AND_PATIENTS and out["seeds_a"] == 3
    assert out["difference"] == pytest.approx(0.1)

    def seed_means_only(y: np.ndarray, a1: np.ndarray, a2: np.ndarray, a3: np.ndarray, b1: np.ndarray) -> float:
        return float(np.mean([fast_accuracy(y, a) for a in (a1, a2, a3)]) - fast_accuracy(y, b1))

    patients_only = patient_bootstrap(seed_means_only, [y_true, *arm_a, b], patients, n_resamples=500)
    assert patients_only.point == pytest.approx(out["difference"])
    assert out["high"] - out["low"] > 1.5 * (patients_only.high - patients_only.low)


def test_one_seeded_arm_is_named_in_accounts_for() -> None:
    y_true, a = graded_pairs(np.arange(20) < 15)
    out = paired_difference(fast_accuracy, y_true, [a, a.copy()], [a.copy()], two_eyes(20), n_resamples=50)
    assert "except B's" in out["accounts_for"]


def test_paired_difference_is_reproducible_from_its_seed() -> None:
    rng = np.random.default_rng(9)
    y_true, a = graded_pairs(rng.random(40) < 0.8)
    _, b = graded_pairs(rng.random(40) < 0.7)
    run = lambda seed: paired_difference(fast_accuracy, y_true, [a], [b], two_eyes(40), n_resamples=200, seed=seed)
    assert run(0) == run(0)
    assert (run(0)["low"], run(0)["high"]) != (run(1)["low"], run(1)["high"])


def test_paired_difference_names_a_seed_with_the_wrong_length() -> None:
    y_true, a = graded_pairs(np.arange(10) < 5)
    with pytest.raises(ValueError, match="model B, seed 1"):
        paired_difference(fast_accuracy, y_true, [a], [a, a[:-2]], two_eyes(10))


def test_paired_seeds_keep_a_constant_per_network_gain_apart_from_seed_spread() -> None:
    # Three networks (seeds) of very different accuracy, each graded two ways; the second way gets 5 more
    # patients right on every network. Seeds drawn once for both arms: every replicate's difference stays
    # near +0.05. Drawn apart, the networks' spread (60-100%) swamps it.
    rng = np.random.default_rng(10)
    y_true, _ = graded_pairs(np.ones(100, dtype=bool))
    orders = [rng.permutation(100) for _ in range(3)]
    worse = [graded_pairs(order < k)[1] for order, k in zip(orders, (55, 75, 95))]
    better = [graded_pairs(order < k + 5)[1] for order, k in zip(orders, (55, 75, 95))]
    patients = two_eyes(100)
    paired = paired_difference(fast_accuracy, y_true, better, worse, patients, n_resamples=300, paired_seeds=True)
    apart = paired_difference(fast_accuracy, y_true, better, worse, patients, n_resamples=300)
    assert paired["difference"] == pytest.approx(apart["difference"]) == pytest.approx(0.05)
    assert paired["low"] > 0 and paired["verdict"].startswith("A better than B")
    assert apart["low"] < 0  # the unpaired draw cannot see it
    assert "seeds paired" in paired["accounts_for"]
    with pytest.raises(ValueError, match="paired seeds need as many outputs"):
        paired_difference(fast_accuracy, y_true, better, worse[:2], patients, paired_seeds=True)
