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


def test_threads_decoding_at_once_leave_the_process_warning_filters_as_they_were():
    """``warnings.catch_warnings`` in the decoder swapped the process's filters: web UI requests decoding at once
    left Pillow's size warning turned into an error, and a 108-megapixel upload then failed as
    "DecompressionBombWarning". A header-only 100-megapixel PNG (over Pillow's 89.5, under our 268) is decoded by
    8 threads at once; it fails as truncated, never as a bomb, and the filters stay as they were."""
    import threading
    import warnings

    from test_ingest import png_bomb

    data = png_bomb(10_000, 10_000)
    before = list(warnings.filters)
    reasons: list[str] = []
    start = threading.Barrier(8)

    def decode_many() -> None:
        start.wait()
        for _ in range(40):
            try:
                decode_image(data)
            except ImageDecodeError as exc:
                reasons.append(exc.reason)

    with warnings.catch_warnings():  # this test's own (single-threaded) scope for Pillow's warning
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        inside = list(warnings.filters)
        threads = [threading.Thread(target=decode_many) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert list(warnings.filters) == inside
    assert list(warnings.filters) == before
    assert set(reasons) == {"truncated"} and len(reasons) == 320
