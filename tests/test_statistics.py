"""Patient-level bootstrap intervals and paired model comparisons, on small generated data."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from scipy import stats

from retinopathy.metrics import roc_auc
from retinopathy.statistics import (
    PATIENT_PERCENTILE,
    PATIENTS_ONLY,
    SEED_T,
    SEEDS_AND_PATIENTS,
    Interval,
    IntervalSettings,
    design_effect,
    paired_difference,
    patient_bootstrap,
    proportion_interval,
    verdict,
    welch_satterthwaite,
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


def test_interval_settings_give_both_bootstraps_their_resamples_confidence_and_seed() -> None:
    settings = IntervalSettings(bootstrap_resamples=60, confidence=0.9, bootstrap_seed=3)
    y_true, y_pred = graded_pairs(np.arange(30) % 3 > 0)
    patients = two_eyes(30)
    explicit = patient_bootstrap(fast_accuracy, [y_true, y_pred], patients, n_resamples=60, confidence=0.9, seed=3)
    assert patient_bootstrap(fast_accuracy, [y_true, y_pred], patients, **settings.keywords()) == explicit
    diff = paired_difference(fast_accuracy, y_true, [y_pred], [y_true], patients, **settings.keywords())
    assert diff["resamples"] == 60 and "90% interval" in diff["verdict"]


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
    assert out["method"] == PATIENT_PERCENTILE and "df" not in out


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


def test_seed_spread_widens_the_interval() -> None:
    rng = np.random.default_rng(8)
    y_true, _ = graded_pairs(np.ones(100, dtype=bool))
    # A's three seeds differ a lot (60%, 80%, 100% of patients right); B has three near-identical seeds.
    arm_a = [graded_pairs(rng.permutation(100) < k)[1] for k in (60, 80, 100)]
    b = graded_pairs(rng.permutation(100) < 70)[1]
    arm_b = [b, b.copy(), b.copy()]
    patients = two_eyes(100)
    out = paired_difference(fast_accuracy, y_true, arm_a, arm_b, patients, n_resamples=500)
    assert out["accounts_for"] == SEEDS_AND_PATIENTS and out["seeds_a"] == 3
    assert out["method"] == SEED_T and 1 < out["df"] < 4  # A's spread dominates: about its n - 1 = 2
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

    def run(seed: int) -> dict:
        return paired_difference(fast_accuracy, y_true, [a], [b], two_eyes(40), n_resamples=200, seed=seed)

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


# --- Seed-level intervals: Welch's t where patients add nothing, and coverage under no true difference ---


def seed_score(y_true: np.ndarray, output: np.ndarray) -> float:
    """A metric that reads one number per seed off its output: every patient resample scores it the same."""
    return float(output.mean())


def constant_outputs(scores: list[float], n_images: int = 20) -> list[np.ndarray]:
    return [np.full(n_images, score) for score in scores]


def test_seed_interval_is_welchs_t_interval_when_patients_add_no_variance() -> None:
    a, b = [0.80, 0.83, 0.78], [0.75, 0.74, 0.79, 0.72]
    out = paired_difference(seed_score, np.zeros(20), constant_outputs(a), constant_outputs(b), two_eyes(10),
                            n_resamples=50)
    welch = stats.ttest_ind(a, b, equal_var=False)
    reference = welch.confidence_interval(0.95)
    assert out["method"] == SEED_T and out["accounts_for"] == SEEDS_AND_PATIENTS
    assert out["difference"] == pytest.approx(np.mean(a) - np.mean(b))
    assert (out["low"], out["high"]) == pytest.approx((reference.low, reference.high))
    assert out["df"] == pytest.approx(welch.df, abs=0.01)


def test_paired_seed_interval_is_the_paired_t_interval_when_patients_add_no_variance() -> None:
    a, b = [0.80, 0.86, 0.78, 0.90], [0.77, 0.84, 0.74, 0.86]
    out = paired_difference(seed_score, np.zeros(20), constant_outputs(a), constant_outputs(b), two_eyes(10),
                            n_resamples=50, paired_seeds=True)
    reference = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert (out["low"], out["high"]) == pytest.approx((reference.low, reference.high))
    assert out["df"] == 3 and out["low"] > 0  # a steady gain of 0.03 per network, whatever the network's level


def test_welch_satterthwaite_degrees_of_freedom() -> None:
    # Two equal variances with 1 df each: (2v)^2 / (2 v^2) = 2. One dominant component: nearly its own df.
    assert welch_satterthwaite([(1.0, 1), (1.0, 1)]) == pytest.approx(2.0)
    assert welch_satterthwaite([(1.0, 1), (1e-6, 299)]) == pytest.approx(1.0, abs=1e-4)
    assert welch_satterthwaite([(0.0, 1), (2.0, 149)]) == pytest.approx(149)
    assert np.isnan(welch_satterthwaite([(0.0, 1)]))


@pytest.mark.parametrize(
    ("single", "expected"),
    [
        (0.50, "undetermined (B has a single training seed, so its training randomness is not in the interval"),
        (0.84, "no detectable difference (the 95% interval spans 0 even without B's training randomness)"),
    ],
)
def test_one_seed_against_several_decides_only_what_a_wider_interval_would_not_change(
    single: float, expected: str,
) -> None:
    a = constant_outputs([0.80, 0.85, 0.90])
    out = paired_difference(seed_score, np.zeros(20), a, constant_outputs([single]), two_eyes(10), n_resamples=50)
    assert out["verdict"].startswith(expected)
    assert "except B's" in out["accounts_for"] and out["df"] == pytest.approx(2)


# A null of exchangeable arms: every network of both arms comes from the same recipe. Each test eye has a
# latent severity (the two eyes of a patient correlated, grades cut to about 74/9/15/1/1 % like the test set)
# and a hardness that every network misreads alike (the errors real networks share). A network's quality is a
# seed-level weight on that hardness and a seed-level bias, with a little eye-level noise of its own: its test
# QWK is about 0.84 with a seed-to-seed sd of about 0.025, as the project's seeds show, and the seeds' spread
# outweighs the patient noise of the paired difference (sd about 0.01 with 2 seeds per arm).
GRADE_CUTS = np.array([0.65, 0.95, 1.9, 2.3])


def fast_kappa(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Quadratic weighted kappa in closed form: ``1 - sum (y - p)^2 / (sum y^2 + sum p^2 - 2 sum y sum p / n)``.

    The same value as retinopathy.metrics.quadratic_weighted_kappa (the expected disagreement is the
    outer product of the marginals), a few times faster: the simulation below calls it a million times.
    """
    y, p = y_true.astype(float), y_pred.astype(float)
    expected = y @ y + p @ p - 2 * y.sum() * p.sum() / len(y)
    return float(1 - (y - p) @ (y - p) / expected) if expected else 0.0


def simulated_test_set(rng: np.random.Generator, n_patients: int = 150) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(severity, hardness, patients)`` of ``n_patients`` patients with two eyes each."""
    severity = np.repeat(rng.normal(size=n_patients), 2) * np.sqrt(0.7) + rng.normal(size=2 * n_patients) * np.sqrt(0.3)
    hardness = np.repeat(rng.normal(size=n_patients), 2) * np.sqrt(0.5) + rng.normal(size=2 * n_patients) * np.sqrt(0.5)
    return severity, hardness, two_eyes(n_patients)


def simulated_network(rng: np.random.Generator, severity: np.ndarray, hardness: np.ndarray, *,
                      weight: float = 0.35) -> np.ndarray:
    """One trained network's grades: a larger hardness ``weight`` is a worse recipe."""
    latent = severity + weight * np.exp(0.12 * rng.normal()) * hardness + 0.05 * rng.normal(size=len(severity))
    return np.digitize(latent + 0.05 * rng.normal(), GRADE_CUTS)


def simulated_verdicts(n_seeds: int, draws: int, *, weight_b: float = 0.35, resamples: int = 100,
                       seed: int = 0) -> list[tuple[float, float]]:
    """``(low, high)`` of paired_difference (QWK, A minus B) on ``draws`` fresh test sets and networks."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(draws):
        severity, hardness, patients = simulated_test_set(rng)
        grades = np.digitize(severity, GRADE_CUTS)
        a = [simulated_network(rng, severity, hardness) for _ in range(n_seeds)]
        b = [simulated_network(rng, severity, hardness, weight=weight_b) for _ in range(n_seeds)]
        result = paired_difference(fast_kappa, grades, a, b, patients, n_resamples=resamples,
                                   seed=int(rng.integers(2**31)))
        out.append((result["low"], result["high"]))
    return out


def test_fast_kappa_is_the_metrics_module_kappa() -> None:
    from retinopathy.metrics import quadratic_weighted_kappa

    rng = np.random.default_rng(11)
    severity, hardness, _ = simulated_test_set(rng, 40)
    grades, predicted = np.digitize(severity, GRADE_CUTS), simulated_network(rng, severity, hardness)
    assert fast_kappa(grades, predicted) == pytest.approx(quadratic_weighted_kappa(grades, predicted))


@pytest.mark.parametrize("n_seeds", [2, 3, 5])
def test_interval_excludes_zero_in_at_most_about_5_percent_of_exchangeable_arms(n_seeds: int) -> None:
    # With these draws, the former interval (a percentile bootstrap that resampled patients and each arm's seeds
    # with replacement) excluded 0 in 18.5%, 11% and 9.5% of the nulls with 2, 3 and 5 seeds per arm; this one
    # in 5.5%, 3% and 2%. With 200 draws a true rate of 5% exceeds 7% by chance about once in ten; a rate of 10%
    # stays under it about once in twelve. (With two seeds Welch-Satterthwaite runs near 5%, not under it: its
    # df grow when the one-df seed variance happens to come out small.)
    intervals = simulated_verdicts(n_seeds, draws=200, seed=n_seeds)
    excluded = np.mean([not low <= 0 <= high for low, high in intervals])
    assert excluded <= 0.07


def test_a_real_difference_of_a_tenth_of_qwk_is_detected_with_five_seeds() -> None:
    # B's recipe leans harder on the shared errors: QWK about 0.74 against A's 0.84. (With two seeds per arm
    # the same gap is detected about three times in five: their intervals are wide, as they should be.)
    intervals = simulated_verdicts(5, draws=20, weight_b=0.55, seed=12)
    assert np.mean([low > 0 for low, _ in intervals]) >= 0.8


# --- Proportions: exact intervals on the effective number of eyes ---


@pytest.mark.parametrize("method", ["exact", "wilson"])
@pytest.mark.parametrize(("successes", "trials"), [(0, 10), (7, 20), (95, 100), (13, 13), (242, 242)])
def test_proportion_interval_is_scipys_binomial_interval_for_one_image_per_patient(
    successes: int, trials: int, method: str,
) -> None:
    outcomes = np.arange(trials) < successes
    out = proportion_interval(outcomes, np.arange(trials).astype(str), method=method)
    reference = stats.binomtest(successes, trials).proportion_ci(0.95, method=method)
    assert out.point == pytest.approx(successes / trials)
    assert (out.low, out.high) == pytest.approx((reference.low, reference.high), abs=1e-9)
    assert out.images == out.patients == trials and out.effective_n == trials


@pytest.mark.parametrize("method", ["exact", "wilson"])
def test_proportion_interval_never_collapses_at_zero_or_one(method: str) -> None:
    patients = two_eyes(121)
    caught = proportion_interval(np.ones(242, dtype=bool), patients, method=method)
    missed = proportion_interval(np.zeros(242, dtype=bool), patients, method=method)
    assert caught.point == 1.0 and caught.high == 1.0 and 0.9 < caught.low < 1.0
    assert missed.point == 0.0 and missed.low == 0.0 and 0.0 < missed.high < 0.1
    # Both eyes of every patient agree, so the 242 eyes are worth 121 patients: the interval of 121 trials.
    assert caught.effective_n == pytest.approx(121)
    assert caught.low == pytest.approx(stats.binomtest(121, 121).proportion_ci(method=method).low)


def test_design_effect_follows_how_much_the_eyes_of_a_patient_agree() -> None:
    patients = two_eyes(20)
    concordant = np.repeat(np.arange(20) < 10, 2)  # both eyes alike: every pair counts once
    discordant = np.tile([True, False], 20)  # one eye of each: the pairs vary less than independent eyes would
    assert design_effect(concordant, patients) == (pytest.approx(2.0), True)
    assert design_effect(discordant, patients) == (1.0, True)
    assert design_effect(np.ones(40), patients) == (2.0, False)  # no estimate at 1: the bound


def test_proportion_interval_covers_its_level_with_correlated_eyes_where_counting_eyes_does_not() -> None:
    # 100 patients whose two eyes mostly agree (a patient-level part with 90% of the variance): a true
    # specificity of 0.95. Taking the 200 eyes as independent trials covers about 89% of the time.
    rng = np.random.default_rng(13)
    patients, eyes, draws = two_eyes(100), np.arange(200).astype(str), 400
    covered = {"patients": 0, "eyes": 0}
    for _ in range(draws):
        latent = np.repeat(rng.normal(size=100), 2) * np.sqrt(0.9) + rng.normal(size=200) * np.sqrt(0.1)
        outcomes = latent < stats.norm.ppf(0.95)
        for name, ids in (("patients", patients), ("eyes", eyes)):
            out = proportion_interval(outcomes, ids)
            covered[name] += out.low <= 0.95 <= out.high
    assert covered["patients"] / draws >= 0.94
    assert covered["eyes"] / draws < 0.92


def test_proportion_interval_names_a_bad_outcome_and_a_bad_method() -> None:
    with pytest.raises(ValueError, match=r"outcomes must be 0/1, got \[2\]"):
        proportion_interval(np.array([0, 1, 2]), two_eyes(2)[:3])
    with pytest.raises(ValueError, match="'bayes'"):
        proportion_interval(np.array([0, 1]), two_eyes(1), method="bayes")
    assert np.isnan(proportion_interval(np.array([], dtype=bool), np.array([], dtype=str)).low)


def test_screening_sensitivity_of_one_keeps_a_lower_bound_below_one() -> None:
    from retinopathy.evaluation import screening
    from retinopathy.settings import EvalSettings

    rng = np.random.default_rng(14)
    val_labels, test_labels = rng.choice(5, size=80), rng.choice(5, size=60)
    # Probabilities that put all mass on the true grade: every test eye is called right at either threshold.
    val_probs, test_probs = np.eye(5)[val_labels], np.eye(5)[test_labels]
    out = screening(val_labels, val_probs, test_labels, test_probs, two_eyes(30), EvalSettings(bootstrap_resamples=50))
    point = out["operating_points"]["high_sensitivity"]
    positives = int(np.sum(test_labels >= 2))
    assert point["test_sensitivity"]["value"] == point["test_specificity"]["value"] == 1.0
    assert point["test_sensitivity"]["images"] == positives and point["test_sensitivity"]["high"] == 1.0
    # No tighter than one trial per patient with a positive eye (Clopper-Pearson's lower end at x = n is
    # 0.025 ** (1 / n)), no looser than one trial per two positive eyes.
    low = point["test_sensitivity"]["low"]
    assert 0.025 ** (2 / positives) <= low <= 0.025 ** (1 / point["test_sensitivity"]["patients"]) < 1.0


# --- One model on two sets of patients: in-domain minus external ---


def test_site_difference_with_several_seeds_is_the_paired_t_interval_when_patients_add_no_variance() -> None:
    from retinopathy.statistics import site_difference

    here, there = [0.80, 0.86, 0.78, 0.90], [0.70, 0.77, 0.69, 0.80]
    out = site_difference(seed_score, (np.zeros(20), constant_outputs(here), two_eyes(10)),
                          (np.zeros(16), constant_outputs(there, 16), two_eyes(8)), n_resamples=50)
    reference = stats.ttest_rel(here, there).confidence_interval(0.95)
    assert out["difference"] == pytest.approx(np.mean(here) - np.mean(there))
    assert (out["low"], out["high"]) == pytest.approx((reference.low, reference.high)) and out["df"] == 3
    assert out["verdict"].startswith("in-domain better than external")


def test_site_difference_with_one_seed_covers_a_true_difference_of_zero() -> None:
    """Two independent sets whose patients are correct with the same probability (both eyes alike): the 95%
    interval of the accuracy difference should cover 0 in about 95% of simulated studies."""
    from retinopathy.metrics import accuracy
    from retinopathy.statistics import site_difference

    rng = np.random.default_rng(3)
    covered = []
    for _ in range(150):
        sets = []
        for n in (60, 40):  # patients, two eyes each
            patient_good = rng.random(n) < 0.8
            correct = np.where(rng.random(2 * n) < 0.7, np.repeat(patient_good, 2), rng.random(2 * n) < 0.8)
            sets.append((np.zeros(2 * n, int), [np.where(correct, 0, 1)], two_eyes(n)))
        out = site_difference(accuracy, *sets, n_resamples=150, seed=int(rng.integers(1 << 30)))
        covered.append(out["low"] <= 0 <= out["high"])
    assert 0.88 <= np.mean(covered) <= 0.995


def test_site_difference_refuses_sets_scored_by_other_networks() -> None:
    from retinopathy.statistics import site_difference

    with pytest.raises(ValueError, match="same networks"):
        site_difference(seed_score, (np.zeros(4), constant_outputs([0.1, 0.2], 4), two_eyes(2)),
                        (np.zeros(4), constant_outputs([0.1], 4), two_eyes(2)))
