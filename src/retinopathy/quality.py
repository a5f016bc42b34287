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

Each threshold is a field of :class:`QualityThresholds`; their defaults and the measurements behind them
are in docs/quality.md (``python benchmarks/quality_gate.py`` remeasures them). What the gate cannot know:
it measures the image, not the disease. An image can pass every check and still hide a lesion a
grader would want a better photograph of (a cataract's haze lowers focus only so far, a small pupil
darkens only the rim), and a fundus photograph of another colour (an infrared or red-free image)
fails the colour check although a grader could read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageFilter

from retinopathy.fundus import FieldOfView, find_fov

# Measurements are taken with the field of view resampled to this diameter (pixels): focus is then
# measured at one scale whatever the camera's resolution; 256 px keeps the main vessels 2-5 px wide.
ANALYSIS_DIAMETER = 256
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


@dataclass(frozen=True)
class QualityThresholds:
    """The gate's limits; a photograph is ungradable when any measurement is beyond its limit."""

    min_frame_share: float = 0.3  # the circle's area inside the frame, as a share of the frame
    min_retina_colour_share: float = 0.9  # usable pixels of a retina's colour (see RETINA_GREEN_OVER_RED)
    dark_level: int = 25  # luminance (0-255) at or below which a pixel is too dark
    bright_level: int = 215  # luminance (0-255) at or above which a pixel is washed out
    max_dark_share: float = 0.5  # share of the field of view too dark
    max_bright_share: float = 0.25  # share washed out
    max_clipped_share: float = 0.7  # share whose red channel is clipped (>= 250): the choroid's detail is gone
    min_focus: float = 0.04  # band-pass energy / mean brightness (see :func:`focus_energy`)
    min_coverage: float = 0.7  # share of the whole circle that is in the frame and neither too dark nor washed out

    def __post_init__(self) -> None:
        for name in ("min_frame_share", "min_retina_colour_share", "max_dark_share", "max_bright_share",
                     "max_clipped_share", "min_coverage"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"quality threshold {name} must lie in [0, 1], got {value}")
        if not 0 <= self.dark_level < self.bright_level <= 255:
            raise ValueError(f"quality thresholds need 0 <= dark_level < bright_level <= 255, got "
                             f"{self.dark_level} and {self.bright_level}")
        if self.min_focus < 0:
            raise ValueError(f"quality threshold min_focus must be at least 0, got {self.min_focus}")


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


def _analysis_frame(image: Image.Image, fov: FieldOfView) -> tuple[np.ndarray, FieldOfView]:
    """The frame resampled so the circle is :data:`ANALYSIS_DIAMETER` wide (RGB float array), and the circle there."""
    # Never enlarged more than MAX_UPSCALE: a tiny bright spot taken for a circle would make a huge frame.
    scale = min(ANALYSIS_DIAMETER / max(2.0 * fov.radius, 1.0), MAX_UPSCALE)
    width, height = max(1, round(image.width * scale)), max(1, round(image.height * scale))
    small = image.convert("RGB").resize((width, height), Image.Resampling.BOX if scale < 1 else
                                        Image.Resampling.BILINEAR)
    return (np.asarray(small, dtype=np.float32),
            FieldOfView(cx=fov.cx * width / image.width, cy=fov.cy * height / image.height,
                        radius=fov.radius * width / image.width))


def _disc(shape: tuple[int, int], fov: FieldOfView, shrink: float = 0.0) -> np.ndarray:
    """Pixels of a (height, width) frame inside the circle, its radius reduced by ``shrink`` of itself."""
    ys, xs = np.mgrid[: shape[0], : shape[1]]
    return (xs + 0.5 - fov.cx) ** 2 + (ys + 0.5 - fov.cy) ** 2 <= (fov.radius * (1.0 - shrink)) ** 2


def focus_energy(green: np.ndarray, inner: np.ndarray) -> float:
    """Vessel-scale detail: the standard deviation of a band-pass (difference of Gaussians, :data:`FOCUS_SIGMAS`)
    of the green channel inside ``inner``, over the mean green level there.

    A sharp fundus photograph has vessels and lesions at this scale; defocus, a cataract's haze or motion blur
    remove it first. Dividing by the brightness makes it independent of exposure and camera gain.
    """
    image = Image.fromarray(np.clip(green, 0, 255).astype(np.uint8))
    fine, coarse = (np.asarray(image.filter(ImageFilter.GaussianBlur(s)), dtype=np.float32) for s in FOCUS_SIGMAS)
    band = (fine - coarse)[inner]
    level = float(green[inner].mean()) if inner.any() else 0.0
    return float(band.std() / level) if level > 0 and band.size else 0.0


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
    arr, circle = _analysis_frame(image, fov)
    height, width = arr.shape[:2]
    inner = _disc((height, width), circle, RIM_MARGIN)
    disc_area = np.pi * circle.radius**2
    red, green, blue = arr[..., 0], arr[..., 1], arr[..., 2]
    luminance = 0.299 * red + 0.587 * green + 0.114 * blue
    dark = luminance <= thresholds.dark_level
    bright = luminance >= thresholds.bright_level
    usable = inner & ~dark & ~bright
    # Colour from the usable pixels only: clipping (washed out) and noise (too dark) shift it.
    totals = arr[usable].sum(axis=0) if usable.any() else np.zeros(3)
    retina_coloured = usable & (green < RETINA_GREEN_OVER_RED * red) & (blue < RETINA_BLUE_OVER_RED * red)
    channel_sum = float(totals.sum()) or 1.0
    n_inner = max(int(inner.sum()), 1)
    return {
        "frame_share": share,
        "usable_share": float(usable.sum() / n_inner),
        "red_share": float(totals[0] / channel_sum),
        "blue_share": float(totals[2] / channel_sum),
        "retina_colour_share": float(retina_coloured.sum() / max(int(usable.sum()), 1)),
        "dark_share": float((dark & inner).sum() / n_inner),
        "bright_share": float((bright & inner).sum() / n_inner),
        "clipped_share": float(((red >= 250) & inner).sum() / n_inner),
        "focus": focus_energy(green, usable) if usable.any() else 0.0,
        # The usable share of the whole circle, whether or not the frame cuts it.
        "coverage": float(min(1.0, usable.sum() / (disc_area * (1.0 - RIM_MARGIN) ** 2))),
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
