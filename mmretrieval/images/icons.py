"""The real pixel sizes inside Windows icon and cursor files (ICO, CUR), from the embedded images' own headers.

Pillow's ICO opener decodes the largest embedded image inside ``Image.open`` (to learn its true size), so the
size check that :mod:`~mmretrieval.images.decode` makes from a header comes after the pixels are in memory;
and the icon directory's one-byte sizes say nothing: a 0.7 MB icon that declares 16 x 16 can hold a
13,370 x 13,370 PNG (716 MB decoded). So icon files are measured here first, without decoding a pixel.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

ICON_MAGICS = (b"\x00\x00\x01\x00", b"\x00\x00\x02\x00")  # ICO, CUR: Pillow's own content checks
_ENTRY_BYTES = 16  # a directory entry: sizes, colours, planes, bits, bytes, offset
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def icon_pixels(fp: BinaryIO) -> int | None:
    """The most pixels among the images an ICO or CUR file holds (each embedded PNG's IHDR, or each bitmap's
    DIB header, whose height counts the image and its mask), or None when ``fp`` is not an icon file.
    ``fp`` is left at its start.

    A damaged directory (an entry past the end of the file) counts nothing for that entry: Pillow then refuses
    the file itself.
    """
    try:
        fp.seek(0)
        header = fp.read(6)
        if header[:4] not in ICON_MAGICS:
            return None
        count = int.from_bytes(header[4:6], "little")
        directory = fp.read(_ENTRY_BYTES * count)
        most = 0
        for start in range(0, len(directory) - _ENTRY_BYTES + 1, _ENTRY_BYTES):
            offset = int.from_bytes(directory[start + 12:start + 16], "little")
            fp.seek(offset)
            head = fp.read(24)
            if head[:8] == _PNG_SIGNATURE and len(head) == 24:
                width, height = struct.unpack(">II", head[16:24])
            elif len(head) >= 12:
                width, height = (abs(side) for side in struct.unpack("<ii", head[4:12]))
            else:
                continue
            most = max(most, width * height)
        return most
    finally:
        fp.seek(0)
