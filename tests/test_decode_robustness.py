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


@pytest.mark.parametrize("kind", ["jpeg-1", "jpeg-6", "jpeg-8", "png", "webp", "gif", "tiff-6", "heic-6"])
def test_a_header_read_gives_the_size_and_format_a_decode_records(kind):
    """An imported row's file is read by its header alone (no decoder to hang or crash outside the pool): its
    upright size and format must be what ingestion records from a decode, EXIF rotations and all."""
    from mmretrieval.images.decode import read_header

    ensure_openers()
    name, _, orientation = kind.partition("-")
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = int(orientation)
    buffer = io.BytesIO()
    picture = Image.new("RGB", (60, 40), (20, 120, 220))
    if name == "heic":
        pytest.importorskip("pillow_heif")
    picture.save(buffer, {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "gif": "GIF", "tiff": "TIFF",
                          "heic": "HEIF"}[name], exif=exif.tobytes())
    data = buffer.getvalue()
    header, decoded = read_header(data, f"x.{name}"), decode_image(data)
    assert (header.width, header.height, header.format) == (decoded.width, decoded.height, decoded.format)
    assert photo_metadata(header.exif, mtime_ns=None).orientation == photo_metadata(decoded.exif,
                                                                                    mtime_ns=None).orientation


def test_a_header_read_leaves_camera_raw_and_non_images_alone():
    from mmretrieval.images.decode import read_header

    buffer = io.BytesIO()
    Image.new("RGB", (60, 40)).save(buffer, "TIFF")  # a NEF is a TIFF container: its IFD0 is a thumbnail
    assert read_header(buffer.getvalue(), b"/cards/DSC_0001.NEF") is None  # a path key (bytes) names it RAW too
    assert read_header(b"not an image at all", "x.jpg") is None
