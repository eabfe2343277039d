"""decode_image never lets a raw Pillow exception out, whatever prefix of a real file it is given."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from mmretrieval.errors import ImageDecodeError
from mmretrieval.images.decode import decode_image


def _encoded(fmt: str, **options) -> bytes:
    image = Image.new("RGB", (48, 40), (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.save(buffer, fmt, exif=exif, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "TIFF"])
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
