"""Two test sets of the embedded data, apart from the training data: an external site and a gradability set.

**The external site** (``data/external``, the Kaggle layout: ``trainLabels.csv`` and ``train/<id>_<eye>.jpeg``) holds
its own patients, photographed by another camera at another clinic. It is scored by every evaluate stage and is never
used for training, selection or fitting. Each difference from the screening site imitates one that separates real
sites (EyePACS, APTOS, Messidor, IDRiD differ in all of these):

- **framing**: a wider sensor (more black border) and most circles cut at the top and bottom, as on cameras whose
  field is wider than the frame is tall (APTOS and IDRiD photographs often are);
- **resolution**: 1.6 times the screening site's heights (307-512 px against 192-320 by default; IDRiD's photographs
  are 4288 x 2848 against EyePACS's mixed sizes), so the downsampling to the model's input changes the detail;
- **white balance**: a cooler colour cast, less red and more green and blue (each camera's sensor and white balance
  differ; Messidor's photographs are visibly yellower than EyePACS's, APTOS's greener);
- **exposure**: darker on average (non-mydriatic photography through undilated pupils);
- **optics**: more haze and blur (older lenses, cataract in a clinic's older patients);
- **compression**: JPEG quality 45-70 instead of 70-95 (telemedicine uploads);
- **vignetting**: a stronger fall-off of light towards the rim;
- **grade mix**: a referral clinic sees more disease than screening (:data:`EXTERNAL_GRADE_PROPORTIONS`).

**The gradability set** (``data/quality``: ``<name>.jpeg`` and ``labels.csv`` with ``image``, ``gradable``,
``defect``) tests the gate of :mod:`retinopathy.quality`: half gradable photographs of the screening camera, half
ungradable ones, each with one defect (:data:`DEFECTS`) applied to such a photograph, or no fundus at all.

Every random choice flows from ``synthetic.seed`` through streams of their own, so neither set changes a pixel of
the training data, and changing either set's size changes nothing else.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter

from retinopathy.embedded import render_all
from retinopathy.settings import SyntheticSpec
from retinopathy.synthetic import GRADE_PROPORTIONS, Camera, draw_camera, pair_grades, render_fundus
from retinopathy.utils import atomic_path

# A referral clinic's mix, grades 0..4: between EyePACS's screening mix (73.5% grade 0) and IDRiD's
# (168 / 25 / 168 / 93 / 62 of 516 images: 33% grade 0, 50% referable).
EXTERNAL_GRADE_PROPORTIONS: tuple[float, ...] = (0.45, 0.08, 0.27, 0.12, 0.08)
EXTERNAL_SCALE = 1.6  # image heights: the screening site's range (synthetic.min_size..max_size) times this
EXTERNAL_JPEG_QUALITY = (45, 70)
# Patient numbers of the external site start here, so its names never meet the screening site's.
EXTERNAL_FIRST_PATIENT = 100001
# Stream tags of the random generators: [seed, tag, ...], apart from the screening set's [seed] and [seed, n].
_EXTERNAL_SESSION, _EXTERNAL_EYE, _QUALITY = 9001, 9002, 9003

DEFECTS = ("underexposed", "overexposed", "defocused", "small_pupil", "lid_shadow", "not_fundus")


def draw_external_camera(rng: np.random.Generator) -> tuple[Camera, float]:
    """A session of the external site's camera (see the module docstring) and its extra vignetting strength."""
    aspect = float(rng.uniform(1.25, 1.6))
    cut = bool(rng.random() < 0.6)
    fov_scale = float(rng.uniform(1.04, 1.15) if cut else rng.uniform(0.88, 1.0))
    gain = float(rng.uniform(0.5, 0.95))
    cast = tuple(float(c) for c in np.exp(np.log([0.9, 1.06, 1.18]) + rng.normal(0.0, 0.05, 3)))
    camera = Camera(aspect, cut, fov_scale, gain, cast, float(rng.uniform(0.04, 0.14)), float(rng.uniform(0.5, 1.4)),
                    float(rng.uniform(0.01, 0.03)))
    return camera, float(rng.uniform(0.25, 0.45))


def vignette(image: Image.Image, strength: float) -> Image.Image:
    """Light falling off as ``1 - strength x (d / R)^2`` with the distance ``d`` from the frame's centre (R: half
    its height)."""
    arr = np.asarray(image, dtype=np.float32)
    h, w = arr.shape[:2]
    y = (np.arange(h, dtype=np.float32) - (h - 1) / 2)[:, None]
    x = (np.arange(w, dtype=np.float32) - (w - 1) / 2)[None, :]
    fall = np.clip(1.0 - strength * (x * x + y * y) / (h / 2) ** 2, 0.0, 1.0)[..., None]
    return Image.fromarray(np.clip(arr * fall + 0.5, 0, 255).astype(np.uint8))


def _render_external(job: tuple[int, int, str, int, SyntheticSpec, str]) -> None:
    """Render and save one photograph of the external site; both eyes of a patient share one session."""
    seed, index, name, grade, spec, out_dir = job
    patient, eye = name.rsplit("_", 1)
    session = np.random.default_rng([seed, _EXTERNAL_SESSION, int(patient)])
    size = int(session.integers(round(EXTERNAL_SCALE * spec.min_size), round(EXTERNAL_SCALE * spec.max_size) + 1))
    quality = int(session.integers(EXTERNAL_JPEG_QUALITY[0], EXTERNAL_JPEG_QUALITY[1] + 1))
    camera, strength = draw_external_camera(session)
    image = render_fundus(grade, np.random.default_rng([seed, _EXTERNAL_EYE, index]), size=size, eye=eye,
                          camera=camera)
    vignette(image, strength).save(Path(out_dir) / f"{name}.jpeg", quality=quality)


def external_table(spec: SyntheticSpec) -> pd.DataFrame:
    """The external site's images and grades (``image``, ``level``), eyes paired as at the screening site."""
    rng = np.random.default_rng([spec.seed, _EXTERNAL_SESSION])
    grades = pair_grades(spec.external_patients, rng, agreement=spec.eye_agreement,
                         proportions=EXTERNAL_GRADE_PROPORTIONS)
    rows = [{"image": f"{EXTERNAL_FIRST_PATIENT + k}_{side}", "level": int(grade)}
            for k in range(spec.external_patients) for side, grade in zip(("left", "right"), grades[k])]
    return pd.DataFrame(rows)


def write_external_site(root: str | os.PathLike[str], spec: SyntheticSpec, *, workers: int = 0) -> pd.DataFrame:
    """Render the external site into ``root`` (replaced atomically) in the Kaggle layout; return its table."""
    table = external_table(spec)
    with atomic_path(root, replace_dir=True) as tmp:
        (tmp / "train").mkdir(parents=True)
        jobs = [(spec.seed, i, row.image, int(row.level), spec, str(tmp / "train"))
                for i, row in enumerate(table.itertuples())]
        render_all(_render_external, jobs, workers, "external site")
        table.to_csv(tmp / "trainLabels.csv", index=False)
    return table


def _defect(image: Image.Image, defect: str, rng: np.random.Generator) -> Image.Image:
    """``image`` (a gradable photograph) made ungradable by ``defect`` (one of :data:`DEFECTS` but not_fundus)."""
    arr = np.asarray(image, dtype=np.float32)
    h, w = arr.shape[:2]
    if defect == "underexposed":  # a flash that fired weakly, an undilated pupil
        arr = arr * rng.uniform(0.08, 0.2)
    elif defect == "overexposed":  # too much flash: the retina washed out, the red channel clipped
        arr = arr * rng.uniform(2.5, 4.0) + 255 * rng.uniform(0.05, 0.25) * (arr.max(axis=2, keepdims=True) > 10)
    elif defect == "defocused":  # the camera focused on the lens or cornea: no vessel-scale detail is left
        return image.filter(ImageFilter.GaussianBlur(rng.uniform(0.025, 0.045) * h))
    elif defect == "small_pupil":  # only the middle of the field is lit; the rest is dark
        y, x = np.mgrid[:h, :w].astype(np.float32)
        d = np.hypot(x - (w - 1) / 2, y - (h - 1) / 2) / (0.45 * h)
        lit = np.clip((rng.uniform(0.35, 0.55) - d) / 0.08 + 0.5, 0.0, 1.0)
        arr = arr * (0.05 + 0.95 * lit)[..., None]
    elif defect == "lid_shadow":  # the upper lid and lashes over the top of the field
        arr = arr * _lid_shadow(h, w, rng)[..., None]
    else:
        raise ValueError(f"unknown defect {defect!r}; choose one of {list(DEFECTS)}")
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))


def _lid_shadow(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A light map: dark above a soft, curved lid edge low in the frame, with lash streaks below it."""
    edge = rng.uniform(0.35, 0.55) * h
    mask = Image.new("L", (w, h), 255)
    draw = ImageDraw.Draw(mask)
    sag = rng.uniform(0.05, 0.15) * h
    draw.pieslice((-0.2 * w, edge - 2 * sag - h, 1.2 * w, edge), 0, 180, fill=12)
    if edge - sag - h / 2 > 0:  # above the ellipse's centre the lid covers everything
        draw.rectangle((0, 0, w, edge - sag - h / 2), fill=12)
    for _ in range(int(rng.integers(12, 24))):
        x = rng.uniform(0, w)
        length = rng.uniform(0.05, 0.15) * h
        draw.line((x, edge - sag, x + rng.normal(0, 0.03 * h), edge - sag + length), fill=40, width=max(1, h // 120))
    return np.asarray(mask.filter(ImageFilter.GaussianBlur(0.02 * h)), dtype=np.float32) / 255.0


def not_a_fundus(kind: int, rng: np.random.Generator, size: int) -> Image.Image:
    """A frame that is no fundus photograph: a face, a landscape, a printed page, or a non-retina texture seen
    through a black circle (a fundus camera's framing around something else), by ``kind`` modulo 4."""
    h, w = size, int(size * rng.uniform(1.0, 1.5))
    y, x = np.mgrid[:h, :w].astype(np.float32) / h
    noise = rng.normal(0.0, 0.03, (h, w, 1)).astype(np.float32)
    kind %= 4
    if kind == 0:  # a face: skin tones on a neutral background, dark hair above
        skin = np.array([0.85, 0.62, 0.5]) * rng.uniform(0.7, 1.1)
        face = (((x - w / h / 2) / 0.32) ** 2 + ((y - 0.55) / 0.45) ** 2 < 1.0)[..., None]
        hair = ((y < 0.3) & (np.abs(x - w / h / 2) < 0.4))[..., None]
        arr = np.where(face, skin, np.where(hair, np.array([0.15, 0.1, 0.08]), np.array([0.55, 0.6, 0.65])))
    elif kind == 1:  # a landscape: a blue sky over green ground
        horizon = rng.uniform(0.35, 0.65)
        arr = np.where((y < horizon)[..., None], np.array([0.45, 0.65, 0.9]) + 0.2 * y[..., None],
                       np.array([0.25, 0.5, 0.2]) + 0.1 * np.sin(20 * x)[..., None])
    elif kind == 2:  # a printed page: dark lines of text on white
        lines = ((np.floor(y * 24) % 2 == 1) & (np.sin(x * 90 + rng.uniform(0, 6)) > 0.2))[..., None]
        arr = np.where(lines, np.array([0.1, 0.1, 0.12]), np.array([0.93, 0.93, 0.9]))
    else:  # grey-green texture through a black circle
        colour = np.array([0.45, 0.55, 0.5]) * rng.uniform(0.7, 1.2)
        inside = ((x - w / h / 2) ** 2 + (y - 0.5) ** 2 < 0.45**2)[..., None]
        arr = np.where(inside, colour * (1.0 + 0.3 * np.sin(15 * x + 9 * y))[..., None], 0.0)
    arr = np.clip((arr + noise) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB").filter(ImageFilter.GaussianBlur(0.003 * h))


def quality_table(spec: SyntheticSpec) -> pd.DataFrame:
    """The gradability set's images (``image``, ``gradable``, ``defect``): the first half gradable, the rest taking
    the defects in turn."""
    n = spec.quality_images
    gradable = n - n // 2
    defects = ["none"] * gradable + [DEFECTS[i % len(DEFECTS)] for i in range(n - gradable)]
    return pd.DataFrame({"image": [f"q{i:04d}" for i in range(n)], "gradable": [int(d == "none") for d in defects],
                         "defect": defects})


def _render_quality(job: tuple[int, int, str, str, SyntheticSpec, str]) -> None:
    """Render and save one photograph of the gradability set."""
    seed, index, name, defect, spec, out_dir = job
    rng = np.random.default_rng([seed, _QUALITY, index])
    size = int(rng.integers(spec.min_size, spec.max_size + 1))
    if defect == "not_fundus":
        image = not_a_fundus(index, rng, size)
    else:
        grade = int(rng.choice(5, p=np.asarray(GRADE_PROPORTIONS)))
        image = render_fundus(grade, rng, size=size, eye=("left", "right")[index % 2], camera=draw_camera(rng))
        image = image if defect == "none" else _defect(image, defect, rng)
    image.save(Path(out_dir) / f"{name}.jpeg", quality=int(rng.integers(spec.jpeg_quality_min,
                                                                          spec.jpeg_quality_max + 1)))


def write_quality_set(root: str | os.PathLike[str], spec: SyntheticSpec, *, workers: int = 0) -> pd.DataFrame:
    """Render the gradability set into ``root`` (replaced atomically); return its table."""
    table = quality_table(spec)
    with atomic_path(root, replace_dir=True) as tmp:
        tmp.mkdir()
        jobs = [(spec.seed, i, row.image, row.defect, spec, str(tmp)) for i, row in enumerate(table.itertuples())]
        render_all(_render_quality, jobs, workers, "gradability set")
        table.to_csv(tmp / "labels.csv", index=False)
    return table

