"""Decoding photographs of every mode to upright 8-bit RGB, and rejecting frames without a field of view or with too
many pixels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
from PIL import ExifTags, Image, ImageDraw

from retinopathy import images, preprocessing
from retinopathy.data import load_rgb
from retinopathy.fundus import find_fov
from retinopathy.images import TooManyPixelsError, open_rgb, to_rgb
from retinopathy.preprocessing import CropSettings, build_processed_set, process_image
from retinopathy.sources import read_course
from retinopathy.synthetic import render_fundus

# A disc in a landscape frame with a black border on every side, like most fundus cameras.
WIDTH, HEIGHT, CX, CY, R = 96, 72, 48, 36, 28


def _disc_mask() -> np.ndarray:
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    return (xx + 0.5 - CX) ** 2 + (yy + 0.5 - CY) ** 2 <= R**2


def _sideways_jpeg(path: Path, width: int, height: int) -> Path:
    """A black JPEG with a white block in its stored top-left corner, tagged "rotate 90 degrees clockwise to view"."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[: height // 3, : width // 4] = 255
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    Image.fromarray(pixels).save(path, format="JPEG", quality=95, exif=exif)
    return path


def _assert_block_top_right(image: Image.Image) -> None:
    """The stored top-left block, turned clockwise: a third of the width, a quarter of the height, top right."""
    gray = np.asarray(image.convert("L"), dtype=float)
    block_w, block_h = image.width // 3 - 2, image.height // 4 - 2  # 2 px in, off the JPEG-blurred edge
    assert gray[:block_h, -block_w:].mean() > 200
    assert gray[:block_h, :block_w].mean() < 30  # top left, where an unturned image has it
    assert gray[-block_h:, -block_w:].mean() < 30


def test_exif_orientation_6_turns_a_sideways_jpeg_upright(tmp_path: Path) -> None:
    src = _sideways_jpeg(tmp_path / "1_left.jpeg", 96, 48)
    image, reduced = open_rgb(src)
    assert image.size == (48, 96) and not reduced
    _assert_block_top_right(image)
    assert load_rgb(src).size == (48, 96)


def test_exif_orientation_is_applied_after_reduced_scale_decoding(tmp_path: Path) -> None:
    src = _sideways_jpeg(tmp_path / "1_left.jpeg", 800, 400)
    image, reduced = open_rgb(src, draft_side=100)
    assert reduced and image.size == (100, 200)
    _assert_block_top_right(image)


@pytest.mark.parametrize("level", [15000, 60000])
def test_16bit_grayscale_png_is_a_grey_disc_scaled_by_bit_depth_not_a_white_one(tmp_path: Path, level: int) -> None:
    src = tmp_path / "1_left.png"
    Image.fromarray(np.where(_disc_mask(), level, 0).astype(np.uint16)).save(src)
    with Image.open(src) as raw:
        assert raw.mode in ("I;16", "I")  # the case that convert("RGB") clips to white
    image, _ = open_rgb(src)
    inside = np.asarray(image, dtype=float)[_disc_mask()]
    assert inside.mean() == pytest.approx(level / 257, abs=1.0)
    fov = find_fov(image)
    assert (fov.cx, fov.cy, fov.radius) == pytest.approx((CX - 0.5, CY - 0.5, R), abs=1.5)
    out = process_image(src, tmp_path / "out.png", CropSettings(size=32))
    assert out.kind is None
    centre = np.asarray(Image.open(tmp_path / "out.png"), dtype=float)[8:24, 8:24]
    assert centre.mean() == pytest.approx(level / 257, abs=2.0)


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [("I;16", 30000, 117), ("I;16B", 30000, 117), ("I", 30000, 117), ("I", 200, 200), ("F", 0.5, 128),
     ("F", 30000.0, 117)],
)
def test_deep_modes_are_scaled_by_their_range_never_clipped(mode: str, value: float, expected: int) -> None:
    values = np.array([[0, value], [value, 0]])
    if mode.startswith("I;16"):
        dtype = ">u2" if mode == "I;16B" else "<u2"
        image = Image.frombytes(mode, (2, 2), values.astype(dtype).tobytes())
    else:
        image = Image.fromarray(values.astype(np.float32 if mode == "F" else np.int32))
    assert image.mode == mode
    rgb = np.asarray(to_rgb(image))
    assert rgb[0, 1].tolist() == [expected] * 3 and rgb[0, 0].tolist() == [0, 0, 0]


def _white_transparent_around_disc() -> Image.Image:
    image = Image.new("RGBA", (WIDTH, HEIGHT), (255, 255, 255, 0))
    ImageDraw.Draw(image).ellipse((CX - R, CY - R, CX + R, CY + R), fill=(180, 80, 30, 255))
    return image


@pytest.mark.parametrize("mode", ["RGBA", "LA", "PA", "P", "P-tRNS", "RGBa", "La"])
def test_transparent_white_is_composited_on_black(tmp_path: Path, mode: str) -> None:
    base = "P" if mode == "P-tRNS" else mode
    image = _white_transparent_around_disc()
    image = image.convert("LA").convert(base) if base in ("LA", "La") else image.convert(base)
    if mode == "P-tRNS":  # a palette PNG marks transparent colours in a tRNS chunk, read into info
        image.save(tmp_path / "p.png")
        image = Image.open(tmp_path / "p.png")
        assert "transparency" in image.info
    assert image.mode == base
    rgb = np.asarray(to_rgb(image))
    assert rgb[0, 0].tolist() == [0, 0, 0]
    assert rgb[CY, CX].min() > 20  # the opaque disc keeps its colour


def test_rgba_with_white_transparent_background_has_the_disc_as_field_of_view(tmp_path: Path) -> None:
    src = tmp_path / "1_left.png"
    _white_transparent_around_disc().save(src)
    image, _ = open_rgb(src)
    fov = find_fov(image)
    assert (fov.cx, fov.cy, fov.radius) == pytest.approx((CX, CY, R), abs=1.5)
    assert process_image(src, tmp_path / "out.png", CropSettings(size=32)).kind is None
    out = np.asarray(Image.open(tmp_path / "out.png").convert("L"))
    assert out[0, 0] < 20 and out[16, 16] > 60  # black corner of the crop, the disc in its middle


@pytest.mark.parametrize(
    "fill", [(255, 255, 255), (0, 0, 0), (200, 190, 180)], ids=["white", "black", "uniformly-bright"]
)
def test_frame_without_field_of_view_is_a_bad_image_and_leaves_no_output(
    tmp_path: Path, fill: tuple[int, int, int]
) -> None:
    src, dst = tmp_path / "7_right.png", tmp_path / "out.png"
    Image.new("RGB", (WIDTH, HEIGHT), fill).save(src)
    dst.write_bytes(b"stale output of an earlier run")
    out = process_image(src, dst, CropSettings(size=32))
    assert out.kind == "unreadable" and out.sums is None
    assert "7_right.png" in out.message and "no field of view found" in out.message
    assert not dst.exists()


@pytest.mark.parametrize("seed", range(4))
def test_synthetic_fundus_photographs_still_have_a_field_of_view(tmp_path: Path, seed: int) -> None:
    src = tmp_path / "1_left.png"
    render_fundus(seed % 5, np.random.default_rng(seed), size=64).save(src)
    out = process_image(src, tmp_path / "out.png", CropSettings(size=32))
    assert out.kind is None, out.message
    assert Image.open(tmp_path / "out.png").size == (32, 32)


def test_precropped_square_disc_with_black_corners_still_has_a_field_of_view(tmp_path: Path) -> None:
    src = tmp_path / "1_left.png"
    square = Image.new("RGB", (64, 64))
    ImageDraw.Draw(square).ellipse((0, 0, 63, 63), fill=(180, 80, 30))
    square.save(src)
    assert process_image(src, tmp_path / "out.png", CropSettings(size=32)).kind is None
    out = np.asarray(Image.open(tmp_path / "out.png").convert("L"), dtype=float)
    assert out[0, 0] < 20 and out[16, 16] > 60 and out[16, 1] > 60  # the disc spans the crop, corners stay black


def test_missing_and_truncated_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="image not found: .*gone.png"):
        open_rgb(tmp_path / "gone.png")
    whole = tmp_path / "whole.png"
    _white_transparent_around_disc().save(whole)
    (tmp_path / "cut.png").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(ValueError, match="corrupt or unreadable image .*cut.png"):
        open_rgb(tmp_path / "cut.png")


@pytest.mark.parametrize(
    ("width", "height"), [(20000, 10000), (10050, 10000)], ids=["twice-the-limit", "just-over-the-limit"]
)
def test_tiny_png_whose_header_claims_a_huge_image_is_refused_before_decoding(
    tmp_path: Path, png_claiming: Callable[[Path, int, int], Path], width: int, height: int
) -> None:
    bomb = png_claiming(tmp_path / "bomb.png", width, height)
    assert bomb.stat().st_size < 100
    with pytest.raises(TooManyPixelsError,
                       match=r"bomb\.png is too large to decode: .*exceeds limit of 100000000 pixels"):
        open_rgb(bomb)
    dst = tmp_path / "out.png"
    out = process_image(bomb, dst, CropSettings(size=32))
    assert out.kind == "unreadable" and "bomb.png" in out.message and "too large" in out.message
    assert not dst.exists()


def test_pixel_limit_is_ours_even_where_pils_own_guard_is_switched_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    monkeypatch.setattr(images, "MAX_PIXELS", 64 * 64)
    Image.new("RGB", (64, 64), (90, 40, 10)).save(tmp_path / "at_limit.png")
    Image.new("RGB", (65, 64), (90, 40, 10)).save(tmp_path / "over_limit.png")
    assert open_rgb(tmp_path / "at_limit.png")[0].size == (64, 64)
    with pytest.raises(TooManyPixelsError,
                       match=r"over_limit\.png .*65 x 64 = 4,160 pixels, more than the limit of 4,096"):
        open_rgb(tmp_path / "over_limit.png")


def test_any_exception_while_cropping_one_image_makes_it_a_bad_image(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "1_left.png"
    render_fundus(1, np.random.default_rng(0), size=64).save(src)

    def broken_decoder(path: Path, *, draft_side: int | None = None) -> tuple[Image.Image, bool]:
        raise MemoryError("cannot allocate the frame")

    monkeypatch.setattr(preprocessing, "open_rgb", broken_decoder)
    out = process_image(src, tmp_path / "out.png", CropSettings(size=32))
    assert out.kind == "unreadable"
    assert out.message == f"{src}: MemoryError: cannot allocate the frame"


def test_an_output_that_cannot_be_written_stops_naming_it_instead_of_blaming_the_photograph(tmp_path: Path) -> None:
    src = tmp_path / "1_left.png"
    render_fundus(1, np.random.default_rng(0), size=64).save(src)
    (tmp_path / "clinicB").write_text("a file where the output's folder should be\n")
    with pytest.raises(OSError, match=r"cannot write the processed image .*clinicB/10_left\.png"):
        process_image(src, tmp_path / "clinicB" / "10_left.png", CropSettings(size=32))
    # a missing folder is made
    assert process_image(src, tmp_path / "clinicA" / "10_left.png", CropSettings(size=32)).kind is None
    assert Image.open(tmp_path / "clinicA" / "10_left.png").size == (32, 32)


def test_preprocess_lists_a_decompression_bomb_among_its_bad_images(
    raw_dir: Path, tmp_path: Path, png_claiming: Callable[[Path, int, int], Path]
) -> None:
    tables = read_course(raw_dir)
    train = tables["train"].copy()
    bomb = png_claiming(tmp_path / "bomb.png", 20000, 10000)
    train.loc[0, "path"] = str(bomb)
    name = train.loc[0, "image"]
    report = tmp_path / "report.json"
    counts = build_processed_set(
        {**tables, "train": train}, out_dir=tmp_path / "processed", balance_path=tmp_path / "balance.json",
        settings=CropSettings(size=16), val_fraction=0.25, seed=0, workers=1, on_bad_image="skip", report_path=report,
    )
    bad = json.loads(report.read_text())["bad_images"]
    assert [(b["image"], b["kind"]) for b in bad] == [(name, "unreadable")]
    assert "bomb.png" in bad[0]["message"] and "too large" in bad[0]["message"]
    assert counts["train"] + counts["val"] == len(train) - 1
    assert name not in set(pd.read_csv(tmp_path / "processed" / "train.csv", dtype=str)["image"])
