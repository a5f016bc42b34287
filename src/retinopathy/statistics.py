"""Bootstrap intervals that resample patients, not images: pure functions of per-image arrays.

Test images come in pairs (``10_left``, ``10_right``; :func:`retinopathy.data.patient_of` maps an image
to its patient). The two eyes of a patient are correlated, so resampling images independently would
treat them as two independent observations and give intervals that are too narrow. Every interval here
resamples whole patients, both eyes together.

A metric is *undefined* on a resample when it returns NaN (e.g. :func:`retinopathy.metrics.roc_auc` on a
resample holding one class only). Such replicates are dropped and counted; the interval is taken from
the rest as long as at least half of the replicates are defined, and is NaN otherwise (an interval from
a minority of replicates would describe a biased subset of resamples). A metric that raises instead of
returning NaN is not caught: the error surfaces.
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


def _seed_weights(rng: np.random.Generator, n_seeds: int) -> np.ndarray:
    """How often each training seed is drawn when resampling seeds with replacement (1 seed: drawn once)."""
    if n_seeds < 2:
        return np.ones(n_seeds)
    return np.bincount(rng.integers(0, n_seeds, n_seeds), minlength=n_seeds).astype(float)


def paired_difference(
    metric: Callable[..., float],
    y_true: np.ndarray,
    outputs_a: Sequence[np.ndarray],
    outputs_b: Sequence[np.ndarray],
    patients: Sequence[str] | np.ndarray,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    names: tuple[str, str] = ("A", "B"),
    higher_is_better: bool = True,
    paired_seeds: bool = False,
) -> dict[str, Any]:
    """Difference in ``metric`` between models A and B on the same test images, with a two-level interval.

    The difference is the mean over A's training seeds of ``metric(y_true, a)`` minus the mean over B's
    of ``metric(y_true, b)``. Each replicate resamples patients with replacement (both eyes together, the
    same patients for A and B, so the comparison is paired) and, for an arm with two or more seeds, that
    arm's seeds with replacement; the interval is the percentile interval of the replicates, with NaN
    replicates dropped as in :func:`patient_bootstrap`.

    Args:
        metric: ``metric(y_true, output) -> float`` (e.g. accuracy on grades, roc_auc on scores).
        y_true: Per-image labels.
        outputs_a: One per-image array per training seed of A, aligned with ``y_true``.
        outputs_b: Likewise for B.
        patients: The patient id of each image.
        n_resamples: Bootstrap replicates.
        confidence: Two-sided confidence level.
        seed: Seeds the resampling.
        names: How A and B are called in the verdict.
        higher_is_better: Whether a higher metric is better (for the verdict).
        paired_seeds: A's and B's i-th outputs come from the same trained network (e.g. graded two ways),
            so each replicate draws one list of seeds for both arms; the arms need as many seeds.

    Returns:
        ``difference``, ``low``, ``high``, ``seeds_a``, ``seeds_b``, ``resamples`` (replicates drawn),
        ``undefined_resamples`` (dropped as NaN), ``accounts_for`` (which sources of randomness the
        interval covers) and ``verdict`` (see :func:`verdict`).
    """
    y_true = np.asarray(y_true)
    arms = [[np.asarray(o) for o in outputs_a], [np.asarray(o) for o in outputs_b]]
    for name, arm in zip(names, arms):
        if not arm:
            raise ValueError(f"model {name} has no outputs: give one array per training seed")
        for i, output in enumerate(arm):
            if len(output) != len(y_true):
                raise ValueError(f"model {name}, seed {i}: {len(output)} outputs for {len(y_true)} images")
    if paired_seeds and len(arms[0]) != len(arms[1]):
        raise ValueError(f"paired seeds need as many outputs for {names[0]} ({len(arms[0])}) as for {names[1]} ({len(arms[1])})")
    index = _PatientIndex(patients, len(y_true))

    def arm_scores(arm: list[np.ndarray], images: np.ndarray) -> np.ndarray:
        return np.array([metric(y_true[images], output[images]) for output in arm], dtype=float)

    everything = np.arange(len(y_true))
    difference = float(arm_scores(arms[0], everything).mean() - arm_scores(arms[1], everything).mean())

    # scipy.stats.bootstrap resamples one level only; this needs patients and seeds in the same replicate,
    # so it is a plain loop over replicates driven by one seeded generator.
    rng = np.random.default_rng(seed)
    replicates = np.empty(n_resamples)
    for r in range(n_resamples):
        images = index.gather(rng.integers(0, index.n_patients, index.n_patients))
        # Each seed's metric is computed once on the resampled patients and weighted by how often the seed
        # was drawn: the same as evaluating the resampled list of seeds, with fewer metric calls.
        if paired_seeds:
            weights = _seed_weights(rng, len(arms[0]))
            replicates[r] = np.average(arm_scores(arms[0], images) - arm_scores(arms[1], images), weights=weights)
        else:
            means = [np.average(arm_scores(arm, images), weights=_seed_weights(rng, len(arm))) for arm in arms]
            replicates[r] = means[0] - means[1]
    low, high, dropped = _percentile_interval(replicates, confidence)

    seeds_a, seeds_b = len(arms[0]), len(arms[1])
    if paired_seeds and seeds_a >= 2:
        accounts_for = f"{SEEDS_AND_PATIENTS}, the seeds paired (one network per seed, graded both ways)"
    elif seeds_a >= 2 and seeds_b >= 2:
        accounts_for = SEEDS_AND_PATIENTS
    elif seeds_a < 2 and seeds_b < 2:
        accounts_for = PATIENTS_ONLY
    else:
        single = names[0] if seeds_a < 2 else names[1]
        accounts_for = (
            f"test patients, and training seeds except {single}'s (one seed: its training randomness not estimated)"
        )
    return {
        "difference": difference,
        "low": low,
        "high": high,
        "seeds_a": seeds_a,
        "seeds_b": seeds_b,
        "resamples": n_resamples,
        "undefined_resamples": dropped,
        "accounts_for": accounts_for,
        "verdict": verdict(low, high, first=names[0], second=names[1], higher_is_better=higher_is_better,
                           confidence=confidence),
    }
