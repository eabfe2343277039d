"""Camera RAW files (DNG, CR2, NEF, ARW, ...) through their embedded preview, with the optional ``rawpy``.

Every camera writes a full-size or large JPEG preview into its RAW files; a retrieval model wants 224 pixels,
so the preview is all we need and demosaicing the sensor data (seconds per file) is only the fallback for
files without one. The preview goes through :func:`~mmretrieval.images.decode.decode_image`, so the
decompression-bomb limit and truncation checks hold for it too. Install with ``pip install mmretrieval[raw]``.
"""

from __future__ import annotations

import io
import logging

from PIL import Image

from ..errors import ImageDecodeError
from .decode import DEFAULT_MAX_PIXELS, DecodedImage, check_pixels, decode_image
from .modes import to_rgb

logger = logging.getLogger(__name__)

# LibRaw's ``sizes.flip`` (3: upside down, 5: turned 90 degrees counter-clockwise, 6: clockwise) -> the fix.
_FLIP_TO_TRANSPOSE = {3: Image.Transpose.ROTATE_180, 5: Image.Transpose.ROTATE_90, 6: Image.Transpose.ROTATE_270}


def decode_raw(data: bytes, *, draft_size: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode a camera RAW file's embedded preview (or, without one, a half-size demosaic).

    Args:
        data: the file's bytes.
        draft_size: as for :func:`~mmretrieval.images.decode.decode_image` (JPEG previews shrink while decoding).
        max_pixels: refuse previews or sensor images with more pixels than this.

    Returns:
        The preview as RGB, with the RAW file's own EXIF block when it has one (for capture time and camera).

    Raises:
        ImageDecodeError: ``raw_unsupported`` (rawpy missing), ``corrupt``, ``decompression_bomb``, ``truncated``.
    """
    try:
        import rawpy
    except ImportError:
        raise ImageDecodeError("raw_unsupported", "a camera RAW file needs rawpy: pip install 'mmretrieval[raw]'") from None
    try:
        with rawpy.imread(io.BytesIO(data)) as raw:
            flip = int(raw.sizes.flip)
            decoded = _preview(raw, rawpy, draft_size, max_pixels)
    except ImageDecodeError:
        raise
    except (rawpy.LibRawError, OSError, ValueError) as exc:
        raise ImageDecodeError("corrupt", f"cannot read the RAW file: {type(exc).__name__}: {exc}") from exc
    exif = decoded.exif if decoded.exif else _tiff_exif(data)
    image, width, height = decoded.image, decoded.width, decoded.height
    if decoded.exif is None or not decoded.exif.get(0x0112):  # the preview says nothing: LibRaw's flip applies
        rotation = _FLIP_TO_TRANSPOSE.get(flip)
        if rotation is not None:
            image = image.transpose(rotation)
            if flip in (5, 6):
                width, height = height, width
    return DecodedImage(image, width, height, "RAW", exif)


def _preview(raw, rawpy, draft_size: int | None, max_pixels: int) -> DecodedImage:  # noqa: ANN001
    try:
        thumb = raw.extract_thumb()
    except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
        thumb = None
    if thumb is not None and thumb.format == rawpy.ThumbFormat.JPEG:
        return decode_image(bytes(thumb.data), draft_size=draft_size, max_pixels=max_pixels)
    if thumb is not None:  # an uncompressed bitmap preview
        height, width = thumb.data.shape[:2]
        check_pixels(width, height, max_pixels)
        return DecodedImage(to_rgb(Image.fromarray(thumb.data)), width, height, "RAW")
    check_pixels(raw.sizes.width, raw.sizes.height, max_pixels)
    logger.debug("RAW file without a preview: demosaicing at half size")
    pixels = raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8, user_flip=0)
    return DecodedImage(Image.fromarray(pixels), raw.sizes.width, raw.sizes.height, "RAW")


def _tiff_exif(data: bytes) -> Image.Exif | None:
    """Most RAW formats are TIFF containers: their first IFD holds the camera and the EXIF sub-IFD the dates."""
    try:
        with Image.open(io.BytesIO(data), formats=("TIFF",)) as tiff:
            return tiff.getexif()
    except Exception:  # not TIFF-based (RAF, CR3) or a header Pillow cannot parse: no metadata, not an error
        return None
