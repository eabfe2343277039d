"""The real pixel sizes inside Windows icon and cursor files (ICO, CUR), from the embedded images' own headers.

Pillow's ICO opener decodes the largest embedded image inside ``Image.open`` (to learn its true size), so the
size check that :mod:`~mmretrieval.images.decode` makes from a header comes after the pixels are in memory;
and the icon directory's one-byte sizes say nothing: a 0.7 MB icon that declares 16 x 16 can hold a
13,370 x 13,370 PNG (716 MB decoded). So icon files are measured here first, each embedded image by Pillow's
own header-only opener (as its ICO opener will read it: a PNG's chunks up to its pixels, whatever their order,
or a bitmap's DIB header), without decoding a pixel.
"""

from __future__ import annotations

from typing import BinaryIO

from PIL import BmpImagePlugin, PngImagePlugin

ICON_MAGICS = (b"\x00\x00\x01\x00", b"\x00\x00\x02\x00")  # ICO, CUR: Pillow's own content checks
_ENTRY_BYTES = 16  # a directory entry: sizes, colours, planes, bits, bytes, offset
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def is_icon(header: bytes) -> bool:
    """Whether a file's first 6 bytes are an ICO's or CUR's: the magic number and at least one entry (an
    uncompressed TGA starts as a CUR with none)."""
    return header[:4] in ICON_MAGICS and int.from_bytes(header[4:6], "little") > 0


def icon_pixels(fp: BinaryIO) -> int | None:
    """The most pixels among the images an ICO or CUR file holds, or None when ``fp`` is not an icon file
    (:func:`is_icon`). ``fp`` is left at its start.

    Each entry is read where Pillow's ICO opener reads it: from its offset in the file, whatever byte count the
    entry declares (Pillow reads a PNG's chunks up to its pixels however many there are); an offset shared by
    several entries is read once. An entry that cannot be read counts nothing: Pillow then refuses the file
    itself when it reaches it.
    """
    try:
        fp.seek(0)
        header = fp.read(6)
        if not is_icon(header):
            return None
        directory = fp.read(_ENTRY_BYTES * int.from_bytes(header[4:6], "little"))
        offsets = {int.from_bytes(directory[start + 12:start + 16], "little")
                   for start in range(0, len(directory) - _ENTRY_BYTES + 1, _ENTRY_BYTES)}
        return max((_pixels_at(fp, offset) for offset in offsets), default=0)
    finally:
        fp.seek(0)


def _pixels_at(fp: BinaryIO, offset: int) -> int:
    """The pixels of the image at ``offset`` as Pillow's ICO opener will find them, from its header alone (0 if
    unreadable). A bitmap's height counts its mask too (twice the image's): an over-count, on the safe side."""
    try:
        fp.seek(offset)
        signature = fp.read(8)
        fp.seek(offset)
        opener = PngImagePlugin.PngImageFile if signature == _PNG_SIGNATURE else BmpImagePlugin.DibImageFile
        width, height = opener(fp).size  # reads the header (a PNG's chunks up to IDAT), decodes nothing
        return width * height
    except Exception:  # Pillow's openers raise many types for a damaged header
        return 0
