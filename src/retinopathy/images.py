"""Decode any photograph to an upright 8-bit RGB image, whatever its mode, bit depth or orientation.

``Image.convert("RGB")`` alone gets three kinds of file wrong: it clips 16-bit and 32-bit
grayscale at 255 (a fundus becomes a white disc), it drops alpha and keeps whatever colour the
transparent pixels hold (a white background becomes part of the field of view), and it ignores
the EXIF orientation tag (sideways photographs stay sideways). Here deep modes are scaled by their
bit depth, transparent pixels become black (the fundus background) and the EXIF orientation is
applied. A file whose header claims more than :data:`MAX_PIXELS` pixels is refused before it is
decoded, so a tiny file cannot make the decoder allocate gigabytes (a "decompression bomb").

This module imports only PIL and numpy, so every other module may use it.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

# Modes whose colour channels are already multiplied by alpha, i.e. already composited on black.
PREMULTIPLIED_MODES = ("La", "RGBa")
DEEP_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
# The most pixels a photograph may have: 100 megapixels is several times any fundus camera's frame (the
# Kaggle/EyePACS photographs are under 20 MP) and decodes to 300 MB of 8-bit RGB. It is PIL's own guard too
# (for the whole process), so a bomb is caught while its header is read, on every path: PIL warns above the
# limit, which open_rgb turns into an error, and raises at twice it.
MAX_PIXELS = 100_000_000
Image.MAX_IMAGE_PIXELS = MAX_PIXELS


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB: deep modes scaled by bit depth, never clipped; alpha composited on black.

    Raises:
        ValueError: for a mode PIL cannot convert to RGB, or a float image with NaN or infinite values.
    """
    if image.mode in DEEP_MODES:
        return _deep_to_rgb(image)
    if image.mode in PREMULTIPLIED_MODES:
        # PIL cannot convert La at all; the colour bands alone are the composite on black.
        bands = image.split()[:-1]
        return Image.merge("RGB", bands * 3 if len(bands) == 1 else bands)
    # Covers the alpha modes, a tRNS chunk (info["transparency"]) and a palette with alpha.
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB")
    try:
        # Always a new image (convert copies even an RGB one), so it outlives the file it was read from.
        return image.convert("RGB")
    except ValueError as exc:
        raise ValueError(f"cannot convert image mode {image.mode!r} to RGB: {exc}") from exc


def _deep_to_rgb(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit integer or float grayscale as 8-bit RGB, scaled by the range its values use."""
    values = np.asarray(image, dtype=np.float64)
    if not np.isfinite(values).all():
        raise ValueError(f"image of mode {image.mode!r} has NaN or infinite values")
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if image.mode.startswith("I;16"):
        scaled = values / 257.0  # 65535 -> 255
    elif low >= 0.0 and image.mode == "F" and high <= 1.0:
        scaled = values * 255.0  # a float image in [0, 1]
    elif low >= 0.0 and high <= 255.0:
        scaled = values  # 8-bit values stored in a deep mode
    elif low >= 0.0 and high <= 65535.0:
        scaled = values / 257.0  # 16-bit values (PIL reads some 16-bit files as mode I)
    else:
        # Negative or beyond 16 bits: no bit depth to trust, so the image's own range maps to 0..255.
        scaled = (values - low) * (255.0 / (high - low))
    if "transparency" in image.info and image.mode != "F":
        # A grayscale PNG's tRNS chunk names one transparent level: those pixels become black.
        scaled = np.where(values == image.info["transparency"], 0.0, scaled)
    gray = Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8))
    return Image.merge("RGB", (gray, gray, gray))


class TooManyPixelsError(ValueError):
    """A photograph whose header claims more than :data:`MAX_PIXELS` pixels (a decompression bomb, or not a
    photograph)."""


def open_rgb(path: str | os.PathLike[str], *, draft_side: int | None = None) -> tuple[Image.Image, bool]:
    """Decode ``path`` upright as 8-bit RGB; a JPEG at the smallest scale whose shorter side is at least ``draft_side``.

    Returns:
        The image and whether it was decoded at reduced scale.

    Raises:
        FileNotFoundError: naming the missing file.
        TooManyPixelsError: naming a file with more than :data:`MAX_PIXELS` pixels (a ``ValueError``).
        ValueError: naming a corrupt, truncated or unreadable file.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                check_pixel_count(img.size)  # in case Image.MAX_IMAGE_PIXELS was changed since import
                full = img.size
                if draft_side is not None and img.format == "JPEG":
                    img.draft("RGB", (draft_side, draft_side))
                reduced = img.size != full
                # After draft: libjpeg picks the reduced scale on the stored frame, and transposing first would
                # decode it in full.
                if img.getexif().get(ExifTags.Base.Orientation, 1) not in (0, 1):
                    img = ImageOps.exif_transpose(img)
                return to_rgb(img), reduced
    except FileNotFoundError:
        raise FileNotFoundError(f"image not found: {path}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning, TooManyPixelsError) as exc:
        raise TooManyPixelsError(f"image {path} is too large to decode: {exc}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"corrupt or unreadable image {path}: {exc}") from exc


def check_pixel_count(size: tuple[int, int]) -> None:
    """Refuse a ``(width, height)`` over :data:`MAX_PIXELS` before any pixel is decoded.

    Raises:
        TooManyPixelsError: giving the size and the limit.
    """
    width, height = size
    if width * height > MAX_PIXELS:
        raise TooManyPixelsError(f"{width} x {height} = {width * height:,} pixels, "
                                 f"more than the limit of {MAX_PIXELS:,}")
