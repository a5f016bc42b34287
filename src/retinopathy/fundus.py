"""Fundus-specific image preprocessing: find the circular field of view, crop it square, resize.

Camera images differ in size and black border, and the circle is sometimes cut off at the top
and bottom. The crop is centred on the circle and padded with black where the circle leaves the
frame, so the eye is never squashed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter


@dataclass(frozen=True)
class FieldOfView:
    """A circle in pixel coordinates of the original image."""

    cx: float
    cy: float
    radius: float


def find_fov(image: Image.Image, *, threshold: int = 20) -> FieldOfView:
    """Locate the circular field of view by thresholding brightness.

    The horizontal extent of the bright mask gives the diameter (cameras cut the circle at the
    top and bottom, not the sides). The centre row comes from the chord lengths at the top and
    bottom of the mask: a chord of half-width ``w`` lies ``sqrt(r^2 - w^2)`` from the centre, which
    also holds for an uncut circle, whose end chords are near zero.

    A column or row counts as inside the field of view only when at least 1% of its pixels are
    bright, so JPEG noise or a stray bright pixel in the black border does not widen the circle;
    near the circle's edge a chord is ``2 * sqrt(2 * r * d)`` pixels long ``d`` pixels in, so the
    extent moves by well under a pixel.

    A field of view is dark outside: when more than half of the frame's pixels outside the fitted
    circle are bright (an all-white or uniformly bright frame, a photograph of something else), or
    the circle leaves too little of the frame outside it to tell, there is no field of view, and
    cropping the whole frame would feed training a picture that is not a fundus.

    Raises:
        ValueError: if no pixel is brighter than ``threshold`` (an all-black image), or the frame
            is not dark outside the fitted circle; the message starts "no field of view found".
    """
    gray = np.asarray(image.convert("L"), dtype=np.uint8)
    mask = gray > threshold
    height, width = mask.shape
    cols = np.flatnonzero(mask.sum(axis=0) >= max(1, height // 100))
    rows = np.flatnonzero(mask.sum(axis=1) >= max(1, width // 100))
    if cols.size == 0 or rows.size == 0:
        raise ValueError(f"no field of view found: every pixel is at or below brightness {threshold}")
    x0, x1 = cols[0], cols[-1]
    radius = (x1 - x0 + 1) / 2.0
    cx = (x0 + x1) / 2.0
    estimates = []
    # A few rows in from each end, to step over JPEG noise on the first bright row.
    inset = max(1, int(0.02 * radius))
    for row, sign in ((min(rows[0] + inset, rows[-1]), 1.0), (max(rows[-1] - inset, rows[0]), -1.0)):
        line = np.flatnonzero(mask[row, x0 : x1 + 1])
        half_chord = (line[-1] - line[0] + 1) / 2.0 if line.size else 0.0
        offset = np.sqrt(max(radius**2 - half_chord**2, 0.0))
        estimates.append(row + sign * offset)
    fov = FieldOfView(cx=float(cx), cy=float(np.mean(estimates)), radius=float(radius))
    problem = _outside_problem(mask, fov, threshold)
    if problem:
        raise ValueError(f"no field of view found: {problem}")
    return fov


# Beyond the circle by this fraction of its radius (at least 2 px), a pixel is outside: the anti-aliased
# or JPEG-blurred rim and a fit that is off by a pixel stay inside.
OUTSIDE_MARGIN = 0.03
# A field of view is dark outside; a stray label or glare in the border stays far below half.
MAX_BRIGHT_OUTSIDE = 0.5
# With fewer outside pixels than this share of the frame, nothing shows that the circle has a dark border.
# A circle as wide as the frame, cut at top and bottom to a 2:1 strip, still leaves ~2.4% (a 2.4:1 strip ~1.2%).
MIN_OUTSIDE_SHARE = 0.005


def _outside_problem(mask: np.ndarray, fov: FieldOfView, threshold: int) -> str | None:
    """Why ``fov`` is no field of view of ``mask`` (the pixels brighter than ``threshold``), or None if it is."""
    height, width = mask.shape
    # A grid of ~256 rows measures a share as well as every pixel does, and keeps camera-sized frames cheap.
    step = max(1, min(height, width) // 256)
    ys = np.arange(0, height, step, dtype=np.float64)[:, None]
    xs = np.arange(0, width, step, dtype=np.float64)[None, :]
    reach = fov.radius + max(2.0, OUTSIDE_MARGIN * fov.radius)
    outside = (xs - fov.cx) ** 2 + (ys - fov.cy) ** 2 > reach**2
    count = int(outside.sum())
    if count < max(4, MIN_OUTSIDE_SHARE * outside.size):
        return (
            f"the fitted circle (radius {fov.radius:.0f} px) fills the {width}x{height} frame, "
            "leaving no dark border to show it is a fundus"
        )
    bright = float(mask[::step, ::step][outside].mean())
    if bright > MAX_BRIGHT_OUTSIDE:
        return (
            f"{bright:.0%} of the frame outside the fitted circle (radius {fov.radius:.0f} px) is brighter than "
            f"{threshold}, where a fundus photograph is black"
        )
    return None


def crop_square(image: Image.Image, fov: FieldOfView, size: int) -> Image.Image:
    """Square crop around ``fov`` (black padding where the circle leaves the frame), resized to ``size``."""
    r = fov.radius
    box = (round(fov.cx - r), round(fov.cy - r), round(fov.cx + r), round(fov.cy + r))
    # PIL fills the part of the box outside the image with black.
    square = image.crop(box)
    # reduce() first keeps large camera images cheap to resample; LANCZOS then antialiases.
    factor = max(1, square.width // (2 * size))
    if factor > 1:
        square = square.reduce(factor)
    return square.resize((size, size), Image.Resampling.LANCZOS)


def crop_to_fov(image: Image.Image, size: int, *, threshold: int = 20) -> Image.Image:
    """Square crop around the field of view (black padding where it is cut off), resized to ``size``."""
    image = image.convert("RGB")
    return crop_square(image, find_fov(image, threshold=threshold), size)


def local_average_subtraction(image: Image.Image, *, sigma_fraction: float = 1 / 30) -> Image.Image:
    """Kaggle-2015-winner contrast step: ``4 * (img - gaussian_blur(img)) + 128``, outside the circle black.

    ``sigma_fraction`` is the blur scale as a fraction of the image width.
    """
    arr = np.asarray(image.convert("RGB"), dtype=np.float32)
    blurred = np.asarray(image.filter(ImageFilter.GaussianBlur(radius=sigma_fraction * image.width)), dtype=np.float32)
    out = np.clip(4.0 * (arr - blurred) + 128.0, 0, 255)
    h, w = out.shape[:2]
    yy, xx = np.mgrid[:h, :w]
    outside = (xx - (w - 1) / 2) ** 2 + (yy - (h - 1) / 2) ** 2 > (0.95 * w / 2) ** 2
    out[outside] = 0
    return Image.fromarray(out.astype(np.uint8))
