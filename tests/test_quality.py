"""The gradability gate on real photographs: a real fundus photograph passes, photographs of other things are
not fundus photographs even seen through a black circle, and a fundus that is out of focus, badly exposed or
half hidden is ungradable with the reason."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from retinopathy.fundus import FieldOfView, find_fov
from retinopathy.params import ParamsError, load_params, load_settings
from retinopathy.quality import (
    ANALYSIS_DIAMETER,
    BLUR_MARGIN,
    MAX_UPSCALE,
    Quality,
    QualityThresholds,
    _analysis_frame,
    assess,
    judge,
)
from retinopathy.synthetic import render_fundus

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from quality_gate import (  # noqa: E402  (the benchmark's case makers are the tests' too)
    NOT_FUNDUS,
    cut_top_bottom,
    defocus,
    expose,
    gradable_photos,
    in_black_circle,
    lid_shadow,
    skimage_photo,
)


@pytest.fixture(scope="module")
def retina() -> Image.Image:
    """The real fundus photograph scikit-image ships (1411 x 1411)."""
    return skimage_photo("retina.jpg")


@pytest.fixture(scope="module")
def fundus_photos(retina: Image.Image) -> list[Image.Image]:
    """Gradable photographs: the real one, it cut at the top and bottom, and synthetic ones of every grade."""
    return [retina, cut_top_bottom(retina), *(photo for _, photo in gradable_photos(10))]


def _reasons(quality: Quality) -> str:
    return quality.reason_text()


def test_real_and_synthetic_fundus_photographs_are_gradable(fundus_photos: list[Image.Image]) -> None:
    for photo in fundus_photos:
        quality = assess(photo)
        assert quality.gradable and quality.fundus and quality.reasons == (), quality
        assert quality.measures["retina_colour_share"] > 0.95


@pytest.mark.parametrize("name", NOT_FUNDUS)
def test_photographs_of_other_things_are_not_fundus_photographs(name: str) -> None:
    photo = skimage_photo(name)
    for frame in (photo, in_black_circle(photo)):  # in the circle it has a field of view: colour must tell
        quality = assess(frame)
        assert not quality.gradable
        text = _reasons(quality)
        # The deep-sky field is mostly black, so its colour is not judged: it is refused as underexposed.
        expected = "underexposed" if name == "hubble_deep_field.jpg" else "not a fundus photograph"
        assert text.startswith(expected), text


def test_a_person_seen_through_a_black_circle_is_refused_by_colour() -> None:
    quality = assess(in_black_circle(skimage_photo("astronaut.png")))
    assert not quality.gradable and not quality.fundus
    assert "colour unlike a retina" in _reasons(quality)
    assert quality.measures["retina_colour_share"] < 0.6


@pytest.mark.parametrize("degrade, reason", [
    (lambda im: defocus(im, 0.02), "out of focus"),
    (lambda im: expose(im, 12.0), "underexposed"),
    (lambda im: expose(im, 225.0), "overexposed"),
    (lid_shadow, "too little of the retina is usable"),
])
def test_a_degraded_fundus_is_ungradable_with_its_reason(fundus_photos: list[Image.Image], degrade, reason) -> None:
    for photo in fundus_photos[:6]:
        quality = assess(degrade(photo))
        assert not quality.gradable, quality.measures
        assert quality.fundus  # a bad photograph of a retina, not something else
        assert reason in _reasons(quality), _reasons(quality)


def test_mild_defocus_stays_gradable_and_strong_defocus_lowers_focus_steadily(retina: Image.Image) -> None:
    focus = [assess(defocus(retina, share)).measures["focus"] for share in (0.0, 0.005, 0.01, 0.02)]
    assert focus == sorted(focus, reverse=True)
    assert assess(defocus(retina, 0.005)).gradable


def test_no_field_of_view_is_no_fundus_photograph() -> None:
    for frame in (Image.new("RGB", (64, 64)), Image.new("RGB", (200, 150), (255, 255, 255))):
        quality = assess(frame)
        assert not quality.gradable and not quality.fundus
        assert "no field of view" in _reasons(quality)


def test_every_limit_can_fail_alone_and_names_its_measurement() -> None:
    good = {"frame_share": 0.6, "usable_share": 1.0, "red_share": 0.6, "blue_share": 0.1,
            "retina_colour_share": 1.0, "dark_share": 0.0, "bright_share": 0.0, "clipped_share": 0.1, "focus": 0.08,
            "coverage": 1.0}
    thresholds = QualityThresholds()
    assert judge(good, thresholds).gradable
    for key, value, words in [
        ("frame_share", 0.1, "covers 10% of the frame"),
        ("retina_colour_share", 0.5, "50% of the field of view is retina-red"),
        ("dark_share", 0.7, "underexposed: 70%"),
        ("bright_share", 0.4, "overexposed: 40%"),
        ("clipped_share", 0.9, "red channel is clipped over 90%"),
        ("focus", 0.01, "out of focus"),
        ("coverage", 0.5, "50% of the field of view"),
    ]:
        quality = judge({**good, key: value}, thresholds)
        assert not quality.gradable and words in _reasons(quality), (key, _reasons(quality))


def test_thresholds_out_of_range_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"key 'quality.max_dark_share' must be in \[0, 1\], got 1.5"):
        QualityThresholds(max_dark_share=1.5)
    with pytest.raises(ValueError, match=r"'quality.dark_level' \(230\) must be below 'quality.bright_level' \(215\)"):
        QualityThresholds(dark_level=230, bright_level=215)
    with pytest.raises(ValueError, match="key 'quality.min_focus' must be 0 or more"):
        QualityThresholds(min_focus=-0.1)


def test_the_thresholds_are_the_params_quality_section() -> None:
    params = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    assert load_settings(QualityThresholds, params) == QualityThresholds()
    with pytest.raises(ParamsError, match=r"key 'quality.min_focus' must be float, got str 'sharp'"):
        load_settings(QualityThresholds, {"quality": {**params["quality"], "min_focus": "sharp"}})
    with pytest.raises(ParamsError, match=r"unknown key 'quality.min_focs' \(did you mean 'min_focus'\?\)"):
        load_settings(QualityThresholds, {"quality": {**params["quality"], "min_focs": 0.1}})


def test_the_measurements_do_not_depend_on_the_cameras_resolution(retina: Image.Image) -> None:
    small = retina.resize((700, 700), Image.Resampling.LANCZOS)
    full, half = assess(retina).measures, assess(small).measures
    for key in ("retina_colour_share", "dark_share", "coverage"):
        assert abs(full[key] - half[key]) < 0.02, key
    assert abs(full["focus"] - half["focus"]) < 0.25 * full["focus"]
    assert np.isfinite(list(full.values())).all()



def test_a_tiny_bright_disc_is_not_blown_up_to_the_analysis_scale() -> None:
    frame = Image.new("RGB", (400, 300))
    ImageDraw.Draw(frame).ellipse((194, 144, 206, 156), fill=(200, 60, 20))  # a 12-px disc
    fov = FieldOfView(cx=200.0, cy=150.0, radius=6.5)  # as a caller may give it: find_fov refuses so small a circle
    enlarged, circle = _analysis_frame(frame, fov)
    assert circle.radius == pytest.approx(fov.radius * MAX_UPSCALE)  # not the 21x that 256 px would need
    assert max(enlarged.size) <= 2 * circle.radius + 2 * BLUR_MARGIN + 2  # only the circle's part of the frame
    given = assess(frame, fov=fov)
    assert not given.gradable and not given.fundus and "covers" in given.reason_text()
    quality = assess(frame)
    assert not quality.gradable and not quality.fundus and not quality.fov_found
    assert "no field of view found: the bright circle (radius 6.4 px) is too small" in quality.reason_text()


@pytest.mark.parametrize("size", [60, 150, 600])  # enlarged 4x, a little, and reduced
def test_the_analysis_frame_is_the_circles_part_of_the_whole_frame_resampled(size: int) -> None:
    photo = render_fundus(2, np.random.default_rng(size), size=size)
    fov = find_fov(photo)
    part, circle = _analysis_frame(photo, fov)
    scale = min(ANALYSIS_DIAMETER / (2 * fov.radius), MAX_UPSCALE)
    width, height = round(photo.width * scale), round(photo.height * scale)
    whole = photo.resize((width, height), Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR)
    x0, y0 = round(fov.cx * width / photo.width - circle.cx), round(fov.cy * height / photo.height - circle.cy)
    ours = np.asarray(part, dtype=np.int16)
    theirs = np.asarray(whole, dtype=np.int16)[y0: y0 + ours.shape[0], x0: x0 + ours.shape[1]]
    assert ours.shape == theirs.shape and part.width <= 2 * circle.radius + 2 * BLUR_MARGIN + 2
    assert np.mean(ours != theirs) < 0.005 and np.abs(ours - theirs).max() <= 12
