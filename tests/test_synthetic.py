"""Behaviour of the procedural fundus generator: determinism, geometry, lesions, no shortcuts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retinopathy.embedded import write_synthetic_set
from retinopathy.settings import SyntheticSpec
from retinopathy.synthetic import GRADE_PROPORTIONS, draw_camera, pair_grades, render_fundus, sample_grades


def _pixels(grade: int, seed: int, **kwargs) -> np.ndarray:
    return np.asarray(render_fundus(grade, np.random.default_rng(seed), **kwargs))


def test_same_seed_gives_identical_pixels() -> None:
    a = _pixels(3, seed=7, size=96, eye="right")
    b = _pixels(3, seed=7, size=96, eye="right")
    assert a.shape == b.shape
    assert np.array_equal(a, b)


def test_different_seeds_give_different_pixels() -> None:
    a, b = _pixels(2, seed=1, size=96), _pixels(2, seed=2, size=96)
    assert a.shape != b.shape or not np.array_equal(a, b)


def test_sample_grades_counts_match_proportions_within_one() -> None:
    n = 1000
    grades = sample_grades(n, np.random.default_rng(0))
    assert grades.dtype == np.int64 and grades.shape == (n,)
    assert grades.min() >= 0 and grades.max() <= 4
    counts = np.bincount(grades, minlength=5)
    assert counts.sum() == n
    assert np.all(np.abs(counts - np.asarray(GRADE_PROPORTIONS) * n) <= 1)


def test_sample_grades_is_shuffled_and_reproducible() -> None:
    a = sample_grades(200, np.random.default_rng(5))
    assert np.array_equal(a, sample_grades(200, np.random.default_rng(5)))
    assert not np.all(np.diff(a) >= 0)  # not left sorted by grade


@pytest.mark.parametrize("seed", range(6))
def test_image_has_black_border_and_red_field_of_view(seed: int) -> None:
    size = 128
    img = render_fundus(seed % 5, np.random.default_rng(seed), size=size, eye=("left", "right")[seed % 2])
    assert img.mode == "RGB"
    assert img.height == size and size <= img.width <= 1.5 * size
    px = np.asarray(img).astype(np.int32)
    for corner in (px[:4, :4], px[:4, -4:], px[-4:, :4], px[-4:, -4:]):
        assert corner.max() <= 8
    h, w = px.shape[:2]
    centre = px[h // 2 - h // 6 : h // 2 + h // 6, w // 2 - h // 6 : w // 2 + h // 6].reshape(-1, 3).mean(axis=0)
    assert centre[0] > centre[1] > centre[2]
    assert centre[0] > 60  # lit retina, not border


def test_same_seed_shares_anatomy_across_grades() -> None:
    # Lesions are drawn after all grade-blind choices, so grade 0 and 1 differ only at a few dots.
    a, b = _pixels(0, seed=3, size=128), _pixels(1, seed=3, size=128)
    assert a.shape == b.shape
    changed = np.abs(a.astype(np.int32) - b.astype(np.int32)).max(axis=2) > 10
    assert 0 < changed.mean() < 0.02


def test_darkened_lesion_area_grows_with_grade() -> None:
    # With one seed the eye is the same at every grade; count pixels the lesions turned darker red.
    area = np.zeros(5)
    for seed in range(10):
        healthy = _pixels(0, seed, size=128).astype(np.int32)
        for grade in range(5):
            diseased = _pixels(grade, seed, size=128).astype(np.int32)
            area[grade] += np.mean(healthy[..., 0] - diseased[..., 0] > 20)
    assert area[0] == 0
    assert area[1] < area[2] < area[3]
    assert area[4] > area[1]


def test_brightness_does_not_reveal_grade() -> None:
    # Independent seeds per grade, as in a dataset: a Welch t-statistic on mean brightness stays small.
    per_grade = {
        g: np.array([_pixels(g, seed=10_000 * (g + 1) + s, size=64).mean() for s in range(40)]) for g in (0, 3, 4)
    }
    base = per_grade[0]
    for g in (3, 4):
        other = per_grade[g]
        t = (other.mean() - base.mean()) / np.sqrt(base.var(ddof=1) / base.size + other.var(ddof=1) / other.size)
        assert abs(t) < 3, f"grade {g} brightness differs from grade 0 (t={t:.2f})"
    assert base.std() > 5  # nuisance brightness really varies, so the check has teeth


@pytest.mark.parametrize(
    ("kwargs", "culprit"),
    [
        ({"grade": 5}, "grade"),
        ({"grade": -1}, "grade"),
        ({"eye": "middle"}, "eye"),
        ({"size": 31}, "size"),
    ],
)
def test_render_rejects_bad_arguments_by_name(kwargs: dict, culprit: str) -> None:
    args = {"grade": 0, "size": 64, "eye": "left"} | kwargs
    with pytest.raises(ValueError, match=rf"\b{culprit}\b"):
        render_fundus(args.pop("grade"), np.random.default_rng(0), **args)


@pytest.mark.parametrize(("args", "culprit"), [((-1,), "n"), ((10, (0.5, 0.5)), "proportions")])
def test_sample_grades_rejects_bad_arguments_by_name(args: tuple, culprit: str) -> None:
    n, *rest = args
    with pytest.raises(ValueError, match=rf"\b{culprit}\b"):
        sample_grades(n, np.random.default_rng(0), *rest)


def test_pair_grades_keeps_the_per_eye_class_mix_exactly() -> None:
    pairs = pair_grades(500, np.random.default_rng(3))
    assert pairs.shape == (500, 2)
    expected = np.bincount(sample_grades(1000, np.random.default_rng(0)), minlength=5)
    np.testing.assert_array_equal(np.bincount(pairs.ravel(), minlength=5), expected)


@pytest.mark.parametrize("agreement", [0.85, 0.7, 1.0])
def test_pair_grades_hits_the_agreement_and_discordant_eyes_mostly_differ_by_one(agreement: float) -> None:
    pairs = pair_grades(500, np.random.default_rng(4), agreement=agreement)
    same = np.mean(pairs[:, 0] == pairs[:, 1])
    # Within one patient of the target, apart from the few pairs sorting leaves discordant at 1.0.
    assert abs(same - agreement) <= 0.01, same
    gaps = np.abs(pairs[:, 0] - pairs[:, 1])[pairs[:, 0] != pairs[:, 1]]
    if agreement < 1.0:
        assert np.mean(gaps == 1) >= 0.6, np.bincount(gaps)


def test_pair_grades_puts_no_grade_on_one_side() -> None:
    pairs = pair_grades(2000, np.random.default_rng(5))
    left, right = np.bincount(pairs[:, 0], minlength=5), np.bincount(pairs[:, 1], minlength=5)
    # Sides are shuffled per patient: each grade splits about evenly between left and right eyes.
    assert np.all(np.abs(left - right) <= 4 * np.sqrt(left + right + 1)), (left, right)


def test_pair_grades_rejects_bad_agreement_by_name() -> None:
    with pytest.raises(ValueError, match="agreement must be in"):
        pair_grades(10, np.random.default_rng(0), agreement=1.5)


def test_camera_fixes_the_nuisance_factors_but_not_the_anatomy() -> None:
    camera = draw_camera(np.random.default_rng(9))
    a = np.asarray(render_fundus(0, np.random.default_rng(1), size=96, camera=camera))
    b = np.asarray(render_fundus(0, np.random.default_rng(2), size=96, eye="right", camera=camera))
    assert a.shape == b.shape  # framing comes from the camera
    assert not np.array_equal(a, b)  # the eyes differ
    other = np.asarray(
        render_fundus(0, np.random.default_rng(1), size=96, camera=draw_camera(np.random.default_rng(10)))
    )
    assert not np.array_equal(a, other)


def test_embedded_set_pairs_eyes_like_screening_patients(tmp_path: Path) -> None:
    spec = SyntheticSpec(seed=3, train_patients=30, test_patients=6, unlabeled_patients=2, min_size=64, max_size=128)
    table = write_synthetic_set(tmp_path / "set", spec, workers=1)
    table["patient"] = table["image"].str.rsplit("_", n=1).str[0]
    sizes = {row.image: Image.open(tmp_path / "set" / f"{row.image}.jpeg").size for row in table.itertuples()}
    by_patient = table.groupby("patient")["image"].apply(list)
    # Both eyes of every patient share the session's image size; patients differ.
    assert all(sizes[a] == sizes[b] for a, b in by_patient)
    assert len({sizes[a] for a, _ in by_patient}) > 5
    levels = table[table["split"] != "unlabeled"].groupby("patient")["level"].apply(list)
    same = np.mean([a == b for a, b in levels])
    assert same >= 0.7, same
    with pytest.raises(ValueError, match="synthetic.eye_agreement"):
        write_synthetic_set(tmp_path / "bad", SyntheticSpec(eye_agreement=2.0), workers=1)
