"""Gradability: is a photograph a fundus photograph a grader could grade, and if not, why not.

Screening systems answer "ungradable" rather than guess (IDx-DR reports 96.1% imageability and gives
the operator image-quality feedback; EyeArt returns "ungradable" for poor quality or coverage). This
module measures what a grader looks at, on the decoded frame and its field of view
(:func:`retinopathy.fundus.find_fov`), and turns each measurement into a verdict with a reason:

- **a fundus at all**: a field of view (a bright disc in a dark frame) that fills a plausible share of the
  frame, with the colour of a retina: red well above blue (the choroid's blood shows through a
  pigmented retina; skin, grey-level pictures and most scenes are far less red);
- **exposure**: the share of the field of view that is too dark to see into, or washed out;
- **focus**: the energy of vessel-scale detail (a band-pass of the green channel, where vessels have
  their contrast), relative to the field of view's brightness, at a fixed scale of the field of view;
- **coverage**: how much of the circle is in the frame and usable (neither too dark nor washed out).

Each threshold is a field of :class:`QualityThresholds` (:mod:`retinopathy.settings`: the ``quality`` section of
params.yaml); their defaults and the measurements behind them are in docs/quality.md
(``python benchmarks/quality_gate.py`` remeasures them). What the gate cannot know: it measures the image, not the
disease. An image can pass every check and still hide a lesion a grader would want a better photograph of (a
cataract's haze lowers focus only so far, a small pupil darkens only the rim), and a fundus photograph of another
colour (an infrared or red-free image) fails the colour check although a grader could read it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageFilter

from retinopathy.fundus import FieldOfView, find_fov
from retinopathy.settings import QualityThresholds  # the params' ``quality`` section, the gate's limits

# Measurements are taken with the field of view resampled to this diameter (pixels): focus is then
# measured at one scale whatever the camera's resolution; 256 px keeps the main vessels 2-5 px wide.
ANALYSIS_DIAMETER = 256
# A JPEG is decoded for the gate at the smallest scale whose shorter side is at least this (`images.open_rgb`'s
# draft_side): a large camera photograph need not be decoded whole to be resampled to the analysis diameter.
GATE_DRAFT_SIDE = 2 * ANALYSIS_DIAMETER
# A smaller field of view is enlarged to it at most this many times (a 64-px photograph's is, 4 times).
MAX_UPSCALE = 4.0
# The band-pass of the focus measure: Gaussian blurs of these sigmas (pixels at ANALYSIS_DIAMETER)
# subtracted: above the scale of JPEG noise and below that of the background's shading.
FOCUS_SIGMAS = (1.0, 4.0)
# Pixels within this share of the radius from the rim are left out of every share: the rim is dark on
# every camera (vignetting), and the band-pass would see the rim itself as detail.
RIM_MARGIN = 0.08
# A retina-coloured pixel: green below RETINA_GREEN_OVER_RED and blue below RETINA_BLUE_OVER_RED of its red
# (the choroid's blood seen through the pigmented retina). Measured with benchmarks/quality_gate.py: at least
# 97% of the usable pixels of every synthetic photograph and of the real one are; of skin, fur, metal,
# grey-level pictures and a colour wheel, under 50%; of a brown coffee cup seen through a black circle, 87%.
RETINA_GREEN_OVER_RED = 0.8
RETINA_BLUE_OVER_RED = 0.5
# The colour check needs at least this share of the field of view neither too dark nor washed out.
MIN_COLOUR_SHARE = 0.05
# A frame whose field of view is not found at the configured threshold, or is implausibly small there, is
# looked at again at this brightness: an underexposed fundus still shows its disc above it, and is then
# called underexposed rather than not a fundus.
LOW_FOV_THRESHOLD = 4
# Analysis pixels kept around the circle's bounding box: the reach of the focus band-pass's wider blur (PIL's
# Gaussian blur is three box passes, of 4 px each at sigma 4), so that inside the circle it sees what it would see
# on the whole frame.
BLUR_MARGIN = 12


@dataclass(frozen=True)
class Quality:
    """The verdict on one photograph: gradable or not, the reasons when not, and the measurements."""

    gradable: bool
    reasons: tuple[str, ...] = ()
    measures: dict[str, float] = field(default_factory=dict)
    fundus: bool = True  # False when the frame is not a fundus photograph at all (no grade can mean anything)
    fov_found: bool = True  # False when find_fov found no field of view: there is nothing to crop

    def reason_text(self) -> str:
        """The reasons as one line (empty when gradable)."""
        return "; ".join(self.reasons)


def _analysis_frame(image: Image.Image, fov: FieldOfView) -> tuple[Image.Image, FieldOfView]:
    """The circle's part of the frame resampled so the circle is :data:`ANALYSIS_DIAMETER` wide (RGB), and the circle
    there.

    The part is the bounding box of the circle less its rim (:data:`RIM_MARGIN`, where no measurement looks) and
    :data:`BLUR_MARGIN` pixels around it, within the frame: its pixels are those of the whole frame resampled to that
    scale (the same source pixels and filter weights), without the cost of the border.
    """
    # Never enlarged more than MAX_UPSCALE: a tiny bright spot taken for a circle would make a huge frame.
    scale = min(ANALYSIS_DIAMETER / max(2.0 * fov.radius, 1.0), MAX_UPSCALE)
    width, height = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    step_x, step_y = image.width / width, image.height / height  # frame pixels per analysis pixel
    cx, cy, radius = fov.cx / step_x, fov.cy / step_y, fov.radius / step_x
    reach = radius * (1.0 - RIM_MARGIN)
    x0 = min(max(0, math.floor(cx - reach) - BLUR_MARGIN), width - 1)
    y0 = min(max(0, math.floor(cy - reach) - BLUR_MARGIN), height - 1)
    x1 = max(min(width, math.ceil(cx + reach) + BLUR_MARGIN), x0 + 1)
    y1 = max(min(height, math.ceil(cy + reach) + BLUR_MARGIN), y0 + 1)
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    part = rgb.resize((x1 - x0, y1 - y0), Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR,
                      box=(x0 * step_x, y0 * step_y, x1 * step_x, y1 * step_y))
    return part, FieldOfView(cx=cx - x0, cy=cy - y0, radius=radius)


def _disc(shape: tuple[int, int], fov: FieldOfView, shrink: float = 0.0) -> np.ndarray:
    """Pixels of a (height, width) frame inside the circle, its radius reduced by ``shrink`` of itself."""
    ys, xs = np.ogrid[: shape[0], : shape[1]]
    return (xs + 0.5 - fov.cx) ** 2 + (ys + 0.5 - fov.cy) ** 2 <= (fov.radius * (1.0 - shrink)) ** 2


def focus_energy(green: Image.Image, inner: np.ndarray) -> float:
    """Vessel-scale detail: the standard deviation of a band-pass (difference of Gaussians, :data:`FOCUS_SIGMAS`)
    of the green channel (an 8-bit image) inside ``inner``, over the mean green level there.

    A sharp fundus photograph has vessels and lesions at this scale; defocus, a cataract's haze or motion blur
    remove it first. Dividing by the brightness makes it independent of exposure and camera gain.
    """
    if not inner.any():
        return 0.0
    fine, coarse = (np.asarray(green.filter(ImageFilter.GaussianBlur(s)), dtype=np.int16)[inner] for s in FOCUS_SIGMAS)
    level = float(np.asarray(green)[inner].mean())
    return float((fine - coarse).std() / level) if level > 0 else 0.0


def frame_share(fov: FieldOfView, width: int, height: int) -> float:
    """The share of a ``width`` x ``height`` frame inside the circle ``fov``, on a 128 x 128 grid of the frame."""
    ys = (np.arange(128) + 0.5) * height / 128
    xs = (np.arange(128) + 0.5) * width / 128
    return float(((xs[None, :] - fov.cx) ** 2 + (ys[:, None] - fov.cy) ** 2 <= fov.radius**2).mean())


def measure(image: Image.Image, fov: FieldOfView, thresholds: QualityThresholds) -> dict[str, float]:
    """Every measurement the gate judges, for ``image`` (RGB) and its field of view ``fov``.

    A circle too small for a fundus photograph's field of view gets its frame share alone: the frame is then
    never resampled (a small bright spot in a large frame would make a huge analysis frame).
    """
    share = frame_share(fov, image.width, image.height)
    if share < thresholds.min_frame_share:
        return {"frame_share": share}
    part, circle = _analysis_frame(image, fov)
    arr = np.asarray(part)
    inner = _disc(arr.shape[:2], circle, RIM_MARGIN)
    # Per pixel of the inner disc only (every share below is of it); 8-bit channels widened for the products.
    red, green, blue = (arr[..., channel][inner].astype(np.float32) for channel in range(3))
    luminance = 0.299 * red + 0.587 * green + 0.114 * blue
    dark = luminance <= thresholds.dark_level
    bright = luminance >= thresholds.bright_level
    usable = ~dark & ~bright
    n_usable = int(np.count_nonzero(usable))
    # Colour from the usable pixels only: clipping (washed out) and noise (too dark) shift it.
    totals = np.array([float(channel[usable].sum()) for channel in (red, green, blue)])
    retina_coloured = usable & (green < RETINA_GREEN_OVER_RED * red) & (blue < RETINA_BLUE_OVER_RED * red)
    channel_sum = float(totals.sum()) or 1.0
    n_inner = max(red.size, 1)
    usable_frame = np.zeros(inner.shape, dtype=bool)
    usable_frame[inner] = usable
    return {
        "frame_share": share,
        "usable_share": n_usable / n_inner,
        "red_share": float(totals[0] / channel_sum),
        "blue_share": float(totals[2] / channel_sum),
        "retina_colour_share": int(np.count_nonzero(retina_coloured)) / max(n_usable, 1),
        "dark_share": int(np.count_nonzero(dark)) / n_inner,
        "bright_share": int(np.count_nonzero(bright)) / n_inner,
        "clipped_share": int(np.count_nonzero(red >= 250)) / n_inner,
        "focus": focus_energy(part.getchannel("G"), usable_frame),
        # The usable share of the whole circle, whether or not the frame cuts it.
        "coverage": float(min(1.0, n_usable / (np.pi * circle.radius**2 * (1.0 - RIM_MARGIN) ** 2))),
    }


def judge(measures: dict[str, float], thresholds: QualityThresholds) -> Quality:
    """The verdict on ``measures`` (from :func:`measure`): every limit passed is gradable; each one failed is a
    reason.

    The frame share and colour say whether the frame is a fundus photograph at all. Colour is judged only on a
    frame whose exposure is within its limits: clipping and noise change the colour of an over- or
    underexposed fundus, which is then called over- or underexposed, not "not a fundus".
    """
    t, m = thresholds, measures
    if m["frame_share"] < t.min_frame_share:
        return Quality(False, (f"not a fundus photograph: the bright disc covers {m['frame_share']:.0%} of the "
                               f"frame (a fundus photograph's field of view covers at least "
                               f"{t.min_frame_share:.0%})",), m, fundus=False)
    exposure = []
    if m["dark_share"] > t.max_dark_share:
        exposure.append(f"underexposed: {m['dark_share']:.0%} of the field of view is too dark to see into "
                        f"(limit {t.max_dark_share:.0%})")
    if m["bright_share"] > t.max_bright_share:
        exposure.append(f"overexposed: {m['bright_share']:.0%} of the field of view is washed out "
                        f"(limit {t.max_bright_share:.0%})")
    elif m["clipped_share"] > t.max_clipped_share:
        exposure.append(f"overexposed: the red channel is clipped over {m['clipped_share']:.0%} of the field of view "
                        f"(limit {t.max_clipped_share:.0%})")
    if not exposure and m["usable_share"] >= MIN_COLOUR_SHARE and m["retina_colour_share"] < t.min_retina_colour_share:
        return Quality(False, (
            f"not a fundus photograph: colour unlike a retina ({m['retina_colour_share']:.0%} of the field of "
            f"view is retina-red, a fundus photograph at least {t.min_retina_colour_share:.0%}; red "
            f"{m['red_share']:.0%}, blue {m['blue_share']:.0%} of its light)",), m, fundus=False)
    reasons = list(exposure)
    if m["focus"] < t.min_focus:
        reasons.append(f"out of focus: vessel-scale detail {m['focus']:.3f}, below {t.min_focus:.3f}")
    if m["coverage"] < t.min_coverage:
        reasons.append(f"too little of the retina is usable: {m['coverage']:.0%} of the field of view "
                       f"(at least {t.min_coverage:.0%})")
    return Quality(not reasons, tuple(reasons), m)


def assess(image: Image.Image, *, fov_threshold: int = 20, thresholds: QualityThresholds | None = None,
           fov: FieldOfView | None = None) -> Quality:
    """The gradability of one decoded photograph (RGB), with its field of view found here unless given.

    A frame without a field of view is not a fundus photograph: its verdict says so, with
    :func:`retinopathy.fundus.find_fov`'s reason.
    """
    thresholds = thresholds or QualityThresholds()
    if fov is not None:
        return judge(measure(image, fov, thresholds), thresholds)
    try:
        quality = judge(measure(image, find_fov(image, threshold=fov_threshold), thresholds), thresholds)
    except ValueError as exc:
        quality = Quality(False, (f"not a fundus photograph: {exc}",), {}, fundus=False, fov_found=False)
    if quality.fundus or fov_threshold <= LOW_FOV_THRESHOLD:
        return quality
    # Not a fundus at the configured threshold: an underexposed one shows its disc at a lower one.
    try:
        dim = judge(measure(image, find_fov(image, threshold=LOW_FOV_THRESHOLD), thresholds), thresholds)
    except ValueError:
        return quality
    if dim.fundus and dim.measures.get("dark_share", 0.0) > thresholds.max_dark_share:
        # Its field of view is only found below the crop's threshold: the preprocessing cannot crop it either.
        return Quality(False, dim.reasons, dim.measures, fundus=True, fov_found=quality.fov_found)
    return quality


@dataclass(frozen=True)
class QualityGate:
    """:func:`assess` with fixed thresholds, on a frame whose field of view is already found: the gate the preprocess
    stage runs on every image as decoded for its crop (a picklable callable, for its worker processes)."""

    thresholds: QualityThresholds = field(default_factory=QualityThresholds)

    def __call__(self, image: Image.Image, fov: FieldOfView) -> Quality:
        """The verdict on ``image`` (RGB) with its field of view ``fov``."""
        return assess(image, fov=fov, thresholds=self.thresholds)
