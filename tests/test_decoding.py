"""Heads and decodings: cut-points tuned on validation only, the two-eye blend, TTA, head checks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from retinopathy.ablation import components
from retinopathy.decoding import (
    DEFAULT_CUTPOINTS,
    Decoder,
    PatientBlend,
    check_cutpoints,
    cumulative_link_probabilities,
    cut,
    fit_temperature,
    tune_cutpoints,
)
from retinopathy.evaluation import Split, evaluate_variant, grade_with
from retinopathy.inference import load_model, model_metadata, outputs, tta_views
from retinopathy.metrics import quadratic_weighted_kappa
from retinopathy.models import build_model
from retinopathy.preprocessing import CropSettings


def _shifted_scores(n: int, seed: int, shift: float = 0.7) -> tuple[np.ndarray, np.ndarray]:
    """Grades and a score that tracks them but sits ``shift`` too high: default cut-points misgrade it."""
    rng = np.random.default_rng(seed)
    y = rng.choice(5, size=n, p=[0.5, 0.15, 0.2, 0.1, 0.05])
    return y, y + shift + rng.normal(0, 0.15, n)


def test_cut_assigns_grades_between_cutpoints() -> None:
    np.testing.assert_array_equal(cut(np.array([-1, 0.49, 0.5, 1.7, 3.6, 9]), DEFAULT_CUTPOINTS), [0, 0, 1, 2, 4, 4])


def test_tuned_cutpoints_increase_and_beat_the_defaults_on_shifted_scores() -> None:
    y, score = _shifted_scores(300, 0)
    tuned = tune_cutpoints(y, score)
    assert np.all(np.diff(tuned) > 0)
    default = quadratic_weighted_kappa(y, cut(score, DEFAULT_CUTPOINTS))
    better = quadratic_weighted_kappa(y, cut(score, tuned))
    assert better > default + 0.05, (default, better)
    # The shift is found: each cut-point moves up by about 0.7.
    np.testing.assert_allclose(tuned, np.array(DEFAULT_CUTPOINTS) + 0.7, atol=0.35)


def test_cutpoints_that_do_not_increase_are_refused_not_reordered() -> None:
    with pytest.raises(ValueError, match="not strictly increasing"):
        check_cutpoints([0.5, 2.5, 1.5, 3.5])
    with pytest.raises(ValueError, match="not strictly increasing"):
        Decoder(head="regression", cutpoints=(0.5, 0.5, 2.5, 3.5))
    with pytest.raises(ValueError, match="expected 4 finite"):
        cut(np.zeros(3), [0.5, 1.5, 2.5])


def test_cumulative_link_probabilities_are_distributions_ordered_by_score() -> None:
    score = np.linspace(-1, 5, 50)
    probs = cumulative_link_probabilities(score, DEFAULT_CUTPOINTS, 0.4)
    assert probs.shape == (50, 5) and np.all(probs >= 0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-12)
    assert np.all(np.diff(probs[:, 2:].sum(axis=1)) > 0)  # P(referable) rises with the score


def test_temperature_is_recovered_by_maximum_likelihood() -> None:
    rng = np.random.default_rng(1)
    score = rng.uniform(-0.5, 4.5, 4000)
    probs = cumulative_link_probabilities(score, DEFAULT_CUTPOINTS, 0.3)
    y = np.array([rng.choice(5, p=p) for p in probs])
    assert fit_temperature(y, score, DEFAULT_CUTPOINTS) == pytest.approx(0.3, rel=0.15)


def _split(y: np.ndarray, outputs: np.ndarray, patients: list[str], eyes: list[str]) -> Split:
    return Split([f"{p}_{e}" for p, e in zip(patients, eyes)], outputs, y)


def _paired(n_patients: int, seed: int) -> Split:
    """Regression outputs of patients whose two eyes share a grade most of the time."""
    rng = np.random.default_rng(seed)
    grade = rng.choice(5, size=n_patients, p=[0.5, 0.15, 0.2, 0.1, 0.05])
    other = np.where(rng.random(n_patients) < 0.85, grade, np.clip(grade + rng.choice([-1, 1], n_patients), 0, 4))
    y = np.column_stack([grade, other]).ravel()
    scores = (y + rng.normal(0, 0.7, len(y)))[:, None]
    patients = [str(p) for p in np.repeat(np.arange(n_patients), 2)]
    return _split(y, scores, patients, ["left", "right"] * n_patients)


def _paired_probabilities(n_patients: int, seed: int) -> Split:
    """Softmax outputs of a classification head on the same kind of patients: noisy, but peaked near the grade."""
    regression = _paired(n_patients, seed)
    logits = -((regression.outputs - np.arange(5)[None, :]) ** 2)  # closest grade to the noisy score wins
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return Split(regression.names, probs, regression.labels)


def test_cutpoints_are_fitted_on_validation_and_the_blend_on_training_outputs() -> None:
    train, val, test = _paired(200, 8), _paired(80, 0), _paired(60, 1)
    shuffled = Split(test.names, test.outputs, np.random.default_rng(2).permutation(test.labels))
    decoder = Decoder(head="regression")
    blend = PatientBlend("regression").fit(train.labels, train.outputs, train.patients, train.eyes)
    for use in (None, blend):
        preds, probs, fitted = grade_with(decoder, val, test, blend=use)
        preds_shuffled, probs_shuffled, fitted_shuffled = grade_with(decoder, val, shuffled, blend=use)
        assert fitted == fitted_shuffled  # test labels reach nothing
        np.testing.assert_array_equal(preds, preds_shuffled)
        np.testing.assert_array_equal(probs, probs_shuffled)
    # An argmax blend fits nothing on validation either: shuffled validation labels leave its test grades as they are.
    cls_train, cls_val, cls_test = (
        _paired_probabilities(200, 8), _paired_probabilities(80, 0), _paired_probabilities(60, 1)
    )
    cls_blend = PatientBlend().fit(cls_train.labels, cls_train.outputs, cls_train.patients, cls_train.eyes)
    val_shuffled = Split(cls_val.names, cls_val.outputs, np.random.default_rng(3).permutation(cls_val.labels))
    first = grade_with(Decoder(), cls_val, cls_test, blend=cls_blend)[0]
    np.testing.assert_array_equal(first, grade_with(Decoder(), val_shuffled, cls_test, blend=cls_blend)[0])


def test_blend_uses_the_other_eye_and_falls_back_to_one_eye() -> None:
    train = _paired(300, 3)
    blend = PatientBlend("regression").fit(train.labels, train.outputs, train.patients, train.eyes)
    record = blend.to_dict()
    assert record["fitted_on"] == "training images' outputs" and record["paired_images"] == 600
    assert record["partner_to_own_weight"] > 0.1  # correlated eyes: the partner's score carries weight
    # Patient "b" has one eye: it is graded by the one-eye fit; patient "a"'s right eye by the two-eye fit.
    scores = np.array([[0.2], [2.9], [2.9]])
    patients, eyes = ["a", "a", "b"], ["left", "right", "right"]
    np.testing.assert_array_equal(PatientBlend.partner_index(patients, eyes), [1, 0, -1])
    probs = blend.probabilities(scores, patients, eyes)
    assert probs.shape == (3, 5) and np.all(np.isfinite(probs))
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    np.testing.assert_allclose(probs[2], blend.alone.predict_proba(np.array([[2.9]]))[0])
    expected = probs @ np.arange(5)
    assert expected[1] < expected[2]  # a healthy partner pulls the grade down
    with pytest.raises(ValueError, match="more than once"):
        PatientBlend.partner_index(["a", "a", "a"], ["left", "right", "right"])


@pytest.mark.parametrize("head", ["regression", "classification"])
def test_blend_helps_on_correlated_eyes(head: str) -> None:
    make = _paired if head == "regression" else _paired_probabilities
    train, val, test = make(300, 9), make(300, 4), make(300, 5)
    decoder = Decoder(head=head, decode="argmax" if head == "classification" else "expected")
    blend = PatientBlend(head).fit(train.labels, train.outputs, train.patients, train.eyes)
    alone = grade_with(decoder, val, test)[0]
    blended = grade_with(decoder, val, test, blend=blend)[0]
    assert quadratic_weighted_kappa(test.labels, blended) > quadratic_weighted_kappa(test.labels, alone) + 0.01


def test_blend_refuses_what_it_cannot_fit() -> None:
    train = _paired(100, 10)
    with pytest.raises(ValueError, match="evaluate.blend_c must be positive"):
        PatientBlend("regression", c=0.0)
    without_four = train.take(np.flatnonzero(train.labels < 4))
    with pytest.raises(ValueError, match=r"grade\(s\) \[4\] have none"):
        PatientBlend("regression").fit(without_four.labels, without_four.outputs, without_four.patients,
                                       without_four.eyes)
    with pytest.raises(ValueError, match="not fitted"):
        PatientBlend("regression").probabilities(train.outputs, train.patients, train.eyes)
    with pytest.raises(ValueError, match="do not fit a classification head"):
        PatientBlend("classification").fit(train.labels, train.outputs, train.patients, train.eyes)


def test_components_cover_every_setup_of_a_head() -> None:
    train, val, test = _paired(100, 11), _paired(40, 6), _paired(30, 7)
    by_tta = lambda split: {"none": split, "flips": split}  # noqa: E731
    rows = components("regression", by_tta(val), by_tta(test), by_tta(train))
    assert [(r["tta"], r["patient_blend"]) for r in rows] == [
        ("none", False), ("none", True), ("flips", False), ("flips", True),
    ]
    assert all(set(r["val_2fold"]) == {"accuracy", "kappa", "macro_f1"} for r in rows)
    assert all(sum(r["test_predicted_grades"]) == 60 for r in rows)
    cls = [_paired_probabilities(100, 11), _paired_probabilities(40, 6), _paired_probabilities(30, 7)]
    rows = components("classification", by_tta(cls[1]), by_tta(cls[2]), by_tta(cls[0]))
    assert [(r["decode"], r["patient_blend"]) for r in rows[:4]] == [
        ("argmax", False), ("argmax", True), ("expected", False), ("expected", True),
    ]
    assert len(rows) == 8 and not any("error" in r for r in rows)
    # Training outputs missing a grade: the blend rows say why, the others are still scored.
    without_four = cls[0].take(np.flatnonzero(cls[0].labels < 4))
    rows = components("classification", by_tta(cls[1]), by_tta(cls[2]), by_tta(without_four))
    assert [("error" in r) for r in rows[:4]] == [False, True, False, True]
    assert "[4] have none" in rows[1]["error"]


def test_tta_views_keep_the_batch_shape_and_flip_each_axis() -> None:
    images = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    views = tta_views(images, "flips")
    assert len(views) == 4 and all(v.shape == images.shape for v in views)
    assert torch.equal(views[1][..., 0], images[..., -1]) and torch.equal(views[2][..., 0, :], images[..., -1, :])
    assert len(tta_views(images, "none")) == 1
    with pytest.raises(ValueError, match="N, 3, H, W"):
        tta_views(images[0], "flips")
    with pytest.raises(ValueError, match="tta 'rotate'"):
        tta_views(images, "rotate")


def test_tta_averages_the_head_outputs() -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=1).eval()
    images = torch.randn(3, 3, 32, 32)
    flipped = outputs(model, images, torch.device("cpu"), head="regression", tta="flips")
    assert flipped.shape == (3, 1)
    with torch.no_grad():
        by_hand = sum(model(v) for v in tta_views(images, "flips")) / 4
    torch.testing.assert_close(flipped, by_hand)
    probs = outputs(build_model("resnet18", num_classes=5).eval(), images, torch.device("cpu"), tta="flips")
    torch.testing.assert_close(probs.sum(1), torch.ones(3))


def _save_model(path: Path, decoder: Decoder) -> Path:
    model = build_model("resnet18", num_classes=5 if decoder.head == "classification" else 1)
    meta = model_metadata("resnet18", mean=[0.5] * 3, std=[0.25] * 3, crop=CropSettings(size=32), decoder=decoder)
    torch.save({**meta, "state_dict": model.state_dict()}, path)
    return path


def test_a_model_with_bad_cutpoints_is_refused_on_load(tmp_path: Path) -> None:
    path = _save_model(tmp_path / "m.pt", Decoder(head="regression"))
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["decoding"]["cutpoints"] = [0.5, 2.5, 1.5, 3.5]
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match=r"m.pt: its decoding .* not strictly increasing"):
        load_model(path, torch.device("cpu"))


def test_evaluating_with_another_head_names_both(tmp_path: Path, processed_dir: Path) -> None:
    path = _save_model(tmp_path / "m.pt", Decoder(head="classification"))
    with pytest.raises(ValueError,
                       match="trained with head 'classification' but params.yaml asks for head 'regression'"):
        evaluate_variant(model_path=path, data_dir=processed_dir, metrics_out=tmp_path / "e.json",
                         predictions_out=tmp_path / "p.csv", device="cpu", head="regression")
    assert not (tmp_path / "e.json").exists()
