"""decode_image never lets a raw Pillow exception out, whatever prefix of a real file it is given."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from mmretrieval.errors import ImageDecodeError
from mmretrieval.images.decode import decode_image
from mmretrieval.images.formats import ensure_openers
from mmretrieval.images.metadata import photo_metadata


def _encoded(fmt: str, orientation: object = 6, **options) -> bytes:
    ensure_openers()  # HEIF
    image = Image.new("RGB", (48, 40), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, fmt, exif=exif, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "TIFF", "HEIF"])
def test_every_prefix_is_an_image_or_an_image_decode_error(fmt):
    data = _encoded(fmt) if fmt != "GIF" else _encoded(fmt, save_all=True)
    full = decode_image(data)
    assert full.image.mode == "RGB"
    reasons = set()
    for cut in range(1, len(data), max(1, len(data) // 120)):
        try:
            decode_image(data[:cut])
        except ImageDecodeError as exc:
            reasons.add(exc.reason)
    assert reasons <= {"not_an_image", "truncated", "corrupt"} and reasons


@pytest.mark.parametrize("orientation", [0, 9, 65535])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF", "HEIF"])
def test_an_orientation_outside_1_to_8_is_read_as_upright(fmt, orientation):
    decoded = decode_image(_encoded(fmt, orientation))
    meta = photo_metadata(decoded.exif, mtime_ns=0, width=decoded.width, height=decoded.height)
    assert (decoded.width, decoded.height) == decoded.image.size == (48, 40) and meta.orientation == 1
