"""From a network's outputs to grades: heads, decodings, cut-points tuned on validation, the two-eye blend.

A network ends in one of two heads:

- ``classification``: 5 logits, turned into probabilities p0..p4 by softmax. Decoded by ``argmax``
  (the study's rule) or ``expected``: the expected grade ``sum(k * p_k)`` cut into grades at four
  cut-points.
- ``regression``: one number, the grade on a continuous scale (trained with a smooth L1 loss, as
  the APTOS 2019 winner did), always cut into grades at four cut-points. Its p0..p4 come from a
  cumulative-link model on that number, ``P(grade <= k) = sigmoid((c_k - score) / temperature)``,
  whose cut-points ``c_k`` are the decoding's and whose temperature is fitted on validation by
  maximum likelihood: the screening metrics and confusion matrices work unchanged, and P(grade >= 2)
  ranks images exactly as the score does.

Cut-points start at 0.5, 1.5, 2.5, 3.5 and are tuned on the validation set to maximise quadratic
weighted kappa with ``scipy.optimize.differential_evolution`` (kappa is piecewise constant in the
cut-points, so a gradient or simplex search stalls on its plateaus). They are parametrised as a first
cut plus non-negative gaps, so the search only visits increasing cut-points; cut-points given from
anywhere else (a checkpoint, a user) are checked and refused when not increasing, never reordered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from retinopathy import NUM_CLASSES
from retinopathy.metrics import quadratic_weighted_kappa
from retinopathy.settings import DECODINGS, HEADS

if TYPE_CHECKING:  # scipy and scikit-learn are imported where they are used: most stages never fit anything here
    from sklearn.linear_model import LogisticRegression

DEFAULT_CUTPOINTS = (0.5, 1.5, 2.5, 3.5)
_GRADES = np.arange(NUM_CLASSES, dtype=float)


def head_outputs(head: str) -> int:
    """Width of the network's last layer for ``head``."""
    check_head(head)
    return NUM_CLASSES if head == "classification" else 1


def check_head(head: str) -> str:
    if head not in HEADS:
        raise ValueError(f"head {head!r}; choose one of {list(HEADS)}")
    return head


def check_cutpoints(cutpoints: Sequence[float], *, where: str = "cut-points") -> np.ndarray:
    """The cut-points as an array, or ValueError when there are not 4 finite, strictly increasing values."""
    cuts = np.asarray(cutpoints, dtype=float)
    if cuts.shape != (NUM_CLASSES - 1,) or not np.all(np.isfinite(cuts)):
        raise ValueError(f"{where}: expected {NUM_CLASSES - 1} finite cut-points, got {list(np.atleast_1d(cuts))}")
    if not np.all(np.diff(cuts) > 0):
        raise ValueError(f"{where}: cut-points {cuts.round(4).tolist()} are not strictly increasing; "
                         f"they are refused rather than reordered")
    return cuts


def cut(score: np.ndarray, cutpoints: Sequence[float]) -> np.ndarray:
    """Grades 0..4 from a continuous score: grade k where ``c_k <= score < c_{k+1}``."""
    cuts = check_cutpoints(cutpoints)
    return np.searchsorted(cuts, np.asarray(score, dtype=float), side="right").astype(np.int64)


def tune_cutpoints(y_true: np.ndarray, score: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """Cut-points maximising the QWK of ``cut(score)`` against ``y_true`` (validation data only).

    The search runs over ``first cut, gap_1..gap_3`` (gaps >= 0.01), so every candidate is increasing;
    ties go to the default cut-points when they score as well (the search starts from them).
    """
    y_true, score = np.asarray(y_true), np.asarray(score, dtype=float)
    if len(y_true) != len(score) or len(y_true) < 2:
        raise ValueError(f"need matching labels and scores (>= 2), got {len(y_true)} and {len(score)}")
    low, high = float(min(score.min(), 0.0)) - 0.5, float(max(score.max(), NUM_CLASSES - 1.0)) + 0.5
    span = high - low

    def to_cuts(x: np.ndarray) -> np.ndarray:
        return x[0] + np.concatenate([[0.0], np.cumsum(x[1:])])

    def loss(x: np.ndarray) -> float:
        return -quadratic_weighted_kappa(y_true, np.searchsorted(to_cuts(x), score, side="right"))

    start = np.array([DEFAULT_CUTPOINTS[0], *np.diff(DEFAULT_CUTPOINTS)])
    bounds = [(low, high)] + [(0.01, span)] * (NUM_CLASSES - 2)
    from scipy import optimize

    result = optimize.differential_evolution(loss, bounds, x0=start, seed=seed, tol=1e-8, maxiter=200,
                                             polish=False, init="sobol")
    best = result.x if result.fun < loss(start) else start
    return check_cutpoints(to_cuts(best), where="tuned cut-points")


def fit_temperature(y_true: np.ndarray, score: np.ndarray, cutpoints: Sequence[float]) -> float:
    """Maximum-likelihood temperature of the cumulative-link model on validation data."""
    y_true = np.asarray(y_true, dtype=np.int64)

    def nll(log_t: float) -> float:
        probs = cumulative_link_probabilities(score, cutpoints, float(np.exp(log_t)))
        return -float(np.mean(np.log(np.clip(probs[np.arange(len(y_true)), y_true], 1e-12, None))))

    from scipy import optimize

    result = optimize.minimize_scalar(nll, bounds=(np.log(1e-3), np.log(1e2)), method="bounded")
    return float(np.exp(result.x))


def cumulative_link_probabilities(score: np.ndarray, cutpoints: Sequence[float], temperature: float) -> np.ndarray:
    """p0..p4 (N, 5) with ``P(grade <= k) = sigmoid((c_k - score) / temperature)``."""
    from scipy.special import expit

    cuts = check_cutpoints(cutpoints)
    score = np.asarray(score, dtype=float).reshape(-1, 1)
    below = expit((cuts[None, :] - score) / temperature)  # (N, 4): P(grade <= k), increasing in k
    cumulative = np.concatenate([below, np.ones((len(score), 1))], axis=1)
    return np.diff(np.concatenate([np.zeros((len(score), 1)), cumulative], axis=1), axis=1)


@dataclass(frozen=True)
class Decoder:
    """How a head's outputs become a score, grades and probabilities; saved in its checkpoint.

    The outputs (see :func:`retinopathy.inference.outputs`) are softmax probabilities p0..p4 (N, 5) for a
    classification head, one score (N, 1) for a regression head.
    """

    head: str = "classification"
    decode: str = "argmax"
    cutpoints: tuple[float, ...] = DEFAULT_CUTPOINTS
    temperature: float = 1.0

    def __post_init__(self) -> None:
        check_head(self.head)
        if self.decode not in DECODINGS:
            raise ValueError(f"decode {self.decode!r}; choose one of {list(DECODINGS)}")
        check_cutpoints(self.cutpoints)
        if not self.temperature > 0:
            raise ValueError(f"temperature {self.temperature} must be positive")

    @property
    def uses_cutpoints(self) -> bool:
        return self.head == "regression" or self.decode == "expected"

    def check_outputs(self, outputs: np.ndarray) -> np.ndarray:
        """The head's outputs as a float array; ValueError when their shape does not fit the head."""
        outputs = np.asarray(outputs, dtype=float)
        width = head_outputs(self.head)
        if outputs.ndim != 2 or outputs.shape[1] != width:
            raise ValueError(f"outputs of shape {outputs.shape} do not fit a {self.head} head ({width} per image)")
        return outputs

    def score(self, outputs: np.ndarray) -> np.ndarray:
        """A continuous grade: the regression output, or the expected grade under the probabilities."""
        outputs = self.check_outputs(outputs)
        return outputs[:, 0] if self.head == "regression" else outputs @ _GRADES

    def grades(self, outputs: np.ndarray) -> np.ndarray:
        """Grades 0..4."""
        outputs = self.check_outputs(outputs)
        if not self.uses_cutpoints:
            return outputs.argmax(axis=1).astype(np.int64)
        return cut(self.score(outputs), self.cutpoints)

    def probabilities(self, outputs: np.ndarray) -> np.ndarray:
        """p0..p4 (N, 5): the softmax for classification, the cumulative-link model for regression."""
        outputs = self.check_outputs(outputs)
        if self.head == "classification":
            return outputs
        return cumulative_link_probabilities(outputs[:, 0], self.cutpoints, self.temperature)

    def fitted(self, y_val: np.ndarray, val_outputs: np.ndarray, *, seed: int = 0) -> "Decoder":
        """This decoder with cut-points (and temperature) tuned on validation outputs."""
        if not self.uses_cutpoints:
            return self
        score = self.score(val_outputs)
        cuts = tune_cutpoints(y_val, score, seed=seed)
        temperature = fit_temperature(y_val, score, cuts) if self.head == "regression" else 1.0
        return Decoder(self.head, self.decode, tuple(float(c) for c in cuts), temperature)

    def to_dict(self) -> dict[str, Any]:
        return {"head": self.head, "decode": self.decode, "cutpoints": [float(c) for c in self.cutpoints],
                "temperature": float(self.temperature)}

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> "Decoder":
        return cls(record["head"], record["decode"], tuple(record["cutpoints"]), float(record["temperature"]))


@dataclass
class PatientBlend:
    """Each eye graded from its own outputs and its partner's (Kaggle 2015 2nd place, team o_O).

    Two multinomial logistic regressions (scikit-learn, L-BFGS, L2 strength ``1 / c``, each grade
    weighted as training weighted it) give blended p0..p4: one on ``[own, partner]`` for eyes whose
    partner is in the set, one on ``[own]`` for eyes alone. An eye's outputs enter as its log
    probabilities (classification head, 5 values) or its score (regression head, 1 value).

    They are fitted on the outputs of the *training* images, never on test. A 5-grade blend has
    55 coefficients; validation holds too few eyes of grades 3 and 4 to fit that many, while the
    training patients can (docs/grading.md gives the default set's counts), and validation then scores
    the blend untouched. Training outputs are in-sample for the network, so the blend learns to trust an eye's
    own outputs at least as much as held-out data would have taught it: it errs towards the eye alone.
    """

    head: str = "classification"
    c: float = 0.03
    class_weights: np.ndarray | None = None
    both: LogisticRegression | None = None
    alone: LogisticRegression | None = None
    paired_images: int = 0

    def __post_init__(self) -> None:
        check_head(self.head)
        if not self.c > 0:
            raise ValueError(f"evaluate.blend_c must be positive, got {self.c!r}")

    def features(self, outputs: np.ndarray) -> np.ndarray:
        """Per-eye inputs: log probabilities (classification) or the score (regression)."""
        outputs = Decoder(head=self.head).check_outputs(outputs)
        return np.log(np.clip(outputs, 1e-6, 1.0)) if self.head == "classification" else outputs

    @staticmethod
    def partner_index(patients: Sequence[str], eyes: Sequence[str]) -> np.ndarray:
        """Row of each image's other eye, -1 where the patient has no other eye in the set."""
        rows: dict[tuple[str, str], int] = {}
        repeated = []
        for i, key in enumerate(zip(patients, eyes)):
            if key in rows:
                repeated.append(f"{key[0]}_{key[1]}")
            rows[key] = i
        if repeated:
            raise ValueError(f"images of the same eye appear more than once: {repeated[:5]}")
        other = {"left": "right", "right": "left"}
        return np.array([rows.get((p, other.get(e, "")), -1) for p, e in zip(patients, eyes)], dtype=np.int64)

    def _design(
        self, outputs: np.ndarray, patients: Sequence[str], eyes: Sequence[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        own = self.features(outputs)
        partner = self.partner_index(patients, eyes)
        paired = partner >= 0
        both = np.hstack([own, own[np.where(paired, partner, 0)]])
        return both, paired

    def _regression(self) -> LogisticRegression:
        from sklearn.linear_model import LogisticRegression

        weight = None if self.class_weights is None else {k: float(w) for k, w in enumerate(self.class_weights)}
        return LogisticRegression(C=self.c, class_weight=weight, max_iter=5000)

    def fit(self, y: np.ndarray, outputs: np.ndarray, patients: Sequence[str], eyes: Sequence[str]) -> "PatientBlend":
        """Fit on training images' labels and outputs.

        Raises:
            ValueError: fewer than 2 paired eyes, or a grade missing from the images (the blend could never give it).
        """
        y = np.asarray(y, dtype=np.int64)
        both, paired = self._design(outputs, patients, eyes)
        missing = sorted(set(range(NUM_CLASSES)) - set(y.tolist()))
        if missing:
            raise ValueError(f"the blend needs training images of every grade; grade(s) {missing} have none")
        if paired.sum() < 2 or len(set(y[paired].tolist())) < 2:
            raise ValueError(f"the blend needs training patients with both eyes; found {int(paired.sum())} paired eyes")
        self.both = self._regression().fit(both[paired], y[paired])
        self.alone = self._regression().fit(both[:, : both.shape[1] // 2], y)
        self.paired_images = int(paired.sum())
        return self

    def probabilities(self, outputs: np.ndarray, patients: Sequence[str], eyes: Sequence[str]) -> np.ndarray:
        """Blended p0..p4 (N, 5): the two-eye fit where the partner is in the set, the one-eye fit elsewhere."""
        if self.both is None or self.alone is None:
            raise ValueError("the blend is not fitted")
        both, paired = self._design(outputs, patients, eyes)
        out = _full_probabilities(self.alone, both[:, : both.shape[1] // 2])
        if paired.any():
            out[paired] = _full_probabilities(self.both, both[paired])
        return out

    def to_dict(self) -> dict[str, Any]:
        if self.both is None or self.alone is None:
            return {"fitted": False}
        half = self.both.coef_.shape[1] // 2
        own, other = np.linalg.norm(self.both.coef_[:, :half]), np.linalg.norm(self.both.coef_[:, half:])
        return {
            "fitted_on": "training images' outputs",
            "c": self.c,
            "inputs": "log p0..p4" if self.head == "classification" else "score",
            "paired_images": self.paired_images,
            # How much the partner's outputs weigh against the eye's own, as the ratio of coefficient norms.
            "partner_to_own_weight": round(float(other / own), 4) if own > 0 else None,
        }


def _full_probabilities(model: LogisticRegression, x: np.ndarray) -> np.ndarray:
    """``predict_proba`` spread over all grades (the fit saw every grade, so its classes are 0..4)."""
    out = np.zeros((len(x), NUM_CLASSES))
    out[:, model.classes_] = model.predict_proba(x)
    return out
