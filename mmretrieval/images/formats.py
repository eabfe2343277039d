"""Which files are images: extensions as a fast path, file contents as the rule, and the extra openers.

Every format Pillow can decode is accepted (``decodable_formats``), except a few that are unsafe or that Pillow
can only identify: EPS runs Ghostscript, an interpreter, on the file; the "stub" formats (GRIB, BUFR, HDF5,
WMF outside Windows, MPEG) have no decoder. HEIC/HEIF come through ``pillow-heif`` (the iPhone's default
format, so a core dependency); AVIF is native in Pillow 11.2+ and falls back to ``pillow-heif`` builds that
still carry an AVIF opener. Camera RAW files (DNG, CR2, NEF, ARW, ...) are decoded elsewhere
(:mod:`mmretrieval.images.raw`) from their embedded preview, with the optional ``rawpy``.

Openers are registered lazily, once per process, by :func:`ensure_openers`; decoding calls it, so decode
worker processes register them too.
"""

from __future__ import annotations

import functools
import logging
import os
import threading

from PIL import Image, features

logger = logging.getLogger(__name__)

# The fast path: names that are looked at without reading a byte. Anything else is sniffed by content.
IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".gif", ".webp", ".bmp", ".dib", ".tif", ".tiff",
    ".heic", ".heif", ".hif", ".avif", ".avifs", ".mpo", ".tga", ".icb", ".vda", ".vst", ".ico", ".cur",
    ".ppm", ".pgm", ".pbm", ".pnm", ".pfm", ".jp2", ".j2k", ".j2c", ".jpc", ".jpf", ".jpx", ".qoi", ".dds",
    ".psd", ".sgi", ".rgb", ".rgba", ".bw", ".pcx", ".ras", ".xbm", ".xpm",
    ".msp", ".im", ".imt", ".spi", ".spider", ".fli", ".flc", ".dcx", ".ftc", ".ftu", ".pxr", ".gbr", ".pcd",
    ".psb",
})
# Camera RAW: decoded from the embedded preview through rawpy (the optional ``[raw]`` extra).
RAW_EXTENSIONS = frozenset({
    ".dng", ".cr2", ".cr3", ".crw", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".orf", ".rw2", ".raf", ".pef",
    ".srw", ".3fr", ".erf", ".kdc", ".mrw", ".x3f", ".iiq", ".rwl",
})
# Formats that store pixels without loss (the duplicate keeper prefers them at equal resolution: a PNG beside a
# recompressed JPEG of the same picture is the better copy, whatever their sizes).
LOSSLESS_EXTENSIONS = frozenset({
    ".png", ".apng", ".bmp", ".dib", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm", ".qoi", ".tga", ".psd", ".psb",
})
# Never opened to sniff: lists, sidecars and everyday non-image files (``.thm`` and ``.aae`` are camera and
# iPhone sidecars; a .thm is a JPEG thumbnail of a video and would only add a near-duplicate).
NOT_IMAGE_EXTENSIONS = frozenset({
    ".txt", ".csv", ".tsv", ".json", ".jsonl", ".xml", ".xmp", ".aae", ".thm", ".html", ".htm", ".md", ".rst",
    ".log", ".ini", ".cfg", ".toml", ".yaml", ".yml", ".py", ".js", ".css", ".sh", ".c", ".h", ".db",
    ".sqlite", ".wal", ".shm", ".lock", ".tmp", ".part", ".crdownload", ".pdf", ".doc", ".docx", ".xls",
    ".xlsx", ".ppt", ".pptx", ".zip", ".gz", ".tgz", ".bz2", ".xz", ".7z", ".rar", ".tar", ".mp3", ".wav",
    ".flac", ".aac", ".m4a", ".ogg", ".mp4", ".mov", ".avi", ".mkv", ".m4v", ".webm", ".mts", ".m2ts", ".3gp",
    ".faiss", ".npy", ".npz", ".pt", ".safetensors", ".pkl", ".exe", ".dll", ".so", ".o", ".class", ".jar",
    ".ds_store", ".ttf", ".otf", ".woff", ".woff2", ".svg", ".eps", ".ps", ".ai",
})
# Pillow formats we never open: EPS hands the file to Ghostscript; ICNS (macOS icons) and BLP (game textures)
# open at the size their header names and decode whatever PNG, JPEG 2000 or JPEG they hold at its own size, up to
# 179 megapixels, where no check of ours sees it (ICO is measured first instead: images.icons); FITS's compressed
# images decode in a Python loop, 0.3 s a megapixel with the interpreter's lock held (a small upload would stall
# the web server); the rest can only be identified.
EXCLUDED_FORMATS = frozenset({"EPS", "ICNS", "BLP", "FITS", "PDF", "BUFR", "GRIB", "HDF5", "WMF", "MPEG", "IPTC"})
SNIFF_BYTES = 32  # enough for every magic number below and for Pillow's own accept checks (16 bytes)

# ISO-BMFF ``ftyp`` brands of still images (HEIF, HEIC, AVIF); videos (isom, mp42, qt) are not images.
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"mif2"})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
# RAW containers that are not plain TIFF headers; TIFF-based RAWs (NEF, ARW, DNG) are known by extension.
_RAW_MAGIC = ((0, b"II*\x00\x10\x00\x00\x00CR"), (0, b"FUJIFILMCCD-RAW"), (0, b"IIRO"), (0, b"IIRS"),
              (0, b"IIU\x00"), (4, b"ftypcrx "))

_lock = threading.Lock()
_registered = False


def ensure_openers() -> None:
    """Register the HEIF (and, where Pillow lacks it, AVIF) openers in this process; cheap after the first call."""
    global _registered
    if _registered:
        return
    with _lock:
        if _registered:
            return
        try:
            import pillow_heif
        except ImportError:
            logger.info("pillow-heif is not installed: HEIC/HEIF images will be reported as not_an_image")
        else:
            # Its own size and memory limits stay on (options.DISABLE_SECURITY_LIMITS is left False).
            pillow_heif.register_heif_opener(thumbnails=False)
            if not features.check("avif") and hasattr(pillow_heif, "register_avif_opener"):
                pillow_heif.register_avif_opener(thumbnails=False)
        _registered = True


@functools.cache
def decodable_formats() -> tuple[str, ...]:
    """Pillow format names that :func:`~mmretrieval.images.decode.decode_image` lets Pillow open, in Pillow's
    own order of trying them (the common formats first, so a loose content check elsewhere never wins)."""
    ensure_openers()
    Image.init()
    return tuple(name for name in Image.ID if name in Image.OPEN and name not in EXCLUDED_FORMATS)


@functools.cache
def image_extensions() -> frozenset[str]:
    """:data:`IMAGE_EXTENSIONS` plus every extension Pillow registers for a format we decode."""
    formats = set(decodable_formats())
    return IMAGE_EXTENSIONS | {ext for ext, name in Image.registered_extensions().items() if name in formats}


def looks_like_an_image(header: bytes, name: str | bytes | os.PathLike) -> bool:
    """Whether a file whose first bytes are ``header`` is an image by them (:func:`sniff`), or, for the formats
    that have no magic number (TGA, IM, some camera RAW), by its name's extension."""
    return sniff(header) is not None or os.path.splitext(os.fsdecode(name))[1].lower() in _unsniffable_extensions()


@functools.cache
def _unsniffable_extensions() -> frozenset[str]:
    """Extensions of the image files :func:`sniff` cannot recognise from their first bytes: Pillow formats with no
    content check (TGA, IM, ...), and camera RAW (some have no magic number of their own)."""
    unsniffable = {name for name in decodable_formats() if Image.OPEN[name][1] is None}
    return RAW_EXTENSIONS | {ext for ext, name in Image.registered_extensions().items() if name in unsniffable}


def is_raw_name(path: str | bytes | os.PathLike) -> bool:
    """Whether the file name says camera RAW (decoded from its embedded preview)."""
    return os.path.splitext(os.fsdecode(path))[1].lower() in RAW_EXTENSIONS  # a path key (bytes) too


def is_raw_header(header: bytes) -> bool:
    """Whether a file's first bytes are a camera RAW container that is not a plain TIFF (CR2, CR3, RAF, ORF, RW2)."""
    return any(header[offset:offset + len(magic)] == magic for offset, magic in _RAW_MAGIC)


def sniff(header: bytes) -> str | None:
    """The kind of image the first bytes of a file announce, or None when they announce none.

    Returns ``"HEIF"``, ``"AVIF"``, ``"RAW"``, or the Pillow format whose own content check accepts the
    header. Cheap: no decoding; only formats that have a content check (TGA, for one, has none) are found.
    """
    if header[4:8] == b"ftyp":
        brand = header[8:12]
        compatible = {header[i:i + 4] for i in range(16, len(header) - 3, 4)}
        if brand in _AVIF_BRANDS or (brand == b"mif1" and compatible & _AVIF_BRANDS):
            return "AVIF"
        if brand in _HEIF_BRANDS:
            return "HEIF"
    if is_raw_header(header):
        return "RAW"
    for name in decodable_formats():
        accept = Image.OPEN[name][1]
        try:
            if accept is not None and accept(header[:16]):
                return name
        except Exception:  # an accept check that trips over a short or odd header says "not mine"
            continue
    return None


def sniff_file(path: str | os.PathLike) -> str | None:
    """:func:`sniff` on a file's first bytes (opened without blocking); None when it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        header = os.read(fd, SNIFF_BYTES)
    except OSError:
        return None
    finally:
        os.close(fd)
    return sniff(header) if header else None
