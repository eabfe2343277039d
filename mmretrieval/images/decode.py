"""Safe image decoding: every untrusted image goes through :func:`decode_image`.

The decompression-bomb limit stays on: an image with more than ``max_pixels`` pixels (by default
:data:`DEFAULT_MAX_PIXELS`, about 268 megapixels) is refused from its header, before any pixel is decoded.
Pillow's own limit (``Image.MAX_IMAGE_PIXELS``, 89.5 megapixels) is lower than today's cameras need, so an image
that Pillow refuses and our limit allows is opened again with Pillow's limit raised to ours for that one image
(:func:`_pillow_allows`). Truncated files are errors rather than half-grey images, and whatever the file's mode
(CMYK, 16-bit, palette, alpha, animation) the result is a plain 8-bit RGB image the right way up.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import stat
import threading
import warnings
from dataclasses import dataclass, field
from typing import BinaryIO, Iterator

from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageDecodeError
from .formats import IMAGE_EXTENSIONS, SNIFF_BYTES, decodable_formats, is_raw_header, is_raw_name, sniff
from .icons import icon_pixels, is_icon
from .modes import to_rgb

__all__ = ["DEFAULT_MAX_PIXELS", "IMAGE_EXTENSIONS", "MAX_FILE_BYTES", "DecodedImage", "check_icon", "check_pixels",
           "decode_file_bytes", "decode_image", "decode_path", "load_image", "read_header", "read_image_file", "to_rgb"]
# sharp's default ``limitInputPixels`` (immich decodes with sharp): 16383 x 16383, about 268 megapixels. Every camera
# photo fits: 200-megapixel phone modes (16320 x 12240), medium format (Fujifilm GFX100, 11648 x 8736), pixel-shift
# composites (Sony A7R V, 19008 x 12672). With ``draft_size`` (ingestion passes it) a JPEG decodes at 1/8 scale and
# costs little at any size; other formats decode at full size, 4 bytes a pixel in Pillow (1 GB at this limit, up to
# 2 GB for RGBA while it is composited): callers short of memory pass less.
DEFAULT_MAX_PIXELS = 0x3FFF * 0x3FFF
MAX_FILE_BYTES = 256 * 1024 * 1024
_ORIENTATION = 0x0112
# Pillow's refusals: over twice its limit an error; over it once a warning, an exception only where the caller's
# filters make it one (``python -W error``): either way opened again under our limit
_PILLOW_BOMBS = (Image.DecompressionBombError, Image.DecompressionBombWarning)
_PILLOW_PIXELS = re.compile(r"\((\d+) pixels\)")  # the image's size in Pillow's refusal
_pillow_limit_lock = threading.Lock()


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
        max_pixels: refuse images with more pixels than this (decompression bombs), from the header, before
            a pixel is decoded; :data:`DEFAULT_MAX_PIXELS` passes any camera photo.

    Returns:
        The decoded image.

    Raises:
        ImageDecodeError: with ``reason`` one of ``not_regular_file``, ``empty_file``, ``too_large``,
            ``not_an_image``, ``decompression_bomb``, ``truncated``, ``corrupt``.
    """
    fp = _open_source(source)
    try:
        try:
            return _decode(fp, draft_size, max_pixels)
        except _PILLOW_BOMBS as exc:
            refusal = exc
        if _pillow_limit_below(max_pixels) and _rewind(fp):  # Pillow's limit refused it; ours may not
            with _pillow_allows(max_pixels):
                try:
                    return _decode(fp, draft_size, max_pixels)
                except _PILLOW_BOMBS as exc:
                    refusal = exc
        match = _PILLOW_PIXELS.search(str(refusal))
        raise _over_limit(f"it has {match[1]} pixels" if match else "it has too many pixels", max_pixels) from refusal
    finally:
        fp.close()


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    """Refuse an image of ``width`` x ``height`` pixels when that is more than ``max_pixels``.

    Raises:
        ImageDecodeError: ``decompression_bomb``, naming the size, the limit and how to raise it.
    """
    if width * height > max_pixels:
        raise _over_limit(f"{width}x{height} is {width * height} pixels", max_pixels)


def check_icon(fp: BinaryIO, max_pixels: int) -> None:
    """Refuse an ICO or CUR file that holds an image of more than ``max_pixels`` pixels, before Pillow opens it:
    its opener decodes the largest image to open the file (:mod:`~mmretrieval.images.icons`).

    Raises:
        ImageDecodeError: ``decompression_bomb``, naming the size, the limit and how to raise it.
    """
    pixels = icon_pixels(fp)
    if pixels is not None and pixels > max_pixels:
        raise _over_limit(f"it holds an image of {pixels} pixels", max_pixels)


def refused_pixels(message: str | None) -> int | None:
    """The pixel count a ``decompression_bomb`` failure's message names (:func:`check_pixels`), None if it names
    none: a run whose limit passes that many retries the file (planning)."""
    match = re.search(r"(\d+) pixels, over the limit", message or "")
    return int(match[1]) if match else None


def _over_limit(size: str, max_pixels: int) -> ImageDecodeError:
    return ImageDecodeError("decompression_bomb", f"{size}, over the limit of {max_pixels} pixels (a guard against "
                            "decompression bombs); if it is a real photo, raise the limit with --max-pixels")


def _decode(fp: BinaryIO, draft_size: int | None, max_pixels: int) -> DecodedImage:
    """Open and decode; Pillow's own decompression-bomb refusals are left to the caller.

    No ``warnings.catch_warnings`` here: it swaps the process's filters, and threads decoding at once (the web
    UI's requests, planning's threads) left Pillow's size warning turned into an error for good, so a 108-megapixel
    upload failed as "DecompressionBombWarning". Our limit is checked from the header (:func:`check_pixels`).
    """
    check_icon(fp, max_pixels)
    try:
        image = Image.open(fp, formats=decodable_formats())
    except UnidentifiedImageError as exc:
        kind = _sniff_start(fp)
        if kind is not None:  # e.g. a HEIC cut short: its opener refuses it, but it is a damaged image
            raise ImageDecodeError("corrupt", f"starts like a {kind} image but cannot be read "
                                   "(damaged or cut short)") from exc
        raise ImageDecodeError("not_an_image", "not an image format Pillow or pillow-heif can read") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # headers cut short or malformed
        reason = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        raise ImageDecodeError(reason, f"cannot read the image header: {exc}") from exc
    return _decode_opened(image, draft_size=draft_size, max_pixels=max_pixels)


def quiet_pillow_size_warning() -> None:
    """Stop Pillow's warning about images over its own limit (89.5 megapixels) in this process: our limit decides
    from the header, and a 108-megapixel phone photo is no attack. For the processes this package runs (the
    ``mmr`` command, its decoding workers); a library caller keeps Pillow's warning."""
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def _pillow_limit_below(max_pixels: int) -> bool:
    return Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels


def _rewind(fp: BinaryIO) -> bool:
    try:
        fp.seek(0)
    except (OSError, ValueError, AttributeError):  # a stream read once: it cannot be opened again
        return False
    return True


@contextlib.contextmanager
def _pillow_allows(max_pixels: int) -> Iterator[None]:
    """Pillow's limit raised to ``max_pixels`` while one image that Pillow refused is opened and decoded again.

    ``Image.MAX_IMAGE_PIXELS`` is a process-wide global, so it is raised only for such an image, one at a time,
    and put back at once: other Pillow users in the process (Gradio decoding uploads) keep Pillow's own guard.
    """
    with _pillow_limit_lock:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


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


@dataclass(frozen=True)
class ImageHeader:
    """What an image's header says, read without decoding a pixel."""

    width: int  # after orientation, as :class:`DecodedImage` records it
    height: int
    format: str
    exif: Image.Exif | None = field(default=None, repr=False, compare=False)  # as in the file


def read_header(data: bytes, name: str | bytes | os.PathLike) -> ImageHeader | None:
    """The pixel size, format and EXIF of a file's bytes from its header alone (no pixel decoded: nothing a
    malformed image can hang or crash in a decoder); None for camera RAW (its size is its preview's, known only
    by decoding), for ICO and CUR icons (Pillow decodes them to open them), for what Pillow cannot open, and for
    images over twice Pillow's limit (179 MP), which only a decode under our limit opens. A PNG's EXIF is read
    only from the chunks before its pixels (Pillow decodes the whole image to look for one after them)."""
    if is_raw_name(name) or is_raw_header(data[:SNIFF_BYTES]) or is_icon(data):
        return None
    try:
        with Image.open(io.BytesIO(data), formats=decodable_formats()) as image:  # Pillow's limit: a header
            exif = _read_exif(image) if image.format != "PNG" or "exif" in image.info else None
            orientation = _file_orientation(image, exif)
            width, height = image.size  # as stored, except where the opener reports it upright (TIFF, HEIF)
            if image.format not in ("TIFF", "HEIF", "AVIF") and orientation in (5, 6, 7, 8):
                width, height = height, width
            return ImageHeader(width, height, image.format or "unknown", _with_orientation(exif, orientation))
    except Exception:  # not an image, a damaged header, over twice Pillow's limit: nothing to record
        return None


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
    if not isinstance(source, (str, os.PathLike)):  # a stream read once is read into memory, as Pillow would
        seekable = getattr(source, "seekable", None)
        return source if seekable is not None and seekable() else io.BytesIO(source.read())
    return io.BytesIO(read_image_file(source))


def read_image_file(path: str | os.PathLike, *, follow_link: bool = True) -> bytes:
    """The bytes of a regular file, refusing anything that could block or never end.

    Opened with O_NONBLOCK (a FIFO that appeared since a directory walk must not wait for a writer) and
    checked with fstat on the open descriptor, so the file cannot be swapped between check and read. Without
    ``follow_link``, a symbolic link at ``path`` itself is refused (the web UI's renders of catalog images: a
    file swapped for a link after the ingest could name any image the server can read).

    Raises:
        ImageDecodeError: ``missing``, ``unreadable`` (a link too, not followed), ``not_regular_file``,
            ``too_large`` or ``empty_file``.
    """
    no_link = 0 if follow_link else os.O_NOFOLLOW
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | no_link)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):  # deleted or moved since the walk found it
            raise ImageDecodeError("missing", f"{os.fsdecode(path)} does not exist") from exc
        if exc.errno == errno.ELOOP and no_link:
            raise ImageDecodeError("unreadable", f"{path} is a symbolic link now, which is not followed") from exc
        raise ImageDecodeError("unreadable", f"cannot open {path}: {exc.strerror}") from exc
    info = os.fstat(fd)
    # Folders (which os.fdopen refuses with an IsADirectoryError), FIFOs, devices and sockets: never read them.
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        what = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file (a FIFO, device or socket)"
        raise ImageDecodeError("not_regular_file", f"{path} is {what}")
    with os.fdopen(fd, "rb") as handle:
        if info.st_size > MAX_FILE_BYTES:
            raise ImageDecodeError("too_large", f"{path} is {info.st_size} bytes, over the {MAX_FILE_BYTES} limit")
        data = handle.read(MAX_FILE_BYTES + 1)
    if not data:
        raise ImageDecodeError("empty_file", f"{path} is empty")
    return data


def _decode_opened(image: Image.Image, *, draft_size: int | None, max_pixels: int) -> DecodedImage:
    # The size the pixels load at: as stored, but the TIFF and HEIF openers report it upright, for their decoders
    # apply the orientation themselves.
    width, height = image.size
    check_pixels(width, height, max_pixels)
    file_format = image.format or "unknown"
    exif = _read_exif(image)
    orientation = _file_orientation(image, exif)  # before load(): Pillow's TIFF decoder deletes the tag
    if draft_size and file_format in ("JPEG", "MPO"):
        image.draft("RGB", (draft_size, draft_size))
    try:
        image.load()  # animations open on their first frame (no seek: a PSD's "frames" are layers from 1)
    except OSError as exc:
        reason = "truncated" if "truncated" in str(exc).lower() else "corrupt"
        raise ImageDecodeError(reason, f"cannot decode: {exc}") from exc
    except (SyntaxError, ValueError, EOFError) as exc:  # Pillow's plugins raise these for malformed data
        raise ImageDecodeError("corrupt", f"cannot decode: {exc}") from exc
    pending = _orientation_tag(_read_exif(image))  # what the decoder left to apply (1 for TIFF and HEIF)
    if pending != 1:  # exif_transpose copies even an upright image: 800 MB for a big PNG
        try:
            image = ImageOps.exif_transpose(image)
        except Exception:  # a malformed EXIF block must not lose an otherwise good image
            pending = 1
    if pending in (5, 6, 7, 8):
        width, height = height, width
    return DecodedImage(image=to_rgb(image), width=width, height=height, format=file_format,
                        exif=_with_orientation(exif, orientation))


def _file_orientation(image: Image.Image, exif: Image.Exif | None) -> int:
    """The EXIF orientation the file declares. pillow-heif applies it while decoding, sets the tag to 1 and keeps
    the file's value in ``info["original_orientation"]`` (None when it is 1 or absent)."""
    declared = image.info.get("original_orientation")
    return _orientation_tag(exif) if declared is None else _valid_orientation(declared)


def _orientation_tag(exif: Image.Exif | None) -> int:
    return _valid_orientation(exif.get(_ORIENTATION)) if exif is not None else 1


def _valid_orientation(value: object) -> int:
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _with_orientation(exif: Image.Exif | None, orientation: int) -> Image.Exif | None:
    """``exif`` with the file's orientation, where the decoder changed or removed the tag on the image's own block
    (a copy: the decoded image's block must not ask for a rotation its pixels already have)."""
    if _orientation_tag(exif) == orientation:
        return exif
    copy = Image.Exif()
    if exif is not None:
        try:
            copy.load(exif.tobytes())
        except Exception:  # a block Pillow cannot write back: keep it as the decoder left it
            return exif
    copy[_ORIENTATION] = orientation
    return copy


def _read_exif(image: Image.Image) -> Image.Exif | None:
    try:
        return image.getexif()
    except Exception:  # PNG EXIF is read from the chunks: a truncated file fails here and load() says why;
        return None  # other formats' malformed EXIF blocks must not lose an otherwise good image
