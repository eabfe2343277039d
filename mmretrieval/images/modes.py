"""Any Pillow image mode as the 8-bit RGB the models take: 16-bit and float pixels scaled, transparency
composited on white, a band of rows at a time so that a big scan or a big transparent PNG is never copied whole.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

_WHITE = (255, 255, 255)
_BAND_PIXELS = 1 << 22  # pixels converted at a time (32 MB of float64 for 16-bit or float scans)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: 16-bit scaled down, transparency composited on white.

    Memory stays near the decoded image's own (800 MB for a 200-megapixel RGB PNG): 16-bit and float pixels are
    scaled, and transparency composited, a band of rows at a time.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        return _grey_by_bands(image, divisor=257.0, rounded=True)
    if mode == "F":
        return _grey_by_bands(image, divisor=1.0, rounded=False)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        return _on_white_by_bands(image)
    return image.convert("RGB")


def _on_white_by_bands(image: Image.Image) -> Image.Image:
    """An image with transparency composited on white, as RGB, a band of rows at a time: the white backdrop, the
    composite and an RGBA copy of the whole image took an 8,000² RGBA PNG's thumbnail to ~900 MiB."""
    width, height = image.size
    rows = max(1, _BAND_PIXELS // max(1, width))
    rgb = Image.new("RGB", image.size)
    for top in range(0, height, rows):
        band = image.crop((0, top, width, min(top + rows, height)))  # (a palette image keeps its transparency)
        band = band if band.mode == "RGBA" else band.convert("RGBA")
        white = Image.new("RGBA", band.size, _WHITE + (255,))
        rgb.paste(Image.alpha_composite(white, band).convert("RGB"), (0, top))
    return rgb


def _grey_by_bands(image: Image.Image, *, divisor: float, rounded: bool) -> Image.Image:
    """A one-channel image of any depth as 8-bit RGB: values divided by ``divisor``, clipped to 0-255, then rounded
    or truncated; a band of rows at a time, in place, so no float copy of a whole big scan is ever made."""
    width, height = image.size
    rows = max(1, _BAND_PIXELS // max(1, width))
    grey = np.empty((height, width), dtype=np.uint8)
    for top in range(0, height, rows):
        band = np.array(image.crop((0, top, width, min(top + rows, height))), dtype=np.float64)
        band /= divisor
        np.clip(band, 0, 255, out=band)
        if rounded:
            np.round(band, out=band)
        np.copyto(grey[top:top + band.shape[0]], band, casting="unsafe")  # truncates, as astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")
