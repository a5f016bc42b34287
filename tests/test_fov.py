"""The field of view of every camera framing: a circle whole, cut at the top and bottom or at all four sides,
off-centre, partly shadowed, or filling the frame; found through JPEG noise and labels in the border, and
refused for frames that have none."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

import test_cli
import test_sources
from retinopathy.cli import main
from retinopathy.fundus import crop_to_fov, find_fov
from retinopathy.quality import assess
from retinopathy.synthetic import render_fundus

model_file = test_cli.model_file  # the fixture: an untrained model, to run predict with

# (width, height, cx, cy, r) of a drawn disc: PIL fills the pixels from cx - r to cx + r, so its radius is r + 0.5.
SHAPES = {
    "inside": (300, 200, 150, 100, 90),
    "cut-top-and-bottom": (400, 240, 210, 120, 140),
    "cut-at-four-sides": (600, 600, 300, 300, 372),
    "cut-at-four-sides-off-centre": (600, 500, 320, 240, 360),
    "cut-at-one-side": (400, 300, 120, 150, 140),
    "cut-off-centre": (300, 200, 140, 90, 110),
    "only-corners-dark": (300, 300, 150, 150, 0.66 * 300),
}


def _disc(width: int, height: int, cx: float, cy: float, r: float) -> Image.Image:
    image = Image.new("RGB", (width, height))
    ImageDraw.Draw(image).ellipse((cx - r, cy - r, cx + r, cy + r), fill=(180, 80, 30))
    return image


def _jpeg(image: Image.Image, quality: int = 75) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _assert_circle(image: Image.Image, cx: float, cy: float, r: float) -> None:
    fov = find_fov(image)
    assert (fov.cx, fov.cy) == pytest.approx((cx, cy), abs=1.0), fov
    assert fov.radius == pytest.approx(r + 0.5, abs=max(1.0, 0.005 * r)), fov


@pytest.mark.parametrize("jpeg", [False, True], ids=["png", "jpeg"])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_the_circle_is_found_however_the_frame_cuts_it(shape: tuple[int, int, float, float, float], jpeg: bool) -> None:
    image = _disc(*shape)
    _assert_circle(_jpeg(image) if jpeg else image, *shape[2:])


def test_a_stray_pixel_and_labels_in_the_border_do_not_move_the_circle() -> None:
    for width, height, cx, cy, r in (SHAPES["inside"], SHAPES["cut-at-four-sides"]):
        image = _disc(width, height, cx, cy, r)
        draw = ImageDraw.Draw(image)
        draw.point((width - 3, height - 3), fill=(255, 255, 255))
        draw.rectangle((4, 4, 4 + width // 8, 4 + height // 14), fill=(255, 255, 255))  # a white label
        draw.text((width - 60, 6), "OD 2015", fill=(255, 255, 255))
        _assert_circle(_jpeg(image), cx, cy, r)


def test_a_bright_banner_across_the_top_does_not_move_the_circle() -> None:
    width, height, cx, cy, r = SHAPES["inside"]
    image = _disc(width, height, cx, cy, r)
    ImageDraw.Draw(image).rectangle((0, 0, width - 1, 20), fill=(230, 230, 230))
    _assert_circle(_jpeg(image), cx, cy, r)


def test_a_lid_shadow_hiding_the_top_of_the_rim_leaves_the_circle_where_the_rest_of_it_is() -> None:
    width, height, cx, cy, r = SHAPES["inside"]
    image = np.asarray(_disc(width, height, cx, cy, r)).copy()
    image[: int(cy - 0.1 * r)] //= 10  # the upper part of the disc below the threshold
    _assert_circle(_jpeg(Image.fromarray(image)), cx, cy, r)


def _filling_photograph() -> Image.Image:
    """The inner square of a synthetic fundus photograph's circle, stretched to 150 x 100: no black anywhere."""
    photo = render_fundus(1, np.random.default_rng(3), size=160)
    fov = find_fov(photo)
    half = 0.68 * fov.radius
    inner = photo.crop((round(fov.cx - half), round(fov.cy - half), round(fov.cx + half), round(fov.cy + half)))
    return _jpeg(inner.resize((150, 100), Image.Resampling.BILINEAR))


def test_a_photograph_filling_the_frame_is_its_own_field_of_view_padded_square() -> None:
    frame = _filling_photograph()
    assert np.asarray(frame.convert("L")).min() > 20  # no black corner at all
    fov = find_fov(frame)
    assert (fov.cx, fov.cy, fov.radius) == (74.5, 49.5, 75.0)
    crop = np.asarray(crop_to_fov(frame, 30).convert("L"))
    assert crop[:4].max() < 20 and crop[-4:].max() < 20  # the shorter side padded with black
    assert crop[6:24].min() > 20  # the whole frame in the middle


def test_a_frame_dark_only_in_a_corner_is_its_own_field_of_view() -> None:
    frame = np.asarray(_filling_photograph()).copy()
    yy, xx = np.mgrid[:100, :150]
    frame[(xx - 120) ** 2 + (yy - 130) ** 2 > 150**2] = 0  # a circle centred below the frame leaves one corner dark
    assert 0 < (frame.max(axis=2) == 0).mean() < 0.1
    fov = find_fov(Image.fromarray(frame))
    assert (fov.cx, fov.cy, fov.radius) == (74.5, 49.5, 75.0)


def _on_black(box: tuple[int, int, int, int], size: tuple[int, int] = (300, 200)) -> Image.Image:
    image = Image.new("RGB", size)
    ImageDraw.Draw(image).rectangle(box, fill=(255, 255, 255))
    return image


@pytest.mark.parametrize(("frame", "words"), [
    (Image.new("RGB", (50, 40)), "every pixel is at or below brightness 20"),
    (_on_black((60, 40, 240, 160)), "is not a circle"),  # a white card
    (_on_black((100, 50, 200, 150)), "is not a circle"),  # a white square
    (_on_black((0, 95, 299, 105)), "is not a circle"),  # a thin strip across the frame
    (_on_black((50, 95, 250, 104)), "is not a circle"),  # a ruler
    (_on_black((0, 0, 149, 199)), "is not a circle"),  # half the frame bright
    (_on_black((50, 99, 250, 100)), "specks or thin lines"),  # a 2-px line
    (_disc(400, 300, 200, 150, 6), "too small for the field of view of the 400x300 frame"),
    (Image.new("RGB", (200, 150), (255, 255, 255)), "bright all over and blank"),
], ids=["black", "white-card", "white-square", "strip", "ruler", "half-bright", "line", "tiny-disc", "white"])
def test_frames_without_a_field_of_view_are_refused_with_the_reason(frame: Image.Image, words: str) -> None:
    with pytest.raises(ValueError, match="^no field of view found: ") as caught:
        find_fov(frame)
    assert words in str(caught.value)
    if frame.getbbox():  # through JPEG noise too
        with pytest.raises(ValueError, match="^no field of view found: "):
            find_fov(_jpeg(frame))


def test_a_frame_mostly_bright_outside_a_circle_is_refused() -> None:
    frame = _disc(300, 200, 150, 100, 90)
    draw = ImageDraw.Draw(frame)
    for box in ((0, 0, 54, 199), (245, 0, 299, 199)):  # bright from the circle's sides to the frame's edges
        draw.rectangle(box, fill=(200, 200, 200))
    with pytest.raises(ValueError, match="^no field of view found: .*% of the frame outside the fitted circle"):
        find_fov(frame)


@pytest.mark.parametrize("layout", test_sources.LAYOUT_NAMES)
def test_preprocessing_keeps_every_image_of_circles_cut_at_all_four_sides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str
) -> None:
    # 600 x 600 frames, each a centred circle of radius 0.62 x 600: only the corners are black.
    monkeypatch.setattr(test_sources, "SHAPES", [(600, 600, 0.62)] * len(test_sources.SHAPES))
    test_sources.make_layout(tmp_path / "raw", layout)
    counts = test_sources._build(tmp_path / "raw", layout, tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    assert sum(counts.values()) == 12 and report["bad_image_count"] == 0
    crop = np.asarray(Image.open(next((tmp_path / "processed").glob("*/*.png"))).convert("L"))
    assert crop[12, 12] > 20 and crop[0, 0] < 20  # centred on the circle, its radius beyond the frame's corners


def _frames_that_fill() -> dict[str, Image.Image]:
    """Frames with no black at all: a real fundus photograph's inner square (scikit-image's retina.jpg), a cat, a
    grey-level picture, and a washed-out frame (sensor noise around 245)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from quality_gate import skimage_photo

    retina = skimage_photo("retina.jpg")
    fov = find_fov(retina)
    half = 0.65 * fov.radius
    noise = np.random.default_rng(0).normal(245.0, 8.0, (150, 200, 3))
    return {
        "retina": retina.crop((round(fov.cx - half), round(fov.cy - half), round(fov.cx + half), round(fov.cy + half))),
        "cat": skimage_photo("chelsea.png"),
        "grey": skimage_photo("camera.png"),
        "washed-out": Image.fromarray(np.clip(noise, 0, 255).astype(np.uint8)),
    }


def test_the_gate_passes_a_fundus_filling_the_frame_and_refuses_other_frames_that_fill_it() -> None:
    frames = _frames_that_fill()
    assert np.asarray(frames["retina"].convert("L")).min() > 20  # no black corner
    for frame in frames.values():  # no edge of the bright region inside the frame: the frame is the field of view
        fov = find_fov(frame)
        assert (fov.cx, fov.cy, fov.radius) == ((frame.width - 1) / 2, (frame.height - 1) / 2, max(frame.size) / 2)
    retina = assess(frames["retina"])
    assert retina.gradable and retina.fundus, retina.reason_text()
    for name, reason in (("cat", "colour unlike a retina"), ("grey", "colour unlike a retina")):
        quality = assess(frames[name])
        assert not quality.gradable and not quality.fundus and reason in quality.reason_text(), name
    washed = assess(frames["washed-out"])
    assert not washed.gradable and washed.reason_text().startswith("overexposed: 100% of the field of view is washed")
    blank = assess(Image.new("RGB", (200, 150), (255, 255, 255)))
    assert not blank.gradable and not blank.fov_found and "bright all over and blank" in blank.reason_text()


def test_predict_grades_none_of_the_frames_that_fill_it_but_the_fundus(model_file: Path, tmp_path: Path) -> None:
    folder = tmp_path / "filled"
    folder.mkdir()
    for name, frame in _frames_that_fill().items():
        frame.save(folder / f"{name}.png")
    out = tmp_path / "grades.csv"
    assert main(["predict", str(model_file), str(folder), "--out", str(out), "--device", "cpu"]) == 1
    frame = pd.read_csv(out, keep_default_na=False, dtype={"grade": str}).set_index("image")
    graded = {Path(image).stem for image, row in frame.iterrows() if row["grade"] != ""}
    assert graded == {"retina"} and len(frame) == 4
