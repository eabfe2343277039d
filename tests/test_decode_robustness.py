"""decode_image never lets a raw Pillow exception out, whatever prefix of a real file it is given."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from mmretrieval.errors import ImageDecodeError
from mmretrieval.images.decode import decode_image
from mmretrieval.images.formats import ensure_openers
from mmretrieval.images.metadata import photo_metadata
from crafted_images import icon_holding, png_chunk


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


def test_an_icon_holding_too_many_pixels_is_refused_before_pillow_decodes_it(monkeypatch):
    """Pillow's ICO opener decodes the embedded image inside Image.open, so the limit, checked from the opened
    image's size, came after the pixels were in memory (a security walkthrough: a 0.7 MB icon declaring 16 x 16
    held a 13,370 x 13,370 PNG, 716 MB decoded; four uploads took a server from 2 to 4 GB)."""
    from PIL import IcoImagePlugin

    from mmretrieval.images.decode import read_header

    icon = icon_holding(Image.new("1", (2000, 1500)))
    decoded = []
    frame = IcoImagePlugin.IcoFile.frame
    monkeypatch.setattr(IcoImagePlugin.IcoFile, "frame", lambda self, idx: decoded.append(idx) or frame(self, idx))
    with pytest.raises(ImageDecodeError) as refused:
        decode_image(icon, max_pixels=1_000_000)
    assert refused.value.reason == "decompression_bomb" and "3000000 pixels, over the limit" in str(refused.value)
    assert read_header(icon, "favicon.ico") is None  # the header read decodes nothing either
    assert decoded == []
    small = decode_image(icon_holding(Image.new("RGB", (32, 32), (0, 0, 255)), declared=32), max_pixels=1_000_000)
    assert small.format == "ICO" and small.image.size == (32, 32) and decoded == [0]


@pytest.mark.parametrize("trick", ["a chunk before IHDR", "two IHDRs", "an entry declaring 8 bytes"])
def test_an_icon_is_measured_as_pillow_reads_its_png_not_by_the_first_bytes(monkeypatch, trick):
    """The first check read a PNG's size at bytes 16-24; Pillow takes IHDR wherever it is before the pixels, the
    last one if two: a 1 x 1 there let a 12,000-pixel-square PNG through, decoded inside Image.open (a review)."""
    from PIL import IcoImagePlugin

    decoded = []
    frame = IcoImagePlugin.IcoFile.frame
    monkeypatch.setattr(IcoImagePlugin.IcoFile, "frame", lambda self, idx: decoded.append(idx) or frame(self, idx))
    one_by_one = png_chunk(b"IHDR", bytes.fromhex("00000001 00000001 0800000000"))
    before = png_chunk(b"prVt", b"(1, 1)") if trick == "a chunk before IHDR" else one_by_one
    if trick == "an entry declaring 8 bytes":  # Pillow reads a PNG entry past the bytes it declares (a review)
        icon = icon_holding(Image.new("1", (2000, 1500)), declared_bytes=8)
    else:
        icon = icon_holding(Image.new("1", (2000, 1500)), before_ihdr=before)
    with pytest.raises(ImageDecodeError, match="3000000 pixels, over the limit"):
        decode_image(icon, max_pixels=1_000_000)
    assert decoded == []


def test_an_uncompressed_tga_is_not_taken_for_a_cursor():
    """Its first bytes (00 00 02 00) are CUR's magic number: the header read returned nothing for every such TGA
    (a review); a cursor has at least one entry, such a TGA none."""
    from mmretrieval.images.decode import read_header

    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (9, 9, 9)).save(buffer, "TGA", compression=None)
    assert buffer.getvalue()[:4] == b"\x00\x00\x02\x00"
    header = read_header(buffer.getvalue(), "scan.tga")
    assert (header.width, header.height, header.format) == (40, 30, "TGA")


def test_a_png_header_read_decodes_no_pixel_to_look_for_exif():
    """read_header promised "no pixel decoded", but Pillow's getexif() loads a whole PNG that has no eXIf chunk
    before its pixels: 1.9 GB for three 13,370-pixel-square PNGs on an ingest's planning threads."""
    from PIL import PngImagePlugin

    from mmretrieval.images.decode import read_header

    buffer = io.BytesIO()
    Image.new("RGB", (300, 200)).save(buffer, "PNG")
    loads = []
    load = PngImagePlugin.PngImageFile.load
    PngImagePlugin.PngImageFile.load = lambda self: loads.append(1) or load(self)
    try:
        header = read_header(buffer.getvalue(), "plain.png")
    finally:
        PngImagePlugin.PngImageFile.load = load
    assert (header.width, header.height, header.format) == (300, 200, "PNG") and loads == []
    assert read_header(_encoded("PNG"), "rotated.png").exif[0x0112] == 6  # an eXIf chunk before the pixels is read


@pytest.mark.parametrize("fmt", ["ICNS", "BLP"])
def test_formats_that_decode_past_their_header_are_not_opened(fmt):
    """An ICNS opens at its entry type's size, a BLP at its header's, and each decodes what it holds (a PNG or a
    JPEG: a BLP declaring 16 x 16 held a 10,000-pixel-square JPEG, 1 GB decoded under a 50 MP limit; a review)."""
    buffer = io.BytesIO()
    Image.new("RGB" if fmt == "ICNS" else "P", (128, 128)).save(buffer, fmt)
    with pytest.raises(ImageDecodeError) as refused:
        decode_image(buffer.getvalue())
    assert refused.value.reason == "not_an_image"
