"""Procedural colour fundus photographs, so the pipeline can be run and tested without EyePACS.

An image imitates a fundus camera shot: a black canvas (height ``size``, width up to 1.5x) holding
a circular field of view (FOV), sometimes cut off at top and bottom as real cameras do; an
orange-red retina with vignetting and low-frequency choroidal texture; a yellow optic disc on the
nasal side (right eye: disc on the right of the image, left eye: mirrored); a darker macula about
2.5 disc diameters temporal to it; and a vessel tree whose arcades curve around the macula.

Lesions follow the International Clinical Diabetic Retinopathy scale:

0. none;
1. microaneurysms only;
2. moderate NPDR: microaneurysms, dot/blot haemorrhages, hard exudates, maybe cotton-wool spots;
3. severe NPDR: 20+ haemorrhages in all four quadrants, venous beading, exudates;
4. PDR: grade-1..3 findings plus neovascularisation and a pre-retinal haemorrhage.

Lesions are drawn a little larger than life so they survive downsampling to 64 px.

Shortcut guard: every nuisance factor (brightness, colour cast, haze, blur, sensor noise, aspect
ratio, FOV size and cut-off, disc position, vessel layout) is drawn *before* the lesions and never
looks at the grade: the camera factors from a :class:`Camera` (shared by both eyes of a patient, as
one screening visit shares camera, exposure and colour cast), the anatomy from ``rng``. So the grade
can only be learnt from the lesions, and the same rng state gives the same eye at every grade,
differing only in its lesions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = [
    "GRADE_PROPORTIONS", "EYE_AGREEMENT", "Camera", "draw_camera", "pair_grades", "sample_grades", "render_fundus",
]

# The class mix of the Kaggle 2015 EyePACS training labels (trainLabels.csv: 25,810 / 2,443 / 5,292 / 873 / 708 of
# 35,126 images, grades 0..4), rounded.
GRADE_PROPORTIONS: tuple[float, ...] = (0.735, 0.07, 0.15, 0.025, 0.02)

# Share of patients whose two eyes carry the same grade. No published figure for this share in
# EyePACS was found in the sources searched, so 0.85 is a stated choice, not a measurement: DR is a
# systemic disease and both eyes usually sit at one stage, while asymmetric disease is common enough
# (mild DR especially) that a patient model must not assume equality. Discordant patients differ by
# one grade in about ``ONE_GRADE_SHARE`` of cases (the stages are a progression), by more otherwise.
EYE_AGREEMENT = 0.85
ONE_GRADE_SHARE = 0.8

# Multiplicative tints (how much of each channel survives) and blend colours, as RGB in 0..1.
_VESSEL_TINT = np.array([0.58, 0.30, 0.32], dtype=np.float32)
_BLOOD_TINT = np.array([0.50, 0.15, 0.18], dtype=np.float32)
_EXUDATE = np.array([1.00, 0.88, 0.38], dtype=np.float32)
_COTTON_WOOL = np.array([0.96, 0.90, 0.80], dtype=np.float32)
_DISC = np.array([1.00, 0.76, 0.40], dtype=np.float32)
_CUP = np.array([1.00, 0.92, 0.68], dtype=np.float32)
_HAZE = np.array([0.75, 0.50, 0.40], dtype=np.float32)  # scattered light from the lens, warm
_VEIN, _ARTERY, _NEW_VESSEL = 255, 165, 215  # fills on the vessel layer: arteries are lighter red


@dataclass(frozen=True)
class _Eye:
    """Canvas and anatomy geometry in pixels (x right, y down)."""

    height: int
    width: int
    cx: float
    cy: float
    radius: float  # FOV radius
    fovea: tuple[float, float]
    disc: tuple[float, float]
    disc_r: float
    side: int  # +1: nasal side (disc) on the right of the image

    @property
    def diameter(self) -> float:
        """FOV diameter in pixels: the unit for all anatomy and lesion sizes."""
        return 2.0 * self.radius


@dataclass(frozen=True)
class _Vessel:
    """A vessel centre line with linearly tapering width (pixels)."""

    points: np.ndarray  # (n, 2)
    w0: float
    w1: float
    vein: bool

    def width_at(self, i: int) -> float:
        """Width at point i."""
        return self.w0 + (self.w1 - self.w0) * i / (len(self.points) - 1)


@dataclass(frozen=True)
class Camera:
    """What one camera session fixes for both eyes of a patient; never depends on a grade.

    ``blur`` and ``noise`` are given at 256 px and scaled to the image size.
    """

    aspect: float  # canvas width / height
    cut: bool  # the circle clipped at top and bottom
    fov_scale: float  # FOV diameter / canvas height
    gain: float  # exposure
    cast: tuple[float, float, float]  # per-channel colour cast
    haze: float
    blur: float
    noise: float


def draw_camera(rng: np.random.Generator) -> Camera:
    """A random camera session (framing, exposure, colour cast, haze, optics, sensor noise)."""
    aspect = float(rng.uniform(1.0, 1.5))
    cut = bool(rng.random() < 0.2)  # some cameras clip the circle at top and bottom
    fov_scale = float(rng.uniform(1.02, 1.15) if cut else rng.uniform(0.82, 1.0))
    gain = float(rng.uniform(0.55, 1.2))
    cast = tuple(float(c) for c in np.exp(rng.normal(0.0, 0.07, 3)))
    return Camera(aspect, cut, fov_scale, gain, cast, float(rng.uniform(0.0, 0.08)), float(rng.uniform(0.0, 0.9)),
                  float(rng.uniform(0.004, 0.02)))


def pair_grades(
    n_patients: int,
    rng: np.random.Generator,
    *,
    agreement: float = EYE_AGREEMENT,
    one_grade_share: float = ONE_GRADE_SHARE,
    proportions: Sequence[float] = GRADE_PROPORTIONS,
) -> np.ndarray:
    """Grades of both eyes of ``n_patients`` patients, shape (n, 2): columns left, right.

    The 2n eye grades have exactly the counts of ``sample_grades(2 * n)`` (the class mix is kept per
    eye). About ``agreement`` of the patients get the same grade in both eyes (within one patient of
    the target, as far as the counts allow); the discordant ones come from swapping one eye between two
    concordant patients, whose grades are adjacent with probability ``one_grade_share``.

    Raises:
        ValueError: naming ``agreement`` or ``one_grade_share`` when outside [0, 1].
    """
    for name, value in (("agreement", agreement), ("one_grade_share", one_grade_share)):
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    eyes = np.sort(sample_grades(2 * n_patients, rng, proportions))
    pairs = eyes.reshape(n_patients, 2).copy()  # sorted, so nearly every pair is concordant
    target = round((1.0 - float(agreement)) * n_patients)
    while int(np.sum(pairs[:, 0] != pairs[:, 1])) + 1 < target:
        same = np.flatnonzero(pairs[:, 0] == pairs[:, 1])
        if len(same) < 2:
            break
        a = int(rng.choice(same))
        grade = pairs[a, 0]
        others = same[pairs[same, 0] != grade]
        if len(others) == 0:
            break
        adjacent = others[np.abs(pairs[others, 0] - grade) == 1]
        far = others[np.abs(pairs[others, 0] - grade) > 1]
        pool = adjacent if len(adjacent) and (len(far) == 0 or rng.random() < one_grade_share) else far
        b = int(rng.choice(pool))
        pairs[a, 1], pairs[b, 1] = pairs[b, 1], pairs[a, 1]
    # Random order of patients and of the eyes within each: neither position nor side carries the grade.
    pairs = pairs[rng.permutation(n_patients)]
    flip = rng.random(n_patients) < 0.5
    pairs[flip] = pairs[flip][:, ::-1]
    return pairs


def sample_grades(n: int, rng: np.random.Generator, proportions: Sequence[float] = GRADE_PROPORTIONS) -> np.ndarray:
    """n grades (int64, 0..4) whose counts match proportions as closely as possible, shuffled by rng.

    Counts use largest-remainder rounding, so each is within 1 of ``n * p / sum(p)``.

    Raises:
        ValueError: naming ``n`` (negative or not an int) or ``proportions`` (not 5 non-negative numbers).
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    p = np.asarray(proportions, dtype=np.float64)
    if p.shape != (5,) or not np.all(np.isfinite(p)) or np.any(p < 0) or p.sum() <= 0:
        raise ValueError(f"proportions must be 5 non-negative numbers with a positive sum, got {proportions!r}")
    exact = n * p / p.sum()
    counts = np.floor(exact).astype(np.int64)
    # Stable sort: ties in the remainder go to the lower grade, so the counts are seed-independent.
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    return rng.permutation(np.repeat(np.arange(5, dtype=np.int64), counts))


def render_fundus(
    grade: int, rng: np.random.Generator, *, size: int = 256, eye: str = "left", camera: Camera | None = None
) -> Image.Image:
    """One RGB fundus photograph of the given DR grade.

    ``size`` is the height; the width is 1.0-1.5x that (black border left and right). ``camera`` fixes
    the session's framing, exposure, colour cast and optics (both eyes of a patient share one); without
    it a camera is drawn from ``rng`` first. The same grade, rng state, size, eye and camera give
    byte-identical pixels.

    Raises:
        ValueError: naming the bad argument, for grade outside 0..4, eye not in {left, right}, size < 32.
        TypeError: if rng is not a numpy Generator.
    """
    if isinstance(grade, bool) or not isinstance(grade, (int, np.integer)) or not 0 <= grade <= 4:
        raise ValueError(f"grade must be an int in 0..4, got {grade!r}")
    if eye not in ("left", "right"):
        raise ValueError(f"eye must be 'left' or 'right', got {eye!r}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 32:
        raise ValueError(f"size must be an int >= 32, got {size!r}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")

    # Everything up to the lesions is grade-blind and consumes rng in a fixed order (see module doc).
    if camera is None:
        camera = draw_camera(rng)
    geo = _layout(rng, int(size), eye, camera)
    img, illum, fov = _background(rng, geo)
    ss = 2 if size >= 128 else 4  # supersampling of the drawn layers: thin vessels and dots anti-alias
    vessels = _vessels(rng, geo)
    gain = camera.gain * np.asarray(camera.cast, dtype=np.float32)  # brightness x colour cast
    haze = camera.haze
    blur = camera.blur * size / 256
    # Grey sensor noise (a third of the cost of per-channel noise); weaker at small sizes, as if downsampled.
    noise_sigma = camera.noise * min(1.0, size / 256)
    noise = rng.standard_normal(img.shape[:2], dtype=np.float32)[..., None] * noise_sigma

    layers = {k: Image.new("L", (geo.width * ss, geo.height * ss)) for k in ("vessel", "blood", "exudate", "wool")}
    vessel_draw = ImageDraw.Draw(layers["vessel"])
    for v in vessels:
        _draw_vessel(vessel_draw, v, ss)
    _lesions_for_grade(rng, int(grade), geo, vessels, layers, ss)

    _composite(img, layers["vessel"], ss, tint=_VESSEL_TINT)
    _composite(img, layers["blood"], ss, tint=_BLOOD_TINT)
    _composite(img, layers["exudate"], ss, colour=_EXUDATE, illum=illum)
    _composite(img, layers["wool"], ss, colour=_COTTON_WOOL, illum=illum)

    img *= (1.0 - haze) * gain
    img += haze * _HAZE * gain + noise
    img *= fov
    np.clip(img, 0.0, 1.0, out=img)
    pixels = (img * 255.0 + 0.5).astype(np.uint8)
    out = Image.fromarray(pixels, "RGB")
    return out.filter(ImageFilter.GaussianBlur(blur)) if blur > 0.05 else out


def _composite(img: np.ndarray, layer: Image.Image, ss: int, *, tint: np.ndarray | None = None,
               colour: np.ndarray | None = None, illum: np.ndarray | None = None) -> None:
    """Apply a supersampled mask layer in place, either as a multiplicative tint or as a shaded colour."""
    box = layer.getbbox()
    if box is None:  # nothing drawn: most layers at low grades
        return
    x0, y0, x1, y1 = box[0] // ss, box[1] // ss, -(-box[2] // ss), -(-box[3] // ss)
    m = np.asarray(layer.crop((x0 * ss, y0 * ss, x1 * ss, y1 * ss)).reduce(ss), np.float32)[..., None] / 255.0
    region = img[y0:y1, x0:x1]
    if tint is not None:
        region *= 1.0 - m * (1.0 - tint)
    else:
        region += m * (colour * illum[y0:y1, x0:x1] - region)


def _layout(rng: np.random.Generator, size: int, eye: str, camera: Camera) -> _Eye:
    """Canvas size and FOV circle (from the camera), fovea and disc positions (from the eye's rng)."""
    diameter = size * camera.fov_scale
    width = max(round(size * camera.aspect), math.ceil(diameter) + 2)  # never clip the sides
    r = diameter / 2
    cx = float(np.clip(width / 2 + rng.normal(0.0, 0.01) * size, r + 1, width - r - 1))
    cy = size / 2 + rng.normal(0.0, 0.01) * size
    side = 1 if eye == "right" else -1
    fovea = (cx - side * rng.uniform(0.04, 0.09) * diameter, cy + rng.uniform(-0.03, 0.04) * diameter)
    disc_d = diameter / rng.uniform(6.0, 7.0)
    dist, tilt = 2.5 * disc_d * rng.uniform(0.92, 1.04), rng.uniform(-0.05, 0.2)  # disc sits slightly above
    disc = (fovea[0] + side * dist * math.cos(tilt), fovea[1] - dist * math.sin(tilt))
    return _Eye(size, width, cx, cy, r, fovea, disc, disc_d / 2, side)


def _smooth_noise(rng: np.random.Generator, cells: tuple[int, int], geo: _Eye) -> np.ndarray:
    """Unit Gaussian noise on a coarse grid, bicubically upsampled to the canvas."""
    coarse = rng.standard_normal(cells).astype(np.float32)
    return np.asarray(Image.fromarray(coarse).resize((geo.width, geo.height), Image.BICUBIC))


def _background(rng: np.random.Generator, geo: _Eye) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lesion-free retina (H, W, 3), its illumination (H, W, 1) and FOV alpha (H, W, 1)."""
    y = (np.arange(geo.height, dtype=np.float32) + 0.5)[:, None]
    x = (np.arange(geo.width, dtype=np.float32) + 0.5)[None, :]
    dist = np.sqrt((x - geo.cx) ** 2 + (y - geo.cy) ** 2) / geo.radius
    r2 = np.minimum(dist * dist, 1.0)
    lamp = rng.uniform(0, 2 * math.pi)
    vignette = rng.uniform(0.4, 0.6)
    illum = (1.0 - vignette * (0.3 * r2 + 0.7 * r2 * r2)) * (
        1.0 + rng.uniform(0.0, 0.2) * ((x - geo.cx) * math.cos(lamp) + (y - geo.cy) * math.sin(lamp)) / geo.radius
    )
    pigment = [rng.uniform(0.8, 0.95), rng.uniform(0.30, 0.42), rng.uniform(0.08, 0.16)]
    shade = illum * (1.0 + 0.07 * _smooth_noise(rng, (5, 7), geo) + 0.03 * _smooth_noise(rng, (24, 32), geo))
    mottle = 0.03 * _smooth_noise(rng, (40, 56), geo)  # fine pigment mottling, mostly in green/blue

    fx, fy = geo.fovea
    f2 = ((x - fx) ** 2 + (y - fy) ** 2) / (2 * geo.disc_r) ** 2  # squared distance in disc diameters
    macula = rng.uniform(0.25, 0.4) * np.exp(-f2 / 0.6) + 0.15 * np.exp(-f2 / 0.02)
    img = np.empty((geo.height, geo.width, 3), np.float32)
    img[..., 0] = pigment[0] * shade * (1.0 - 0.8 * macula)  # macular pigment absorbs blue/green, spares red
    shade *= 1.0 - macula
    img[..., 1] = pigment[1] * shade * (1.0 + mottle)
    img[..., 2] = pigment[2] * shade * (1.0 + 1.5 * mottle)

    # The disc and its glow fit in a patch of 5 disc radii; working there alone saves most of the cost.
    dx, dy = geo.disc
    reach = 5 * geo.disc_r
    x0, x1 = max(0, int(dx - reach)), min(geo.width, int(dx + reach) + 1)
    y0, y1 = max(0, int(dy - reach)), min(geo.height, int(dy + reach) + 1)
    patch, light = img[y0:y1, x0:x1], illum[y0:y1, x0:x1, None]
    d2 = ((x[:, x0:x1] - dx) ** 2 + ((y[y0:y1] - dy) / 1.1) ** 2) / geo.disc_r**2  # discs are a little tall
    rim = np.clip((1.05 - np.sqrt(d2)) / 0.15, 0.0, 1.0)[..., None]
    cup = (rng.uniform(0.5, 0.9) * np.exp(-d2 / (2 * rng.uniform(0.25, 0.45) ** 2)))[..., None]
    patch *= 1.0 + 0.25 * np.exp(-d2 / 2.5)[..., None]  # peripapillary glow
    patch += 0.9 * rim * (_DISC * light - patch)
    patch += cup * (_CUP * light - patch)

    fov = np.clip((1.0 - dist) * geo.radius + 0.5, 0.0, 1.0)[..., None]  # one-pixel anti-aliased edge
    return img, illum[..., None], fov


def _walk(
    rng: np.random.Generator, start: np.ndarray, heading: float, length: float, n: int, wiggle: float, bend: float = 0.0
) -> np.ndarray:
    """A random-walk path of n+1 points: heading drifts by bend in total plus Gaussian wiggle per step."""
    turns = rng.normal(bend / n, wiggle, n)
    angles = heading + np.cumsum(turns)
    steps = (length / n) * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    return np.vstack([start, start + np.cumsum(steps, axis=0)])


def _arcade(rng: np.random.Generator, geo: _Eye, superior: bool, vein: bool) -> _Vessel:
    """A main temporal arcade: leaves the disc vertically and curves around the macula."""
    fx, fy = geo.fovea
    px, py = geo.disc
    r_disc, phi_disc = math.hypot(px - fx, py - fy), math.atan2(py - fy, px - fx)
    direction = -geo.side if superior else geo.side  # sign of dphi that moves up from the disc
    n = 40
    t = np.linspace(0.0, 1.0, n)
    phi = phi_disc + direction * rng.uniform(0.72, 0.92) * math.pi * t + np.cumsum(rng.normal(0, 0.012, n))
    r = r_disc * (1 - rng.uniform(0.12, 0.3) * np.sin(math.pi * t)) + rng.uniform(0.0, 0.12) * geo.diameter * t
    r += np.cumsum(rng.normal(0.0, 0.002 * geo.diameter, n))
    pts = np.stack([fx + r * np.cos(phi), fy + r * np.sin(phi)], axis=1)
    pts[0] = np.asarray(geo.disc) + rng.normal(0.0, 0.2 * geo.disc_r, 2)  # vessels leave the cup, not one point
    w0 = (0.016 if vein else 0.012) * geo.diameter
    return _Vessel(pts, w0, w0 * 0.35, vein)


def _grow(
    rng: np.random.Generator, geo: _Eye, start: np.ndarray, heading: float, length: float, width: float,
    vein: bool, depth: int, out: list[_Vessel],
) -> None:
    """Append a wandering vessel and, depth permitting, its thinner side branches."""
    n = max(6, int(length / (0.012 * geo.diameter)))
    pts = _walk(rng, start, heading, length, n, wiggle=0.09, bend=rng.uniform(-0.6, 0.6))
    out.append(_Vessel(pts, width, width * 0.45, vein))
    if depth > 0:
        _branch(rng, geo, out[-1], int(rng.integers(0, 3)), depth - 1, out)


def _branch(rng: np.random.Generator, geo: _Eye, parent: _Vessel, count: int, depth: int, out: list[_Vessel]) -> None:
    """Grow count side branches off parent, mostly away from the fovea."""
    pts = parent.points
    fx, fy = geo.fovea
    for _ in range(count):
        i = int(rng.integers(max(1, len(pts) // 6), len(pts) - 1))
        tangent = pts[i + 1] - pts[i - 1]
        heading = math.atan2(tangent[1], tangent[0])
        turn = rng.uniform(0.45, 1.0)
        outward = rng.random() < 0.7  # the macula gets only a few short twigs
        cand = [heading + turn, heading - turn]
        away = [math.hypot(pts[i, 0] + math.cos(h) - fx, pts[i, 1] + math.sin(h) - fy) for h in cand]
        h = cand[int(np.argmax(away) if outward else np.argmin(away))]
        length = rng.uniform(0.1, 0.25) if outward else rng.uniform(0.05, 0.12)
        width = parent.width_at(i) * rng.uniform(0.55, 0.75)
        _grow(rng, geo, pts[i], h, length * geo.diameter, width, parent.vein, depth, out)


def _vessels(rng: np.random.Generator, geo: _Eye) -> list[_Vessel]:
    """The vessel tree: four temporal arcades, nasal vessels and macular twigs, all from the disc."""
    out = [_arcade(rng, geo, superior, vein) for superior in (True, False) for vein in (True, False)]
    for arcade in out[:4]:
        _branch(rng, geo, arcade, int(rng.integers(3, 6)), 2, out)
    disc = np.asarray(geo.disc)
    for superior in (True, False):
        for vein in (True, False):
            a = rng.uniform(0.35, 1.1)
            heading = math.atan2(-math.sin(a) if superior else math.sin(a), geo.side * math.cos(a))
            w = (0.012 if vein else 0.009) * geo.diameter
            _grow(rng, geo, disc, heading, rng.uniform(0.25, 0.4) * geo.diameter, w, vein, 2, out)
    for _ in range(int(rng.integers(1, 3))):  # small twigs heading toward the macula
        heading = math.atan2(rng.normal(0, 0.3), -geo.side)
        _grow(rng, geo, disc, heading, rng.uniform(0.08, 0.16) * geo.diameter, 0.004 * geo.diameter, False, 0, out)
    return out


def _draw_vessel(draw: ImageDraw.ImageDraw, v: _Vessel, ss: int, chunks: int = 5) -> None:
    """Draw a tapering vessel as a few constant-width polylines."""
    last = len(v.points) - 1
    for c in range(chunks):
        a, b = round(c * last / chunks), round((c + 1) * last / chunks)
        if b <= a:
            continue
        w = v.w0 + (v.w1 - v.w0) * (c + 0.5) / chunks
        draw.line((v.points[a : b + 1] * ss).ravel().tolist(), fill=_VEIN if v.vein else _ARTERY,
                  width=max(1, round(w * ss)), joint="curve")


def _fov_points(
    rng: np.random.Generator, geo: _Eye, n: int, *, centre: tuple[float, float] | None = None,
    radius: float | None = None, sector: tuple[float, float] = (0.0, 2 * math.pi),
) -> np.ndarray:
    """n uniform points in a disc (default: most of the FOV) that are visible and off the optic disc."""
    cx, cy = centre if centre is not None else (geo.cx, geo.cy)
    radius = radius if radius is not None else 0.9 * geo.radius
    found: list[np.ndarray] = []
    need = n
    for _ in range(200):
        if need <= 0:
            break
        m = 2 * need + 8
        rad = radius * np.sqrt(rng.random(m))
        ang = rng.uniform(sector[0], sector[1], m)
        p = np.stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)], axis=1)
        ok = (
            (np.hypot(p[:, 0] - geo.cx, p[:, 1] - geo.cy) < 0.93 * geo.radius)
            & (p[:, 1] > 0.04 * geo.height) & (p[:, 1] < 0.96 * geo.height)
            & (np.hypot(p[:, 0] - geo.disc[0], p[:, 1] - geo.disc[1]) > 1.3 * geo.disc_r)
        )
        found.append(p[ok][:need])
        need -= len(found[-1])
    if need > 0:
        raise RuntimeError(f"could not place {n} lesions in sector {sector} of the field of view")
    return np.concatenate(found) if found else np.empty((0, 2))


def _blob(rng: np.random.Generator, centre: np.ndarray, r: float, ss: int, *, elong: float = 1.0,
          rough: float = 0.2, flat_top: bool = False) -> list[float]:
    """Polygon (flat, supersampled coordinates) of an irregular, optionally elongated blob."""
    t = np.linspace(0, 2 * math.pi, 20, endpoint=False)
    amp, phase = rng.uniform(-rough, rough, 2), rng.uniform(0, 2 * math.pi, 2)
    rad = r * (1 + amp[0] * np.cos(2 * t + phase[0]) + amp[1] * np.cos(3 * t + phase[1]))  # smooth lobes
    x, y = rad * np.cos(t) * elong, rad * np.sin(t) / elong
    rot = 0.0 if flat_top else rng.uniform(0, math.pi)
    x, y = x * math.cos(rot) - y * math.sin(rot), x * math.sin(rot) + y * math.cos(rot)
    if flat_top:  # blood settles under the hyaloid: a horizontal fluid level on top ("boat" shape)
        y = np.maximum(y, -0.3 * r)
    return (np.stack([centre[0] + x, centre[1] + y], axis=1) * ss).ravel().tolist()


def _dots(draw: ImageDraw.ImageDraw, pts: np.ndarray, radii: np.ndarray, fills: np.ndarray, ss: int) -> None:
    """Filled circles (microaneurysms, exudate specks)."""
    for (x, y), r, f in zip(pts * ss, radii * ss, fills):
        draw.ellipse((x - r, y - r, x + r, y + r), fill=int(f))


def _lesions_for_grade(
    rng: np.random.Generator, grade: int, geo: _Eye, vessels: list[_Vessel], layers: dict[str, Image.Image], ss: int
) -> None:
    """Draw the findings of the International Clinical DR scale for grade onto the lesion layers."""
    if grade == 0:
        return
    d = geo.diameter
    blood, exudate, vessel = (ImageDraw.Draw(layers[k]) for k in ("blood", "exudate", "vessel"))
    findings = grade if grade < 4 else int(rng.integers(1, 4))  # PDR comes with any NPDR background

    n_ma = int(rng.integers(*{1: (3, 11), 2: (4, 13), 3: (8, 21)}[findings]))
    _dots(blood, _fov_points(rng, geo, n_ma), rng.uniform(0.01, 0.015, n_ma) * d, rng.integers(215, 256, n_ma), ss)

    if findings == 2:
        spots = _fov_points(rng, geo, int(rng.integers(3, 13)))
    elif findings == 3:  # severe: haemorrhages in every quadrant (4-2-1 rule)
        spots = np.concatenate([
            _fov_points(rng, geo, int(rng.integers(5, 11)), sector=(q * math.pi / 2, (q + 1) * math.pi / 2))
            for q in range(4)
        ])
    else:
        spots = np.empty((0, 2))
    for p in spots:
        poly = _blob(rng, p, rng.uniform(0.015, 0.03) * d, ss, elong=rng.uniform(1.0, 1.6), rough=0.25)
        blood.polygon(poly, fill=int(rng.integers(200, 256)))

    if findings >= 2:
        n_clusters = int(rng.integers(1, 5)) if rng.random() < 0.75 or findings == 3 else 0
        for c in _fov_points(rng, geo, n_clusters, centre=geo.fovea, radius=0.3 * d):
            k = int(rng.integers(4, 15))
            specks = c + rng.normal(0.0, rng.uniform(0.012, 0.03) * d, (k, 2))
            _dots(exudate, specks, rng.uniform(0.005, 0.011, k) * d, rng.integers(200, 256, k), ss)
        n_wool = int(rng.integers(0, 3)) if rng.random() < (0.4 if findings == 2 else 0.7) else 0
        if n_wool:
            wool = ImageDraw.Draw(layers["wool"])
            for p in _fov_points(rng, geo, n_wool, centre=geo.disc, radius=0.35 * d):
                poly = _blob(rng, p, rng.uniform(0.02, 0.035) * d, ss, rough=0.3)
                wool.polygon(poly, fill=int(rng.integers(150, 220)))
            layers["wool"] = layers["wool"].filter(ImageFilter.GaussianBlur(0.012 * d * ss))  # fluffy edges

    if findings == 3:
        _venous_beading(rng, geo, vessels, vessel, ss)

    if grade == 4:
        _neovascularisation(rng, geo, vessels, vessel, ss)
        p = _fov_points(rng, geo, 1, radius=0.7 * geo.radius)[0]
        r = rng.uniform(0.04, 0.075) * d  # 8-15% of the FOV diameter across
        blood.polygon(_blob(rng, p, r, ss, elong=rng.uniform(1.1, 1.4), rough=0.08, flat_top=rng.random() < 0.6),
                      fill=255)


def _venous_beading(rng: np.random.Generator, geo: _Eye, vessels: list[_Vessel], draw: ImageDraw.ImageDraw,
                    ss: int) -> None:
    """Bead-like swellings along a stretch of one to three major veins."""
    veins = [v for v in vessels if v.vein and v.w0 > 0.006 * geo.diameter]
    for j in rng.choice(len(veins), size=min(len(veins), int(rng.integers(1, 4))), replace=False):
        v = veins[int(j)]
        n = len(v.points)
        start = int(rng.integers(n // 6, n // 2))
        spacing = max(1, round(3.0 * v.width_at(start) / (np.linalg.norm(v.points[1] - v.points[0]) + 1e-6)))
        idx = np.arange(start, min(n, start + n // 2), spacing)
        radii = np.array([v.width_at(int(i)) for i in idx]) * rng.uniform(0.9, 1.2, len(idx))
        _dots(draw, v.points[idx], radii, np.full(len(idx), _VEIN), ss)


def _neovascularisation(rng: np.random.Generator, geo: _Eye, vessels: list[_Vessel], draw: ImageDraw.ImageDraw,
                        ss: int) -> None:
    """One or two tangles of fine tortuous new vessels, on the disc (NVD) or on an arcade (NVE)."""
    d = geo.diameter
    for _ in range(int(rng.integers(1, 3))):
        if rng.random() < 0.5:
            centre = np.asarray(geo.disc)
        else:
            arcade = vessels[int(rng.integers(0, 4))]  # _vessels puts the four arcades first
            centre = arcade.points[int(rng.integers(len(arcade.points) // 4, 3 * len(arcade.points) // 4))]
        for _ in range(int(rng.integers(10, 20))):
            start = centre + rng.normal(0.0, 0.025 * d, 2)
            path = _walk(rng, start, rng.uniform(0, 2 * math.pi), rng.uniform(0.03, 0.08) * d, 12, wiggle=0.6)
            draw.line((path * ss).ravel().tolist(), fill=_NEW_VESSEL, width=max(1, round(0.004 * d * ss)),
                      joint="curve")
