"""The real pixel sizes inside Windows icon and cursor files (ICO, CUR), from the embedded images' own headers.

Pillow's ICO opener decodes the largest embedded image inside ``Image.open`` (to learn its true size), so the
size check that :mod:`~mmretrieval.images.decode` makes from a header comes after the pixels are in memory;
and the icon directory's one-byte sizes say nothing: a 0.7 MB icon that declares 16 x 16 can hold a
13,370 x 13,370 PNG (716 MB decoded). So icon files are measured here first, each embedded image by Pillow's
own header-only opener (as its ICO opener will read it: a PNG's chunks up to its pixels, whatever their order,
or a bitmap's DIB header), without decoding a pixel.
"""

from __future__ import annotations

import io
from typing import BinaryIO

from PIL import BmpImagePlugin, PngImagePlugin

ICON_MAGICS = (b"\x00\x00\x01\x00", b"\x00\x00\x02\x00")  # ICO, CUR: Pillow's own content checks
_ENTRY_BYTES = 16  # a directory entry: sizes, colours, planes, bits, bytes, offset
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def icon_pixels(fp: BinaryIO) -> int | None:
    """The most pixels among the images an ICO or CUR file holds, or None when ``fp`` is not an icon file (the
    magic number and at least one entry: an uncompressed TGA starts as a CUR with none). ``fp`` is left at its
    start.

    An entry that Pillow's header-only openers cannot read counts nothing: Pillow then refuses the file itself
    when it reaches it.
    """
    try:
        fp.seek(0)
        header = fp.read(6)
        count = int.from_bytes(header[4:6], "little")
        if header[:4] not in ICON_MAGICS or count == 0:
            return None
        directory = fp.read(_ENTRY_BYTES * count)
        most = 0
        for start in range(0, len(directory) - _ENTRY_BYTES + 1, _ENTRY_BYTES):
            size = int.from_bytes(directory[start + 8:start + 12], "little")
            fp.seek(int.from_bytes(directory[start + 12:start + 16], "little"))
            width, height = _entry_size(fp.read(size))
            most = max(most, width * height)
        return most
    finally:
        fp.seek(0)


def _entry_size(data: bytes) -> tuple[int, int]:
    """An embedded image's size as Pillow's ICO opener will find it, from its header alone; (0, 0) if unreadable.
    A bitmap's height counts its mask too (twice the image's): an over-count, on the safe side."""
    try:
        opener = PngImagePlugin.PngImageFile if data[:8] == _PNG_SIGNATURE else BmpImagePlugin.DibImageFile
        with opener(io.BytesIO(data)) as image:  # reads the header (a PNG's chunks up to IDAT), decodes nothing
            return image.size
    except Exception:  # Pillow's openers raise many types for a damaged header
        return 0, 0
