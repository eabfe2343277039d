"""Image files made to test the decoder's guards: icons whose directory says little of what they hold."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image


def png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def icon_holding(image: Image.Image, declared: int = 16, before_ihdr: bytes = b"",
                 declared_bytes: int | None = None) -> bytes:
    """An ICO whose one directory entry says ``declared`` x ``declared`` and holds ``image`` as a PNG, with
    ``before_ihdr`` (whole chunks) between the PNG's signature and its IHDR; the entry's byte count says
    ``declared_bytes`` (None: the PNG's true size)."""
    png = io.BytesIO()
    image.save(png, "PNG")
    data = png.getvalue()
    data = data[:8] + before_ihdr + data[8:]
    size = len(data) if declared_bytes is None else declared_bytes
    entry = struct.pack("<BBBBHHII", declared % 256, declared % 256, 0, 0, 1, 32, size, 6 + 16)
    return struct.pack("<HHH", 0, 1, 1) + entry + data
