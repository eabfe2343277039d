"""Safe image decoding: every untrusted image goes through :func:`decode_image`.

Pillow's decompression-bomb limit stays on (and is enforced before any pixel is decoded), truncated files
are errors rather than half-grey images, and whatever the file's mode (CMYK, 16-bit, palette, alpha,
animation) the result is a plain 8-bit RGB image the right way up.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageDecodeError
from .formats import IMAGE_EXTENSIONS, SNIFF_BYTES, decodable_formats, is_raw_header, is_raw_name, sniff

__all__ = ["DEFAULT_MAX_PIXELS", "IMAGE_EXTENSIONS", "MAX_FILE_BYTES", "DecodedImage", "decode_file_bytes",
           "decode_image", "decode_path", "load_image", "read_image_file", "to_rgb"]
# Pillow's own default (about 89.5 megapixels): large enough for any camera, small enough to stop bombs.
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485
MAX_FILE_BYTES = 256 * 1024 * 1024
_WHITE = (255, 255, 255)


@dataclass(frozen=True)
class DecodedImage:
    """An RGB image plus what the catalog records about the original file."""

    image: Image.Image  # 8-bit RGB, EXIF orientation applied, possibly reduced by JPEG draft mode
    width: int  # the original's width in pixels, after orientation
    height: int  # the original's height in pixels, after orientation
    format: str  # Pillow's format name, e.g. "JPEG"
    exif: Image.Exif | None = field(default=None, repr=False, compare=False)  # as in the file, orientation included


def decode_image(
    source: str | os.PathLike | bytes | BinaryIO,
    *,
    draft_size: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> DecodedImage:
    """Decode one image defensively.

    Args:
        source: a path, the file's bytes, or a binary file object.
        draft_size: for JPEGs, let the decoder shrink by a power of two while both sides stay at least
            this large (much faster for big photos when the model wants 224 pixels).
        max_pixels: refuse images with more pixels than this (decompression bombs).

    Returns:
        The decoded image.

    Raises:
        ImageDecodeError: with ``reason`` one of ``not_regular_file``, ``empty_file``, ``too_large``,
            ``not_an_image``, ``decompression_bomb``, ``truncated``, ``corrupt``.
    """
    fp = _open_source(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                image = Image.open(fp, formats=decodable_formats())
            except UnidentifiedImageError as exc:
                kind = _sniff_start(fp)
                if kind is not None:  # e.g. a HEIC cut short: its opener refuses it, but it is a damaged image
                    raise ImageDecodeError("corrupt", f"starts like a {kind} image but cannot be read "
                                           "(damaged or cut short)") from exc
                raise ImageDecodeError("not_an_image", "not an image format Pillow or pillow-heif can read") from exc
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise ImageDecodeError("decompression_bomb", f"refused: {exc}") from exc
            except (OSError, SyntaxError, ValueError, EOFError) as exc:  # headers cut short or malformed
                reason = "truncated" if "truncated" in str(exc).lower() else "corrupt"
                raise ImageDecodeError(reason, f"cannot read the image header: {exc}") from exc
            return _decode_opened(image, draft_size=draft_size, max_pixels=max_pixels)
    finally:
        fp.close()


def decode_file_bytes(data: bytes, name: str | os.PathLike, *, draft_size: int | None = None,
                      max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode a file's bytes: camera RAW (known by ``name`` or by content) from its embedded preview, anything
    else with :func:`decode_image`.

    Raises:
        ImageDecodeError: as :func:`decode_image`, or ``raw_unsupported`` for a RAW file without rawpy.
    """
    if is_raw_name(name) or is_raw_header(data[:SNIFF_BYTES]):
        from .raw import decode_raw  # rawpy is optional: imported only for RAW files

        return decode_raw(data, draft_size=draft_size, max_pixels=max_pixels)
    return decode_image(data, draft_size=draft_size, max_pixels=max_pixels)


def decode_path(path: str | os.PathLike, *, draft_size: int | None = None,
                max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """:func:`decode_file_bytes` of a file, read safely (:func:`read_image_file`)."""
    return decode_file_bytes(read_image_file(path), path, draft_size=draft_size, max_pixels=max_pixels)


def _sniff_start(fp: BinaryIO) -> str | None:
    try:
        fp.seek(0)
        return sniff(fp.read(SNIFF_BYTES))
    except (OSError, ValueError):  # an unseekable stream: say nothing more than "not an image"
        return None


def load_image(source: str | os.PathLike | bytes | BinaryIO, **kwargs) -> Image.Image:
    """Just the RGB image of :func:`decode_image`."""
    return decode_image(source, **kwargs).image


def _open_source(source: str | os.PathLike | bytes | BinaryIO) -> BinaryIO:
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageDecodeError("empty_file", "the file is empty")
        return io.BytesIO(bytes(source))
    if not isinstance(source, (str, os.PathLike)):
        return source
    return io.BytesIO(read_image_file(source))


def read_image_file(path: str | os.PathLike) -> bytes:
    """The bytes of a regular file, refusing anything that could block or never end.

    Opened with O_NONBLOCK (a FIFO that appeared since a directory walk must not wait for a writer) and
    checked with fstat on the open descriptor, so the file cannot be swapped between check and read.

    Raises:
        ImageDecodeError: ``unreadable``, ``not_regular_file``, ``too_large`` or ``empty_file``.
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as exc:
        raise ImageDecodeError("unreadable", f"cannot open {path}: {exc.strerror}") from exc
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        # FIFOs, devices and sockets can block forever or never end: never read them.
        if not stat.S_ISREG(info.st_mode):
            raise ImageDecodeError("not_regular_file", f"{path} is not a regular file")
        if info.st_size > MAX_FILE_BYTES:
            raise ImageDecodeError("too_large", f"{path} is {info.st_size} bytes, over the {MAX_FILE_BYTES} limit")
        data = handle.read(MAX_FILE_BYTES + 1)
    if not data:
        raise ImageDecodeError("empty_file", f"{path} is empty")
    return data


def _decode_opened(image: Image.Image, *, draft_size: int | None, max_pixels: int) -> DecodedImage:
    width, height = image.size
    if width * height > max_pixels:
        raise ImageDecodeError(
            "decompression_bomb", f"{width}x{height} is {width * height} pixels, over the {max_pixels} limit"
        )
    file_format = image.format or "unknown"
    exif = _read_exif(image)
    orientation = exif.get(0x0112, 1) if exif is not None else 1
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    if draft_size and file_format in ("JPEG", "MPO"):
        image.draft("RGB", (draft_size, draft_size))
    try:
        image.load()  # animations open on their first frame (no seek: a PSD's "frames" are layers from 1)
    except OSError as exc:
        reason = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        raise ImageDecodeError(reason, f"cannot decode: {exc}") from exc
    except (SyntaxError, ValueError, EOFError) as exc:  # Pillow's plugins raise these for malformed data
        raise ImageDecodeError("corrupt", f"cannot decode: {exc}") from exc
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a malformed EXIF block must not lose an otherwise good image
        pass
    return DecodedImage(image=to_rgb(image), width=width, height=height, format=file_format, exif=exif)


def _read_exif(image: Image.Image) -> Image.Exif | None:
    try:
        return image.getexif()
    except Exception:  # PNG EXIF is read from the chunks: a truncated file fails here and load() says why;
        return None  # other formats' malformed EXIF blocks must not lose an otherwise good image


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: 16-bit scaled down, transparency composited on white."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        pixels = np.asarray(image, dtype=np.float64)
        scaled = np.clip(pixels / 257.0, 0, 255).round().astype(np.uint8)
        return Image.fromarray(scaled, mode="L").convert("RGB")
    if mode == "F":
        pixels = np.asarray(image, dtype=np.float64)
        return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
