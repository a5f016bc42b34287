"""The gradability gate's measurements on gradable, degraded and non-fundus photographs: what its thresholds rest on.

Cases, each made here (nothing is downloaded):
- ``synthetic``: photographs of the embedded renderer (``retinopathy.synthetic.render_fundus``, its own cameras);
- ``retina``: the one real fundus photograph scikit-image ships (``skimage/data/retina.jpg``), and that photograph
  cut at the top and bottom as some cameras frame it;
- each gradable photograph degraded as real ones are: defocus (Gaussian blur of 0.5%, 1% and 2% of the field of
  view's diameter), under- and overexposure (the field of view's median luminance scaled to 12 and to 225 of
  255, the border staying black), a lid or lash shadow
  (the upper part of the field of view darkened to a tenth);
- ``not fundus``: scikit-image's photographs of other things (a person, a cat, a coffee cup, a rocket, a
  motorcycle, a deep-sky field, the moon, coins, text, a colour wheel, a cameraman, a logo), each also seen
  through a circle on black, so that it has a field of view and only the colour can tell.

Prints, per case, the range of each measurement and how often the gate (``retinopathy.quality``, default
thresholds) calls it gradable; docs/quality.md has a run's output.

    python benchmarks/quality_gate.py               # 60 synthetic photographs
    python benchmarks/quality_gate.py --synthetic 200
"""

from __future__ import annotations

import argparse
import os
from collections import defaultdict
from typing import Callable, Iterator

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from retinopathy.fundus import find_fov
from retinopathy.quality import Quality, assess
from retinopathy.synthetic import render_fundus

NOT_FUNDUS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
              "hubble_deep_field.jpg", "moon.png", "coins.png", "text.png", "color.png", "camera.png", "logo.png")


def skimage_photo(name: str) -> Image.Image:
    """One of the photographs scikit-image ships, as RGB (a test dependency of the project)."""
    import skimage.data

    return Image.open(os.path.join(skimage.data.data_dir, name)).convert("RGB")


def defocus(image: Image.Image, share: float) -> Image.Image:
    """Gaussian blur of ``share`` of the field of view's diameter."""
    return image.filter(ImageFilter.GaussianBlur(share * 2 * find_fov(image).radius))


def expose(image: Image.Image, median: float) -> Image.Image:
    """Every level scaled so the field of view's median luminance is ``median``, clipped: under- or
    overexposure of the retina; a black border stays black."""
    fov = find_fov(image)
    arr = np.asarray(image, dtype=np.float32)
    ys, xs = np.mgrid[: arr.shape[0], : arr.shape[1]]
    inside = (xs - fov.cx) ** 2 + (ys - fov.cy) ** 2 <= (0.9 * fov.radius) ** 2
    luminance = arr @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    gain = median / max(float(np.median(luminance[inside])), 1.0)
    return Image.fromarray(np.clip(arr * gain, 0, 255).astype(np.uint8))


def lid_shadow(image: Image.Image, reach: float = 0.1) -> Image.Image:
    """The rows above ``reach`` of the radius below the circle's centre... darkened to a tenth: a drooping lid."""
    fov = find_fov(image)
    arr = np.asarray(image, dtype=np.float32).copy()
    arr[: max(0, int(fov.cy - reach * fov.radius))] *= 0.1
    return Image.fromarray(arr.astype(np.uint8))


DEGRADATIONS: dict[str, Callable[[Image.Image], Image.Image]] = {
    "defocus 0.5%": lambda im: defocus(im, 0.005),
    "defocus 1%": lambda im: defocus(im, 0.01),
    "defocus 2%": lambda im: defocus(im, 0.02),
    "underexposed": lambda im: expose(im, 12.0),
    "overexposed": lambda im: expose(im, 225.0),
    "lid shadow": lid_shadow,
}


def in_black_circle(image: Image.Image) -> Image.Image:
    """``image`` seen through a circle on black, as a fundus camera frames the retina: it has a field of view."""
    mask = Image.new("L", image.size, 0)
    side = min(image.size)
    x0, y0 = (image.width - side) // 2, (image.height - side) // 2
    ImageDraw.Draw(mask).ellipse((x0 + 2, y0 + 2, x0 + side - 3, y0 + side - 3), fill=255)
    return Image.composite(image, Image.new("RGB", image.size), mask)


def cut_top_bottom(image: Image.Image, keep: float = 0.7) -> Image.Image:
    """The middle ``keep`` of the rows: a circle cut at the top and bottom."""
    top = round(image.height * (1 - keep) / 2)
    return image.crop((0, top, image.width, image.height - top))


def gradable_photos(n_synthetic: int, seed: int = 0) -> Iterator[tuple[str, Image.Image]]:
    """(case, photograph) of every gradable photograph: synthetic renders of every grade, then the real one."""
    rng = np.random.default_rng(seed)
    for i in range(n_synthetic):
        yield "synthetic", render_fundus(i % 5, rng, size=int(rng.integers(256, 400)),
                                         eye="left" if i % 2 else "right")
    retina = skimage_photo("retina.jpg")
    yield "retina", retina
    yield "retina", cut_top_bottom(retina)


def cases(n_synthetic: int) -> Iterator[tuple[str, Image.Image]]:
    """(case, photograph) for every case of the module's docstring."""
    for case, photo in gradable_photos(n_synthetic):
        yield case, photo
        for name, degrade in DEGRADATIONS.items():
            yield f"{case}, {name}", degrade(photo)
    for name in NOT_FUNDUS:
        photo = skimage_photo(name)
        yield "not fundus", photo
        yield "not fundus, in a black circle", in_black_circle(photo)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--synthetic", type=int, default=60, help="synthetic photographs (default 60)")
    args = parser.parse_args()
    results: dict[str, list[Quality]] = defaultdict(list)
    for case, photo in cases(args.synthetic):
        results[case].append(assess(photo))
    keys = ("usable_share", "retina_colour_share", "dark_share", "bright_share", "clipped_share", "focus", "coverage")
    print("| case | photographs | gradable | " + " | ".join(keys) + " | most common reason |")
    print("|---|---|---|" + "---|" * len(keys) + "---|")
    for case, verdicts in results.items():
        cells = []
        for key in keys:
            values = [q.measures[key] for q in verdicts if key in q.measures]
            cells.append(f"{min(values):.3f}-{max(values):.3f}" if values else "-")
        reasons = [q.reasons[0].split(":")[0] for q in verdicts if q.reasons]
        common = max(set(reasons), key=reasons.count) if reasons else ""
        gradable = sum(q.gradable for q in verdicts)
        print(f"| {case} | {len(verdicts)} | {gradable} | " + " | ".join(cells) + f" | {common} |")


if __name__ == "__main__":
    main()
