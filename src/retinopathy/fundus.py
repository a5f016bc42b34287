"""Fundus-specific image preprocessing: find the circular field of view, crop it square, resize.

Cameras frame the circle differently: whole inside a black border, cut at the top and bottom, cut at
all four sides (only the corners black), off-centre, or filling the frame with no black at all. The
circle is fitted to the edge of the bright region where that edge lies inside the frame; a frame with
no such edge is its own field of view. The crop is centred on the circle and padded with black where
the circle leaves the frame, so the eye is never squashed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter


@dataclass(frozen=True)
class FieldOfView:
    """A circle in pixel coordinates of the original image (the centre of pixel (0, 0) at (0, 0))."""

    cx: float
    cy: float
    radius: float


# The circle is fitted on the brightness mask reduced by a whole factor so that its shorter side is at least this
# many pixels (a 3000 x 2000 frame by 7, to 429 x 286): each edge point is then within half a reduced pixel,
# 0.35% of a 1000-px radius, and the fit over hundreds of points far closer, while the fit costs the same at every
# camera resolution.
WORK_SIDE = 256
# Fewer edge points inside the frame than this: the bright region reaches the frame's edge all round, so the
# frame is the field of view (or, where the region is small, it is a speck). A circle of radius 4 px has ~30.
MIN_BOUNDARY_POINTS = 16
# With this share of the edge points on the least-squares circle of all of them, nothing pulls that circle off the
# edge (a whole circle has ~100%, the real photograph's soft rim 97%), and it is the fit's start.
CLEAN_SHARE = 0.95
# Otherwise the fit starts from the circle with the most edge points on it among this many through random triples
# of edge points: with half of the points on the circle (the fewest a field of view has, MIN_PARTIAL_SHARE), 1 in
# 8 triples lies on it, and 256 all miss it with a chance of 1 in 10^14 (with a third, 1 in 15,000). The start is
# refitted (Kasa) to the points on it REFITS times.
CANDIDATES = 256
REFITS = 3
# An edge point within this share of the radius (or TOLERANCE_PX reduced pixels plus one pixel, whichever is
# more) of the fitted circle lies on it: a drawn or JPEG-compressed circle's edge stays within ~1 px, and the real
# photograph's soft rim puts 97% of its edge points within 2% of the radius.
INLIER_TOLERANCE = 0.02
TOLERANCE_PX = 1.0
# At least this share of the edge points must lie on the fitted circle, or MIN_PARTIAL_SHARE of them with at most
# MAX_OUTSIDE_SHARE beyond it: the rest of the edge is then inside the circle, where a lid's or lashes' shadow hides
# part of the rim. A whole circle has ~100% on it (81-88% with a label in its border or a bright banner across the
# top of the frame); a lid's shadow over the upper half of the disc leaves 53-69% on it and none beyond it. A
# rectangle (a white card or square), a strip (a ruler) or half the frame bright on black has 4-46% on the best
# circle, an ellipse of axes 3:2 43%.
MIN_INLIER_SHARE = 0.75
MIN_PARTIAL_SHARE = 0.5
MAX_OUTSIDE_SHARE = 0.1
# A field of view's radius is at least this share of the frame's shorter side and at least MIN_RADIUS_PX: a circle
# a tenth of the frame's height across is no camera's framing of the retina (cameras fill most of the height with
# it; the embedded set's fill 82-115%), but a bright speck, a reflection or an LED is.
MIN_RADIUS_SHARE = 0.05
MIN_RADIUS_PX = 4.0
# Edge points whose directions from the centre average to a vector longer than this (the mean resultant length:
# 0.90 for an arc of a quarter of the circle, 0 for a whole circle or four corner arcs) span too little of the
# circle to place it: only a corner of a frame that the retina fills is dark.
MAX_ARC_RESULTANT = 0.9
# A frame whose edge locates no circle is its own field of view when at least this share of it is bright.
MIN_FILL_SHARE = 0.5
# A frame that is bright all over must vary in brightness (standard deviation of the grey level, 0-255) by at
# least this much to be a photograph: a blank, white or washed-out frame varies by its noise alone, under ~2
# levels; a fundus photograph by its shading and vessels (the inner square of the real one's circle by 12-17 levels,
# of the synthetic ones' by at least 10).
MIN_FRAME_SPREAD = 3.0


def find_fov(image: Image.Image, *, threshold: int = 20) -> FieldOfView:
    """Locate the circular field of view: a circle fitted to the edge of the pixels brighter than ``threshold``.

    The edge points are the first and last bright pixel of every row and every column of the mask (at half a
    pixel outside the pixel's centre), except those on the frame's edge, where the circle leaves the frame: the
    circle may be whole, cut at the top and bottom or at all four sides, or off-centre. The mask is reduced to
    :data:`WORK_SIDE` pixels (a reduced pixel is bright when over half of it is) and opened with a 3 x 3 square,
    so JPEG noise and stray bright pixels in the border leave no edge points. The least-squares (Kasa) circle of
    all points, or where under :data:`CLEAN_SHARE` of them lie on it the one with the most points on it of the
    circles through :data:`CANDIDATES` random triples of them, is refitted to the points on it: a label or glare
    in the border, or a lid's shadow across part of the disc, leaves the circle where the rest of its edge is.

    A frame whose bright region reaches its edge all round (no edge points inside the frame), or whose edge is
    an arc too short to place a circle (:data:`MAX_ARC_RESULTANT`: only a corner is dark), is filled by the
    retina: the field of view is the frame itself, centred on it with half its longer side as the radius
    (:func:`crop_square` pads the shorter side with black).

    Raises:
        ValueError: with a message starting "no field of view found", if no pixel is brighter than
            ``threshold`` (an all-black image); the bright pixels are specks or thin lines; the edge of the
            bright region is not a circle (:data:`MIN_INLIER_SHARE`: a rectangle, a strip); the circle is too
            small (:data:`MIN_RADIUS_SHARE`) or centred outside the frame; the frame is mostly bright outside
            it (:data:`MAX_BRIGHT_OUTSIDE`); or a frame with no circle is too little bright
            (:data:`MIN_FILL_SHARE`) or bright all over without its brightness varying (:data:`MIN_FRAME_SPREAD`:
            a blank or washed-out frame).
    """
    gray = image.convert("L")
    mask = gray.point([255 if v > threshold else 0 for v in range(256)])
    if mask.getbbox() is None:
        raise ValueError(f"no field of view found: every pixel is at or below brightness {threshold}")
    work, step = _working_mask(mask)
    if not work.any():
        raise ValueError(f"no field of view found: the pixels brighter than {threshold} form no region "
                         f"{3 * step} px wide (specks or thin lines only)")
    points = _edge_points(work, step, mask.size)
    if len(points) < MIN_BOUNDARY_POINTS:
        return _frame_fov(gray, work, f"the bright region's edge has {len(points)} points inside the frame")
    fov, inliers = _robust_circle(points, step, mask.size)
    problem = _edge_problem(points, inliers, fov)
    if problem is None and _arc_resultant(points[inliers], fov) > MAX_ARC_RESULTANT:
        if inliers.mean() >= MIN_INLIER_SHARE:  # only a corner of the frame is dark: the retina fills it
            return _frame_fov(gray, work, "the edge of the bright region is too short an arc to place a circle")
        problem = "the edge of the bright region follows too short an arc of a circle to place it"
    problem = problem or _circle_problem(fov, mask.size) or _outside_problem(work, step, fov, mask.size, threshold)
    if problem:
        raise ValueError(f"no field of view found: {problem}")
    return fov


def _working_mask(mask: Image.Image) -> tuple[np.ndarray, int]:
    """``mask`` (0 or 255) reduced by a whole factor to about :data:`WORK_SIDE` px on its shorter side, a reduced
    pixel bright when over half of it is, and opened with a 3 x 3 square; the boolean array and the factor."""
    step = max(1, min(mask.size) // WORK_SIDE)
    if step > 1:
        mask = mask.reduce(step)
    work = np.asarray(mask) > 127
    return _dilate(_erode(work)), step


def _erode(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` whose 3 x 3 neighbourhood is all in it, the frame's edge pixels repeated beyond it (a
    region that touches the frame's edge still does)."""
    padded = np.pad(mask, 1, mode="edge")
    rows = padded[:-2] & padded[1:-1] & padded[2:]
    return rows[:, :-2] & rows[:, 1:-1] & rows[:, 2:]


def _dilate(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` or next to one (3 x 3)."""
    padded = np.pad(mask, 1, mode="constant")
    rows = padded[:-2] | padded[1:-1] | padded[2:]
    return rows[:, :-2] | rows[:, 1:-1] | rows[:, 2:]


def _pixel_spans(count: int, step: int, side: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each of ``count`` reduced pixels along a frame's ``side`` (reduced by ``step``): the frame coordinate of
    its outer side towards 0, of its outer side away from 0, and of its centre."""
    start = np.arange(count) * step
    stop = np.minimum(start + step, side)
    return start - 0.5, stop - 0.5, (start + stop - 1) / 2.0


def _edge_points(work: np.ndarray, step: int, size: tuple[int, int]) -> np.ndarray:
    """The (x, y) edge points of the bright region of ``work`` (reduced by ``step`` from a ``size`` frame), in
    pixels of the frame: per row the outer side of its first and last bright pixel, per column likewise, leaving
    out pixels on the frame's edge (where the region leaves the frame)."""
    x_lo, x_hi, x_mid = _pixel_spans(work.shape[1], step, size[0])
    y_lo, y_hi, y_mid = _pixel_spans(work.shape[0], step, size[1])
    points = []
    for mask, lo, hi, mid, columns in ((work, x_lo, x_hi, y_mid, False), (work.T, y_lo, y_hi, x_mid, True)):
        lines = np.flatnonzero(mask.any(axis=1))
        n = mask.shape[1]
        first = mask[lines].argmax(axis=1)
        last = n - 1 - mask[lines, ::-1].argmax(axis=1)
        for ends, edges, inside in ((first, lo, first > 0), (last, hi, last < n - 1)):
            pair = np.column_stack([edges[ends[inside]], mid[lines[inside]]])
            points.append(pair[:, ::-1] if columns else pair)
    return np.concatenate(points)


def _kasa(points: np.ndarray) -> FieldOfView:
    """The algebraic least-squares circle through (x, y) ``points``: ``x^2 + y^2 + a x + b y + c = 0``."""
    mean = points.mean(axis=0)
    u, v = (points - mean).T  # centred, for a well-conditioned system
    design = np.column_stack([u, v, np.ones_like(u)])
    (a, b, c), *_ = np.linalg.lstsq(design, u * u + v * v, rcond=None)
    return FieldOfView(cx=float(mean[0] + a / 2), cy=float(mean[1] + b / 2),
                       radius=float(np.sqrt(max(c + a * a / 4 + b * b / 4, 0.0))))


def _residuals(points: np.ndarray, fov: FieldOfView) -> np.ndarray:
    """Each point's distance from the circle ``fov`` (pixels)."""
    return np.abs(np.hypot(points[:, 0] - fov.cx, points[:, 1] - fov.cy) - fov.radius)


def _circles_through(first: np.ndarray, second: np.ndarray, third: np.ndarray) -> np.ndarray:
    """The (cx, cy, radius) rows of the circles through each triple of (x, y) rows (NaN for collinear ones)."""
    (ax, ay), (bx, by), (qx, qy) = first.T, second.T, third.T
    det = 2.0 * (ax * (by - qy) + bx * (qy - ay) + qx * (ay - by))
    a2, b2, q2 = ax * ax + ay * ay, bx * bx + by * by, qx * qx + qy * qy
    with np.errstate(divide="ignore", invalid="ignore"):
        cx = (a2 * (by - qy) + b2 * (qy - ay) + q2 * (ay - by)) / det
        cy = (a2 * (qx - bx) + b2 * (ax - qx) + q2 * (bx - ax)) / det
    return np.column_stack([cx, cy, np.hypot(ax - cx, ay - cy)])


def _candidate_circles(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(cx, cy, radius) rows of the circles through :data:`CANDIDATES` random triples of ``points`` (a fixed seed),
    with a radius from :data:`MIN_RADIUS_PX` to the ``size`` frame's diagonal: the near-straight edges of a strip or
    a card make huge circles, whose bands (:data:`INLIER_TOLERANCE` of the radius) would be wide enough to hold
    both sides of a strip."""
    picks = np.random.default_rng(0).integers(0, len(points), size=(CANDIDATES, 3))
    circles = _circles_through(points[picks[:, 0]], points[picks[:, 1]], points[picks[:, 2]])
    with np.errstate(invalid="ignore"):
        usable = (circles[:, 2] >= MIN_RADIUS_PX) & (circles[:, 2] <= np.hypot(*size))
    return circles[usable]


def _most_supported(points: np.ndarray, circles: np.ndarray, floor: float) -> FieldOfView | None:
    """The circle of ``circles`` ((cx, cy, radius) rows) with the most of ``points`` within :data:`INLIER_TOLERANCE`
    of its radius (at least ``floor`` px), or None when there is none."""
    if not len(circles):
        return None
    sample = points[:: -(-len(points) // 256)]  # 256 points or fewer rank the candidates as well as all of them
    squared = (sample[None, :, 0] - circles[:, :1]) ** 2 + (sample[None, :, 1] - circles[:, 1:2]) ** 2
    band = np.maximum(INLIER_TOLERANCE * circles[:, 2:], floor)
    low = np.maximum(circles[:, 2:] - band, 0.0)
    scores = ((squared >= low * low) & (squared <= (circles[:, 2:] + band) ** 2)).sum(axis=1)
    cx, cy, radius = circles[int(np.argmax(scores))]
    return FieldOfView(cx=float(cx), cy=float(cy), radius=float(radius))


def _robust_circle(points: np.ndarray, step: int, size: tuple[int, int]) -> tuple[FieldOfView, np.ndarray]:
    """The circle that most of ``points`` (edge points of a ``size`` frame reduced by ``step``) lie on, and which
    of them lie on it (within :data:`INLIER_TOLERANCE` of its radius, at least ``TOLERANCE_PX * step + 1`` px).

    The least-squares (Kasa) circle of all points, or, where under :data:`CLEAN_SHARE` of them lie on it, the
    candidate circle (:func:`_candidate_circles`) with the most points on it, is refitted to the points on it
    until they stay the same (at most :data:`REFITS` times): a label or glare in the border, or a lid's shadow
    across the disc, leaves the circle where the rest of its edge is.
    """
    floor = TOLERANCE_PX * step + 1.0

    def on(fov: FieldOfView) -> np.ndarray:
        return _residuals(points, fov) <= max(INLIER_TOLERANCE * fov.radius, floor)

    fov = _kasa(points)
    if on(fov).mean() < CLEAN_SHARE:
        fov = _most_supported(points, _candidate_circles(points, size), floor) or fov
    near = on(fov)
    for _ in range(REFITS):
        if near.sum() < MIN_BOUNDARY_POINTS:
            break
        fov = _kasa(points[near])
        near, before = on(fov), near
        if np.array_equal(near, before):  # the same points: the same circle again
            break
    return fov, near


def _arc_resultant(points: np.ndarray, fov: FieldOfView) -> float:
    """The length of the mean of the unit vectors from the centre of ``fov`` to ``points``: 0 when they surround
    it, 1 when they lie in one direction."""
    angles = np.arctan2(points[:, 1] - fov.cy, points[:, 0] - fov.cx)
    return float(np.hypot(np.cos(angles).mean(), np.sin(angles).mean()))


def _edge_problem(points: np.ndarray, inliers: np.ndarray, fov: FieldOfView) -> str | None:
    """Why the edge ``points`` (``inliers`` on the circle ``fov`` fitted to them) are not a circle's, or None."""
    share = float(inliers.mean())
    beyond = float((~inliers & (np.hypot(points[:, 0] - fov.cx, points[:, 1] - fov.cy) > fov.radius)).mean())
    if share >= MIN_INLIER_SHARE or (share >= MIN_PARTIAL_SHARE and beyond <= MAX_OUTSIDE_SHARE):
        return None
    return (f"the edge of the bright region is not a circle: {share:.0%} of its points lie within "
            f"{INLIER_TOLERANCE:.0%} of the radius of the best-fitting circle and {beyond:.0%} beyond it (a field "
            f"of view has at least {MIN_INLIER_SHARE:.0%} on it, or {MIN_PARTIAL_SHARE:.0%} with at most "
            f"{MAX_OUTSIDE_SHARE:.0%} beyond)")


def _circle_problem(fov: FieldOfView, size: tuple[int, int]) -> str | None:
    """Why the circle ``fov`` is no field of view of a ``size`` frame (too small, centred outside it), or None."""
    width, height = size
    least = max(MIN_RADIUS_PX, MIN_RADIUS_SHARE * min(width, height))
    if fov.radius < least:
        return (f"the bright circle (radius {fov.radius:.1f} px) is too small for the field of view of the "
                f"{width}x{height} frame (at least {least:.1f} px)")
    if not (-0.5 <= fov.cx <= width - 0.5 and -0.5 <= fov.cy <= height - 0.5):
        return (f"the circle fitted to the edge of the bright region is centred at ({fov.cx:.0f}, {fov.cy:.0f}), "
                f"outside the {width}x{height} frame")
    return None


def _frame_fov(gray: Image.Image, work: np.ndarray, why: str) -> FieldOfView:
    """The frame itself as the field of view of a frame the retina fills (centred, radius half the longer side).

    Raises:
        ValueError: ("no field of view found: ``why``, ..."), when under :data:`MIN_FILL_SHARE` of ``work``
            (the working mask) is bright, or the grey frame ``gray`` varies by under :data:`MIN_FRAME_SPREAD`.
    """
    width, height = gray.size
    share = float(work.mean())
    if share < MIN_FILL_SHARE:
        raise ValueError(f"no field of view found: {why}, and it covers {share:.0%} of the {width}x{height} frame "
                         f"(a frame the retina fills is at least {MIN_FILL_SHARE:.0%} bright): too small or no "
                         "circle")
    # ~256 x 256 samples measure the spread as well as every pixel does.
    step = max(1, min(width, height) // 256)
    spread = float(np.asarray(gray, dtype=np.float32)[::step, ::step].std())
    if spread < MIN_FRAME_SPREAD:
        raise ValueError(f"no field of view found: the {width}x{height} frame is bright all over and blank (its "
                         f"brightness varies by {spread:.1f} levels, a photograph's by at least "
                         f"{MIN_FRAME_SPREAD:.0f})")
    return FieldOfView(cx=(width - 1) / 2.0, cy=(height - 1) / 2.0, radius=max(width, height) / 2.0)


# Beyond the circle by this fraction of its radius (at least 2 px), a pixel is outside: the anti-aliased
# or JPEG-blurred rim and a fit that is off by a pixel stay inside.
OUTSIDE_MARGIN = 0.03
# A field of view is dark outside; a stray label or glare in the border stays far below half.
MAX_BRIGHT_OUTSIDE = 0.5


def _outside_problem(
    work: np.ndarray, step: int, fov: FieldOfView, size: tuple[int, int], threshold: int
) -> str | None:
    """Why ``fov`` is no field of view of a ``size`` frame whose working mask (:func:`_working_mask`, reduced by
    ``step``) is ``work``: the frame is mostly bright outside it; None if it is one, or if too little of the frame
    lies outside it to tell."""
    # The working mask's ~256 rows measure a share as well as every pixel does.
    xs = _pixel_spans(work.shape[1], step, size[0])[2][None, :]
    ys = _pixel_spans(work.shape[0], step, size[1])[2][:, None]
    reach = fov.radius + max(2.0, OUTSIDE_MARGIN * fov.radius)
    outside = (xs - fov.cx) ** 2 + (ys - fov.cy) ** 2 > reach**2
    if outside.sum() < 4:
        return None
    bright = float(work[outside].mean())
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
