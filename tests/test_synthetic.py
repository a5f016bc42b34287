"""Behaviour of the procedural fundus generator: determinism, geometry, lesions, no shortcuts."""

from __future__ import annotations

import numpy as np
import pytest

from retinopathy.synthetic import GRADE_PROPORTIONS, render_fundus, sample_grades


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
