"""Intervals that count patients, not images, and training seeds, not runs: pure functions of per-image arrays.

Test images come in pairs (``10_left``, ``10_right``; :func:`retinopathy.data.patient_of` maps an image
to its patient). The two eyes of a patient are correlated, so resampling images independently would
treat them as two independent observations and give intervals that are too narrow. Every interval here
takes the patient as the unit: the bootstraps resample whole patients, both eyes together, and the
proportion interval counts the eyes through the design effect of their clustering in patients.

A metric is *undefined* on a resample when it returns NaN (e.g. :func:`retinopathy.metrics.roc_auc` on a
resample holding one class only). Such replicates are dropped and counted; the interval is taken from
the rest as long as at least half of the replicates are defined, and is NaN otherwise (an interval from
a minority of replicates would describe a biased subset of resamples). A metric that raises instead of
returning NaN is not caught: the error surfaces.

Three kinds of interval live here: :func:`patient_bootstrap` for any metric of one model;
:func:`paired_difference` for the difference between two models, which adds the spread between training
seeds to the patient bootstrap; and :func:`proportion_interval` for a sensitivity or specificity, an exact
binomial interval on the effective number of eyes, since a bootstrap of a proportion of 0 or 1 has width 0.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
from scipy import stats

# Below this fraction of defined replicates no interval is reported (see the module docstring).
MIN_DEFINED_FRACTION = 0.5

SEEDS_AND_PATIENTS = "test patients and training seeds"
PATIENTS_ONLY = "test patients only (one seed per model: training randomness not estimated)"

# How paired_difference builds its interval (its result's "method").
PATIENT_PERCENTILE = "percentile bootstrap over test patients"
SEED_T = "t interval: seed variance plus patient-bootstrap variance, Welch-Satterthwaite df"


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap confidence interval.

    ``dropped`` counts the replicates on which the metric was undefined (NaN) and which were left out.
    """

    point: float
    low: float
    high: float
    dropped: int = 0

    def to_dict(self, digits: int = 4) -> dict[str, float]:
        """``{"value", "low", "high"}`` rounded to ``digits``, ready for a metrics JSON."""
        return {"value": round(self.point, digits), "low": round(self.low, digits), "high": round(self.high, digits)}


@dataclass(frozen=True)
class IntervalSettings:
    """How a study's summary draws its intervals: the bootstrap's replicates and seed, and the confidence level."""

    bootstrap_resamples: int = 2000
    confidence: float = 0.95
    bootstrap_seed: int = 0

    def keywords(self) -> dict[str, Any]:
        """``n_resamples``, ``confidence`` and ``seed``, as :func:`patient_bootstrap` and :func:`paired_difference`
        take them."""
        return {"n_resamples": self.bootstrap_resamples, "confidence": self.confidence, "seed": self.bootstrap_seed}


class _PatientIndex:
    """The images of each patient, so that a resample of patients can be expanded to its images quickly."""

    def __init__(self, patients: Sequence[str] | np.ndarray, n_images: int) -> None:
        patients = np.asarray(patients)
        if patients.shape != (n_images,):
            raise ValueError(f"patients has shape {patients.shape}, expected one id per image ({n_images},)")
        _, codes, counts = np.unique(patients, return_inverse=True, return_counts=True)
        if len(counts) < 2:
            raise ValueError(f"need at least 2 patients to bootstrap, got {len(counts)}")
        # Images sorted by patient; patient p owns images[starts[p]: starts[p] + counts[p]].
        self.images = np.argsort(codes, kind="stable")
        self.counts = counts
        self.starts = np.concatenate([[0], np.cumsum(counts)[:-1]])

    @property
    def n_patients(self) -> int:
        return len(self.counts)

    def gather(self, picked: np.ndarray) -> np.ndarray:
        """Image indices of the patients in ``picked``, each patient as often as it was picked."""
        counts = self.counts[picked]
        # Offset of each gathered image within its patient's block: 0, 1, ..., counts-1 per patient.
        within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        return self.images[np.repeat(self.starts[picked], counts) + within]


def _check_arrays(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    arrays = [np.asarray(a) for a in arrays]
    if not arrays:
        raise ValueError("no arrays given: the metric needs at least one per-image array")
    lengths = {len(a) for a in arrays}
    if len(lengths) != 1:
        raise ValueError(f"per-image arrays differ in length: {[len(a) for a in arrays]}")
    return arrays


def _percentile_interval(replicates: np.ndarray, confidence: float) -> tuple[float, float, int]:
    """Percentile interval of the defined replicates; NaN when fewer than half are defined.

    Returns:
        ``(low, high, dropped)`` where ``dropped`` counts the NaN replicates.
    """
    defined = replicates[np.isfinite(replicates)]
    dropped = len(replicates) - len(defined)
    if len(defined) == 0 or len(defined) < MIN_DEFINED_FRACTION * len(replicates):
        return float("nan"), float("nan"), dropped
    alpha = (1 - confidence) / 2
    # Linear interpolation, the same quantile definition scipy.stats.bootstrap uses.
    low, high = np.quantile(defined, [alpha, 1 - alpha])
    return float(low), float(high), dropped


def patient_bootstrap(
    metric: Callable[..., float],
    arrays: Sequence[np.ndarray],
    patients: Sequence[str] | np.ndarray,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap interval of ``metric(*arrays)``, resampling whole patients.

    Args:
        metric: A function of the per-image arrays, e.g. ``accuracy(y_true, y_pred)`` or
            ``roc_auc(y_binary, score)``; returns NaN where it is undefined.
        arrays: Per-image arrays of equal length, passed to ``metric`` in this order.
        patients: The patient id of each image; images sharing an id are resampled together.
        n_resamples: Bootstrap replicates.
        confidence: Two-sided confidence level of the interval.
        seed: Seeds the resampling; the same seed gives the same interval.

    Returns:
        The metric on all images with its interval. When the point estimate itself is undefined, all
        three values are NaN; when fewer than half of the replicates are defined, ``low``/``high`` are
        NaN; ``dropped`` counts the undefined replicates.
    """
    arrays = _check_arrays(arrays)
    index = _PatientIndex(patients, len(arrays[0]))
    point = float(metric(*arrays))
    if not np.isfinite(point):
        return Interval(point, float("nan"), float("nan"), dropped=n_resamples)

    def statistic(picked: np.ndarray) -> float:
        images = index.gather(picked)
        return float(metric(*(a[images] for a in arrays)))

    with warnings.catch_warnings():
        # scipy warns when a replicate is NaN; those are dropped below, and counted in Interval.dropped.
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        # method="percentile": BCa's acceleration needs a jackknife over patients, which breaks as soon as
        # one leave-one-out value is NaN (AUC with the only positive patient left out), and its bias
        # correction is unstable for the discrete, bounded metrics used here (accuracy on ~100 patients).
        result = stats.bootstrap(
            (np.arange(index.n_patients),),
            statistic,
            n_resamples=n_resamples,
            confidence_level=confidence,
            method="percentile",
            vectorized=False,
            rng=np.random.default_rng(seed),
        )
    replicates = np.asarray(result.bootstrap_distribution, dtype=float)
    if np.all(np.isfinite(replicates)):
        return Interval(point, float(result.confidence_interval.low), float(result.confidence_interval.high))
    low, high, dropped = _percentile_interval(replicates, confidence)
    return Interval(point, low, high, dropped=dropped)


def verdict(
    low: float,
    high: float,
    *,
    first: str = "A",
    second: str = "B",
    higher_is_better: bool = True,
    confidence: float = 0.95,
) -> str:
    """Plain-language reading of an interval for ``first - second``.

    Returns one of (with the defaults):
    ``"no detectable difference (the 95% interval spans 0)"`` when ``low <= 0 <= high``;
    ``"A better than B (95% interval excludes 0)"`` / ``"A worse than B (95% interval excludes 0)"``
    otherwise, ``better`` meaning a higher metric when ``higher_is_better`` and a lower one when not;
    ``"undetermined (the interval is undefined)"`` when either end is NaN.
    """
    level = f"{100 * confidence:g}%"
    if not (np.isfinite(low) and np.isfinite(high)):
        return "undetermined (the interval is undefined)"
    if low <= 0 <= high:
        return f"no detectable difference (the {level} interval spans 0)"
    better = (low > 0) == higher_is_better
    return f"{first} {'better' if better else 'worse'} than {second} ({level} interval excludes 0)"


# ---------------------------------------------------------------------------------------------------------------
# Paired differences between two models, over test patients and training seeds.


def _checked_arms(
    y_true: np.ndarray, outputs_a: Sequence[np.ndarray], outputs_b: Sequence[np.ndarray], names: tuple[str, str],
    paired_seeds: bool,
) -> list[list[np.ndarray]]:
    """Both arms' per-seed outputs as arrays, each as long as ``y_true`` (ValueError naming the model and seed)."""
    arms = [[np.asarray(o) for o in outputs_a], [np.asarray(o) for o in outputs_b]]
    for name, arm in zip(names, arms):
        if not arm:
            raise ValueError(f"model {name} has no outputs: give one array per training seed")
        for i, output in enumerate(arm):
            if len(output) != len(y_true):
                raise ValueError(f"model {name}, seed {i}: {len(output)} outputs for {len(y_true)} images")
    if paired_seeds and len(arms[0]) != len(arms[1]):
        raise ValueError(
            f"paired seeds need as many outputs for {names[0]} ({len(arms[0])}) as for {names[1]} ({len(arms[1])})"
        )
    return arms


def _seed_scores(
    metric: Callable[..., float], y_true: np.ndarray, arm: list[np.ndarray], images: np.ndarray,
) -> np.ndarray:
    """``metric`` of each of an arm's seeds on the given images."""
    return np.array([metric(y_true[images], output[images]) for output in arm], dtype=float)


def _patient_replicates(
    metric: Callable[..., float], y_true: np.ndarray, arms: list[list[np.ndarray]], index: _PatientIndex, *,
    n_resamples: int, seed: int,
) -> np.ndarray:
    """The difference of the two arms' seed means on each patient resample; every seed is kept in every replicate.

    The same resample serves both arms, so the comparison is paired over patients. (For paired seeds the
    difference of the means is the mean of the per-network differences.)
    """
    rng = np.random.default_rng(seed)
    replicates = np.empty(n_resamples)
    for r in range(n_resamples):
        images = index.gather(rng.integers(0, index.n_patients, index.n_patients))
        means = [_seed_scores(metric, y_true, arm, images).mean() for arm in arms]
        replicates[r] = means[0] - means[1]
    return replicates


def welch_satterthwaite(components: Sequence[tuple[float, float]]) -> float:
    """Degrees of freedom of a sum of independent variance estimates, each given as ``(variance, its df)``.

    ``(sum v_i)^2 / sum(v_i^2 / df_i)`` (Satterthwaite 1946, "An approximate distribution of estimates of
    variance components", *Biometrics Bulletin* 2(6); Welch 1947, *Biometrika* 34). Components of zero
    variance carry no information on the sum's distribution and are left out; NaN when none is left.
    """
    used = [(v, df) for v, df in components if v > 0]
    if not used:
        return float("nan")
    return float(sum(v for v, _ in used) ** 2 / sum(v * v / df for v, df in used))


def _seed_components(scores_a: np.ndarray, scores_b: np.ndarray, paired_seeds: bool) -> list[tuple[float, float]]:
    """``(variance, df)`` of the training-seed part of the difference of seed means, from the per-seed metrics.

    Unpaired: ``s_a^2 / n_a`` and ``s_b^2 / n_b``, an arm with one seed contributing nothing (its spread is
    not estimable). Paired seeds: ``s_d^2 / n`` of the per-network differences ``d``.
    """
    if paired_seeds:
        differences = scores_a - scores_b
        n = len(differences)
        return [(float(differences.var(ddof=1)) / n, n - 1)] if n > 1 else []
    return [(float(s.var(ddof=1)) / len(s), len(s) - 1) for s in (scores_a, scores_b) if len(s) > 1]


def _t_interval(
    difference: float, components: list[tuple[float, float]], confidence: float,
) -> tuple[float, float, float]:
    """``difference -/+ t * sqrt(sum of variances)`` with Welch-Satterthwaite df: ``(low, high, df)``.

    NaN when a variance is undefined. With every variance zero the interval is the point and ``df`` is the
    largest of the components' (the t quantile does not matter then).
    """
    variance = float(sum(v for v, _ in components))
    if not (np.isfinite(variance) and np.isfinite(difference)):
        return float("nan"), float("nan"), float("nan")
    df = welch_satterthwaite(components)
    if not np.isfinite(df):
        df = float(max(d for _, d in components))
    half = float(stats.t.ppf((1 + confidence) / 2, df)) * np.sqrt(variance)
    return difference - half, difference + half, df


def _bootstrap_variance(replicates: np.ndarray) -> tuple[float, int]:
    """Variance of the defined replicates, NaN when fewer than half are defined: ``(variance, dropped)``."""
    defined = replicates[np.isfinite(replicates)]
    dropped = len(replicates) - len(defined)
    if len(defined) < 2 or len(defined) < MIN_DEFINED_FRACTION * len(replicates):
        return float("nan"), dropped
    return float(defined.var(ddof=1)), dropped


def _accounts_for(seeds_a: int, seeds_b: int, names: tuple[str, str], paired_seeds: bool) -> str:
    """Which sources of randomness an interval of :func:`paired_difference` covers, in words."""
    if seeds_a < 2 and seeds_b < 2:
        return PATIENTS_ONLY
    if paired_seeds:
        return f"{SEEDS_AND_PATIENTS}, the seeds paired (one network per seed, graded both ways)"
    if seeds_a >= 2 and seeds_b >= 2:
        return SEEDS_AND_PATIENTS
    single = names[0] if seeds_a < 2 else names[1]
    return f"test patients, and training seeds except {single}'s (one seed: its training randomness not estimated)"


def _difference_verdict(
    low: float, high: float, seeds: tuple[int, int], names: tuple[str, str], *,
    higher_is_better: bool, confidence: float,
) -> str:
    """:func:`verdict`, except where one arm has a single seed and the other several.

    Such an interval leaves out the single arm's training randomness, so it is too narrow by an unknown
    amount: an interval that spans 0 would span it wider too ("no detectable difference" stands), but one
    that excludes 0 proves nothing, and the verdict says so.
    """
    plain = verdict(low, high, first=names[0], second=names[1], higher_is_better=higher_is_better,
                    confidence=confidence)
    if min(seeds) >= 2 or max(seeds) < 2 or not (np.isfinite(low) and np.isfinite(high)):
        return plain
    single, level = names[seeds.index(min(seeds))], f"{100 * confidence:g}%"
    if low <= 0 <= high:
        return f"no detectable difference (the {level} interval spans 0 even without {single}'s training randomness)"
    return (f"undetermined ({single} has a single training seed, so its training randomness is not in the interval, "
            f"which excludes 0: train a second seed of {single} to decide)")


def _difference_interval(
    difference: float, replicates: np.ndarray, scores: tuple[np.ndarray, np.ndarray], n_patients: int, *,
    paired_seeds: bool, confidence: float,
) -> tuple[float, float, int, float | None, str]:
    """The interval of :func:`paired_difference`: ``(low, high, dropped, df, method)``, ``df`` None for
    :data:`PATIENT_PERCENTILE`.

    * One seed per model (:data:`PATIENT_PERCENTILE`): the percentile interval of the difference over patient
      resamples (both eyes together, the same patients for A and B, so the comparison is paired); NaN
      replicates are dropped as in :func:`patient_bootstrap`. Training randomness is not in it.
    * Otherwise (:data:`SEED_T`): ``difference -/+ t_{df} * sqrt(V_seeds + V_patients)``.
      ``V_seeds = s_a^2 / n_a + s_b^2 / n_b`` comes from the per-seed metrics on all test patients (for
      ``paired_seeds``, ``s_d^2 / n`` of the per-network differences); since every seed is scored on the
      same patients, that spread is training randomness, the test-set noise being common to all seeds.
      ``V_patients`` is the variance, over patient resamples that keep every seed, of the difference of the
      seed means: the test-set noise. The two are added as independent sources (Bouthillier et al. 2021,
      "Accounting for variance in machine learning benchmarks", MLSys, https://arxiv.org/abs/2103.03098),
      and ``df`` is Welch-Satterthwaite's (:func:`welch_satterthwaite`; ``n - 1`` per seed variance,
      patients minus 1 for the bootstrap one), so that two seeds per model, whose spread is a guess from
      one degree of freedom, give the wide interval they warrant (t quantile 12.7 at df 1). The part of the
      seed spread that comes from which patients each network gets wrong is in both terms, which errs on
      the wide side; with two seeds per model the Welch-Satterthwaite df still run a little high when the
      one-df seed variance comes out small by chance, so the coverage is near the nominal level, not above it.

    Resampling the seeds in the bootstrap instead is too narrow with few seeds: two seeds can only give
    {a1, mean, a2}, which understates the seed variance by ``(n - 1) / n`` and treats the spread of two values
    as known. tests/test_statistics.py simulates both under no true difference.
    """
    if max(len(s) for s in scores) < 2:
        low, high, dropped = _percentile_interval(replicates, confidence)
        return low, high, dropped, None, PATIENT_PERCENTILE
    patient_variance, dropped = _bootstrap_variance(replicates)
    components = [*_seed_components(*scores, paired_seeds), (patient_variance, n_patients - 1)]
    low, high, df = _t_interval(difference, components, confidence)
    return low, high, dropped, df, SEED_T


def paired_difference(
    metric: Callable[..., float], y_true: np.ndarray, outputs_a: Sequence[np.ndarray], outputs_b: Sequence[np.ndarray],
    patients: Sequence[str] | np.ndarray, *, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0,
    names: tuple[str, str] = ("A", "B"), higher_is_better: bool = True, paired_seeds: bool = False,
) -> dict[str, Any]:
    """Difference in ``metric`` between models A and B on the same test images, with an interval over test
    patients and, where there are two or more, training seeds.

    The difference is the mean over A's training seeds of ``metric(y_true, a)`` minus the mean over B's of
    ``metric(y_true, b)``. With one seed per model its interval is the percentile interval over paired patient
    resamples (``method`` :data:`PATIENT_PERCENTILE`: training randomness is not in it); otherwise it is
    ``difference -/+ t_{df} * sqrt(V_seeds + V_patients)``, the variance between training seeds added to the
    patient-bootstrap one, with Welch-Satterthwaite ``df`` (``method`` :data:`SEED_T`; :func:`_difference_interval`).

    Args:
        metric: ``metric(y_true, output) -> float`` (e.g. accuracy on grades, roc_auc on scores).
        y_true: Per-image labels.
        outputs_a: One per-image array per training seed of A, aligned with ``y_true``.
        outputs_b: Likewise for B.
        patients: The patient id of each image.
        n_resamples: Patient resamples.
        confidence: Two-sided confidence level.
        seed: Seeds the resampling.
        names: How A and B are called in the verdict.
        higher_is_better: Whether a higher metric is better (for the verdict).
        paired_seeds: A's and B's i-th outputs come from the same trained network (e.g. graded two ways), so
            the seed spread is that of the per-network differences; the arms need as many seeds.

    Returns:
        ``difference``, ``low``, ``high``, ``seeds_a``, ``seeds_b``, ``resamples`` (patient resamples drawn),
        ``undefined_resamples`` (dropped as NaN), ``accounts_for`` (which sources of randomness the interval
        covers), ``method``, ``df`` (with :data:`SEED_T` only) and ``verdict`` (see :func:`verdict`; where
        one model has a single seed and the other several, a difference that excludes 0 is "undetermined").
    """
    y_true = np.asarray(y_true)
    arms = _checked_arms(y_true, outputs_a, outputs_b, names, paired_seeds)
    index = _PatientIndex(patients, len(y_true))
    # The difference of the seed means, every seed scored on all test patients.
    everything = np.arange(len(y_true))
    scores_a, scores_b = (_seed_scores(metric, y_true, arm, everything) for arm in arms)
    difference = float(scores_a.mean() - scores_b.mean())
    # Its spread over test patients. scipy.stats.bootstrap takes one statistic of one sample; here every replicate
    # scores every seed of both arms on the same patients, so it is a plain loop driven by one seeded generator.
    replicates = _patient_replicates(metric, y_true, arms, index, n_resamples=n_resamples, seed=seed)
    # The interval, from the patient resamples alone or with the spread between training seeds added.
    seeds = (len(arms[0]), len(arms[1]))
    low, high, dropped, df, method = _difference_interval(difference, replicates, (scores_a, scores_b),
                                                          index.n_patients, paired_seeds=paired_seeds,
                                                          confidence=confidence)
    # The record, with what the interval covers and its reading in words.
    result: dict[str, Any] = {
        "difference": difference, "low": low, "high": high, "seeds_a": seeds[0], "seeds_b": seeds[1],
        "resamples": n_resamples, "undefined_resamples": dropped,
        "accounts_for": _accounts_for(*seeds, names, paired_seeds), "method": method,
    }
    if df is not None:
        result["df"] = round(df, 2) if np.isfinite(df) else df
    result["verdict"] = _difference_verdict(low, high, seeds, names, higher_is_better=higher_is_better,
                                            confidence=confidence)
    return result


# ---------------------------------------------------------------------------------------------------------------
# Proportions (sensitivity, specificity): an exact binomial interval on the effective number of eyes.


@dataclass(frozen=True)
class ProportionInterval:
    """A proportion of images with its interval, and the counts behind it.

    ``effective_n`` is the number of independent observations the images are worth once the clustering of
    images within patients is accounted for (between ``patients`` and ``images``; see
    :func:`proportion_interval`).
    """

    point: float
    low: float
    high: float
    images: int
    patients: int
    effective_n: float
    method: str

    def to_dict(self, digits: int = 4) -> dict[str, Any]:
        """``{"value", "low", "high"}`` rounded to ``digits``, with the counts and the method, for a metrics JSON."""
        return {
            "value": round(self.point, digits), "low": round(self.low, digits), "high": round(self.high, digits),
            "images": self.images, "patients": self.patients, "effective_n": round(self.effective_n, 1),
            "method": self.method,
        }


PROPORTION_METHODS = {
    "exact": "Clopper-Pearson on the effective number of images (Korn-Graubard)",
    "wilson": "Wilson score on the effective number of images",
}


def design_effect(outcomes: np.ndarray, patients: Sequence[str] | np.ndarray) -> tuple[float, bool]:
    """Kish's design effect of a proportion of images clustered in patients, and whether it was estimated.

    The variance of the proportion ``p`` with patients as the sampling unit is the linearisation (ratio
    estimator) variance ``k / (k - 1) * sum_c (y_c - p m_c)^2 / n^2`` for ``k`` patients, patient ``c``
    holding ``m_c`` of the ``n`` images and ``y_c`` of the successes (Cochran 1977, *Sampling Techniques*,
    sec. 6.2); divided by the binomial variance ``p (1 - p) / n`` it is the design effect (Kish 1965). It is
    kept between 1 (independent images, as Korn & Graubard 1998 truncate it) and ``sum_c m_c^2 / n``, its
    value when a patient's eyes always agree (intra-patient correlation 1). At ``p`` = 0 or 1, or with one
    patient, the data carry no estimate and the upper bound is returned: every eye agreeing with its partner
    is what perfect correlation predicts, and it is the choice that cannot make the interval too narrow.

    Returns:
        ``(design_effect, estimated)``: ``estimated`` is False where the bound was used instead of an estimate.
    """
    _, codes = np.unique(np.asarray(patients), return_inverse=True)
    sizes = np.bincount(codes).astype(float)
    successes = np.bincount(codes, weights=outcomes.astype(float))
    n, k = float(sizes.sum()), len(sizes)
    worst = float(np.sum(sizes**2) / n)
    p = float(successes.sum() / n)
    if worst == 1.0:  # one image per patient: no clustering
        return 1.0, False
    if p in (0.0, 1.0) or k < 2:
        return worst, False
    variance = k / (k - 1) * float(np.sum((successes - p * sizes) ** 2)) / n**2
    return float(np.clip(variance / (p * (1 - p) / n), 1.0, worst)), True


def _binomial_bounds(p: float, n: float, confidence: float, method: str) -> tuple[float, float]:
    """Two-sided ``confidence`` interval of a proportion ``p`` observed on ``n`` trials (``n`` need not be whole)."""
    alpha = 1 - confidence
    if method == "wilson":
        z = float(stats.norm.ppf(1 - alpha / 2))
        centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
        half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / (1 + z**2 / n)
        # At p = 0 or 1 an end is exactly 0 or 1; rounding would leave it a hair inside.
        return (0.0 if p == 0 else centre - half), (1.0 if p == 1 else centre + half)
    # Clopper & Pearson (1934) through the beta quantiles, which accept the non-whole counts of an effective
    # sample size; for whole counts this is scipy.stats.binomtest(...).proportion_ci(method="exact").
    x = p * n
    low = float(stats.beta.ppf(alpha / 2, x, n - x + 1)) if x > 0 else 0.0
    high = float(stats.beta.ppf(1 - alpha / 2, x + 1, n - x)) if x < n else 1.0
    return low, high


def proportion_interval(
    outcomes: Sequence[bool] | np.ndarray,
    patients: Sequence[str] | np.ndarray,
    *,
    confidence: float = 0.95,
    method: str = "exact",
) -> ProportionInterval:
    """The share of images with outcome 1 (e.g. positive eyes called positive: sensitivity), with an interval
    that accounts for the two eyes of a patient and never collapses to a point at 0 or 1.

    A patient bootstrap of a proportion of 1 (every positive eye caught) gives ``1.0 (1.0-1.0)``: no resample
    can hold a miss. Instead this is the Korn & Graubard (1998) interval ("Confidence intervals for
    proportions with small expected number of positive counts estimated from survey data", *Survey
    Methodology* 24(2)): a binomial interval on the effective sample size ``n_eff = n / deff``, with ``deff``
    from :func:`design_effect`, and, where ``deff`` was estimated from the data, ``n_eff`` shrunk by
    ``(z / t_{k-1})^2`` for ``k`` patients so that a design effect estimated from few patients widens the
    interval. With one image per patient it is the plain binomial interval of scipy's ``binomtest``.

    Args:
        outcomes: One 0/1 (or bool) value per image.
        patients: The patient of each image.
        confidence: Two-sided confidence level.
        method: ``"exact"`` (Clopper-Pearson: at least the nominal coverage) or ``"wilson"`` (Wilson score:
            about the nominal coverage on average, narrower).

    Returns:
        The proportion and its interval, the image and patient counts and ``n_eff``; all NaN (and counts 0)
        for no images.

    Raises:
        ValueError: naming the culprit: an outcome other than 0/1, patients of another length, an unknown method.
    """
    if method not in PROPORTION_METHODS:
        raise ValueError(f"proportion interval method {method!r}; choose one of {sorted(PROPORTION_METHODS)}")
    outcomes = np.asarray(outcomes)
    patients = np.asarray(patients)
    if patients.shape != outcomes.shape or outcomes.ndim != 1:
        raise ValueError(f"patients has shape {patients.shape}, expected one id per outcome {outcomes.shape}")
    odd = sorted(set(np.unique(outcomes).tolist()) - {0, 1})
    if odd:
        raise ValueError(f"outcomes must be 0/1, got {odd[:10]}")
    nan = float("nan")
    if outcomes.size == 0:
        return ProportionInterval(nan, nan, nan, 0, 0, 0.0, PROPORTION_METHODS[method])
    n_patients = len(np.unique(patients))
    deff, estimated = design_effect(outcomes, patients)
    n_eff = outcomes.size / deff
    if estimated and n_patients > 1:
        n_eff *= (stats.norm.ppf((1 + confidence) / 2) / stats.t.ppf((1 + confidence) / 2, n_patients - 1)) ** 2
    point = float(outcomes.mean())
    low, high = _binomial_bounds(point, n_eff, confidence, method)
    return ProportionInterval(point, low, high, int(outcomes.size), n_patients, float(n_eff),
                              PROPORTION_METHODS[method])


# ---------------------------------------------------------------------------------------------------------------
# One model on two sets of patients: the in-domain test set minus an external site.


def site_difference(
    metric: Callable[..., float], first: tuple[np.ndarray, Sequence[np.ndarray], np.ndarray],
    second: tuple[np.ndarray, Sequence[np.ndarray], np.ndarray], *, n_resamples: int = 1000,
    confidence: float = 0.95, seed: int = 0, names: tuple[str, str] = ("in-domain", "external"),
) -> dict[str, Any]:
    """Difference in ``metric`` between two independent sets of patients scored by the same networks, with an
    interval over both sets' patients and, where there are two or more, the networks' training seeds.

    ``first`` and ``second`` are each ``(y_true, outputs, patients)``, ``outputs`` one array per training seed, the
    i-th of both sets from the same network. The difference is the mean over seeds of ``metric`` on ``first`` minus
    that on ``second``. Each replicate resamples the patients of both sets independently (they are different
    people) and keeps every seed. One seed: the percentile interval of the replicates. Several: the seeds are
    paired (one network scored on both sets), so :func:`_difference_interval`'s t interval adds the variance of
    the per-network differences to the bootstrap variance; its df for the bootstrap part counts the smaller set's
    patients.

    Returns:
        ``difference``, ``first``, ``second`` (the two seed means), ``low``, ``high``, ``seeds``, ``resamples``,
        ``undefined_resamples``, ``accounts_for``, ``method``, ``df`` (several seeds only) and ``verdict``.

    Raises:
        ValueError: the two sets have different numbers of seeds, or an output's length is not its set's.
    """
    sets = [(np.asarray(y), [np.asarray(o) for o in outputs], _PatientIndex(patients, len(y)))
            for y, outputs, patients in (first, second)]
    if len(sets[0][1]) != len(sets[1][1]) or not sets[0][1]:
        raise ValueError(f"both sets need the same networks: {len(sets[0][1])} and {len(sets[1][1])} outputs")
    for name, (y, outputs, _) in zip(names, sets):
        if any(len(o) != len(y) for o in outputs):
            raise ValueError(f"{name}: outputs of lengths {[len(o) for o in outputs]} for {len(y)} images")
    scores = [_seed_scores(metric, y, outputs, np.arange(len(y))) for y, outputs, _ in sets]
    rngs = np.random.default_rng(seed).spawn(2)
    replicates = np.empty(n_resamples)
    for r in range(n_resamples):
        means = [_seed_scores(metric, y, outputs, index.gather(rng.integers(0, index.n_patients, index.n_patients)))
                 .mean() for (y, outputs, index), rng in zip(sets, rngs)]
        replicates[r] = means[0] - means[1]
    difference = float(scores[0].mean() - scores[1].mean())
    n_patients = min(index.n_patients for _, _, index in sets)
    low, high, dropped, df, method = _difference_interval(difference, replicates, (scores[0], scores[1]), n_patients,
                                                          paired_seeds=True, confidence=confidence)
    n_seeds = len(scores[0])
    result: dict[str, Any] = {
        "difference": difference, "first": float(scores[0].mean()), "second": float(scores[1].mean()),
        "low": low, "high": high, "seeds": n_seeds, "resamples": n_resamples, "undefined_resamples": dropped,
        "accounts_for": (f"the patients of both sets{' and the training seeds' if n_seeds > 1 else ''}"
                         f"{'' if n_seeds > 1 else ' (one seed: training randomness not estimated)'}"),
        "method": method,
    }
    if df is not None:
        result["df"] = round(df, 2) if np.isfinite(df) else df
    result["verdict"] = verdict(low, high, first=names[0], second=names[1], confidence=confidence)
    return result
