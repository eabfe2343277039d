"""The only ways images cross the browser boundary.

Outgoing: the browser gets images of the open collection by catalog id, as small server-side renders
(Gradio writes them into its own cache dir and serves them from there). No handler ever turns a
client-given string into a path to read, and ``launch`` gets no ``allowed_paths``, so Gradio's file
routes serve nothing but its upload and cache dirs.

Originals go out the same way: :func:`export_original` and :func:`zip_originals` take catalog ids,
ask the catalog for the file, and place a link (or copy) under its own name in a folder of ours, which
Gradio then serves from its cache. A client never names a path.

Incoming: uploads are decoded with :func:`mmretrieval.images.decode.decode_image` (bomb limit on, truncated and
corrupt files refused), and Gradio's own pre-decoding of an upload is guarded so a bad file becomes a
readable message rather than a generic error. An upload the browser cannot draw (HEIC, TIFF) is replaced by
a JPEG copy of it (:func:`browser_copy`), so the preview shows what the search uses.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import shutil
import stat
import time
import uuid
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from threading import Lock
from pathlib import Path
from typing import Any, BinaryIO, Callable

import gradio as gr
from PIL import Image

from ..errors import ImageDecodeError, MMRError
from ..images.decode import DecodedImage, check_icon, decode_image, read_image_file
from ..images.formats import SNIFF_BYTES, ensure_openers, looks_like_an_image
from .names import display_path
from .toast import ToastError

logger = logging.getLogger(__name__)

THUMBNAIL_PX = 192  # longest side of gallery thumbnails
PREVIEW_PX = 640  # longest side of the large view of one result
MAX_UPLOAD_PIXELS = 50_000_000  # uploads above this are refused before decoding (bombs)
# What every current browser draws in an <img>. An upload in another format (HEIC, TIFF, camera RAW, JPEG 2000)
# is shown, and then searched with, as an upright JPEG copy of this quality (4:4:4, so colours stay sharp).
BROWSER_FORMATS = frozenset({"JPEG", "PNG", "GIF", "WEBP", "BMP", "AVIF"})
BROWSER_COPY_QUALITY = 95
EXPORT_MAX_AGE_S = 3600  # originals and zips placed for download are removed after this
# Renders kept in memory, capped in bytes (256 MiB in all): Pillow holds RGB at 4 bytes a pixel, so a 192 px
# thumbnail takes ~110 KB (~1,800 fit, the pages of many searches) and a 640 px preview ~1.2 MB (~50 fit, the
# images just opened); previews get their own budget so that opening photos never pushes the thumbnails out.
THUMBNAIL_CACHE_BYTES = 192 * 2**20
PREVIEW_CACHE_BYTES = 64 * 2**20
_PLACEHOLDER_GREY = (200, 200, 200)


@dataclass(frozen=True)
class RecordedFile:
    """A catalog image's file as its ingest recorded it: where, and its size and time then (0, 0: not known, as
    for an imported row)."""

    path: Path
    size: int = 0
    mtime_ns: int = 0


class ThumbnailCache:
    """Small renders of collection images, by catalog id, in memory up to a byte budget (least recently used go).

    Renders larger than :data:`THUMBNAIL_PX` (the previews) are kept apart, under a budget of their own. Safe to
    share between request threads.
    """

    def __init__(self, max_bytes: int = THUMBNAIL_CACHE_BYTES, preview_max_bytes: int = PREVIEW_CACHE_BYTES):
        self._pools = {False: _RenderPool(max_bytes), True: _RenderPool(preview_max_bytes)}  # by "is a preview"
        self._lock = Lock()

    def get(self, path_of: Callable[[int], Path], image_id: int, max_side: int = THUMBNAIL_PX) -> Image.Image:
        """The image ``image_id`` (its file found by ``path_of``), shrunk to ``max_side``; a grey tile if unreadable."""
        key = (int(image_id), max_side)
        pool = self._pools[max_side > THUMBNAIL_PX]
        with self._lock:
            cached = pool.get(key)
        if cached is not None:
            return cached
        image = render_collection_image(path_of, int(image_id), max_side)  # outside the lock: decoding is slow
        with self._lock:
            pool.put(key, image)
        return image

    @property
    def cached_bytes(self) -> int:
        """Pixel bytes held now, thumbnails and previews together."""
        with self._lock:
            return sum(pool.held_bytes for pool in self._pools.values())

    def clear(self) -> None:
        """Forget every render (after an ingest, paths may point at new content)."""
        with self._lock:
            for pool in self._pools.values():
                pool.clear()


class _RenderPool:
    """An LRU of renders whose pixel bytes stay within ``max_bytes``; the caller holds the lock."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.held_bytes = 0
        self._items: OrderedDict[tuple[int, int], tuple[Image.Image, int]] = OrderedDict()

    def get(self, key: tuple[int, int]) -> Image.Image | None:
        if key not in self._items:
            return None
        self._items.move_to_end(key)
        return self._items[key][0]

    def put(self, key: tuple[int, int], image: Image.Image) -> None:
        size = image_bytes(image)
        if key in self._items:  # two requests rendered it at once
            self.held_bytes -= self._items.pop(key)[1]
        if size > self.max_bytes:
            return  # it would push out everything else
        self._items[key] = (image, size)
        self.held_bytes += size
        while self.held_bytes > self.max_bytes:
            self.held_bytes -= self._items.popitem(last=False)[1][1]

    def clear(self) -> None:
        self._items.clear()
        self.held_bytes = 0


def image_bytes(image: Image.Image) -> int:
    """The memory Pillow holds for ``image``'s pixels: 1 byte a pixel for 1, L and P, 2 for I;16, else 4 (RGB too)."""
    per_pixel = 1 if image.mode in ("1", "L", "P") else 2 if image.mode.startswith("I;16") else 4
    return image.width * image.height * per_pixel


def render_collection_image(path_of: Callable[[int], Path], image_id: int, max_side: int) -> Image.Image:
    """Decode catalog image ``image_id`` (``path_of`` asks the catalog: never a client-named path) and shrink it."""
    path = path_of(image_id)
    try:
        data = read_image_file(path, follow_link=False)  # as originals: a file swapped for a link is not shown
        image = decode_image(data, draft_size=max_side).image  # shrunk in place: a copy doubled a PNG's peak
    except MMRError as exc:  # moved or deleted since ingestion: show a tile, not an error
        logger.warning("cannot render image %d (%s): %s", image_id, display_path(path), exc)
        return Image.new("RGB", (max_side, max_side), _PLACEHOLDER_GREY)
    image.thumbnail((max_side, max_side))
    return image


def export_original(file_of: Callable[[int], RecordedFile], image_id: int, out_dir: Path) -> Path:
    """The original file of catalog image ``image_id``, placed under its own name in a fresh folder in ``out_dir``.

    A hard link where the file system allows (no copy of a large photo), else a copy. The name is the one
    people see (:func:`~.names.display_path`): the browser and Gradio's cache cannot carry a non-UTF-8 one.

    Raises:
        MMRError: no such image (from ``file_of``), or its file is gone, unreadable, changed since the ingest, or
            no longer an image file (:func:`_open_original`).
    """
    recorded = file_of(int(image_id))
    source = recorded.path
    prune_exports(out_dir)
    target_dir = out_dir / f"{int(image_id)}-{uuid.uuid4().hex[:8]}"
    target_dir.mkdir(parents=True)
    target = target_dir / display_path(source.name)
    try:
        with _open_original(recorded) as original:
            if not _linked(source, target, os.fstat(original.fileno())):
                with open(target, "wb") as copy:
                    shutil.copyfileobj(original, copy)
    except OSError as exc:
        raise MMRError(f"the original of image {image_id} ({display_path(source)}) cannot be read: "
                       f"{exc.strerror or exc}; it may have moved since it was ingested") from exc
    return target


def zip_originals(file_of: Callable[[int], RecordedFile], image_ids: list[int], out_dir: Path
                  ) -> tuple[Path, list[int]]:
    """A zip of the originals of ``image_ids`` under their names as shown (numbered when two share a name).

    Returns the zip and the ids whose file could not be read, changed since the ingest, or is no longer an image
    file (left out).
    """
    prune_exports(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"originals-{uuid.uuid4().hex[:8]}.zip"
    missing, used = [], set()
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_STORED) as archive:  # photos are compressed already
        for image_id in image_ids:
            recorded = file_of(int(image_id))
            shown = display_path(recorded.path.name)  # a zip member name must be valid UTF-8
            name = shown if shown not in used else f"{int(image_id)}-{shown}"
            try:
                with _open_original(recorded) as original:
                    member = zipfile.ZipInfo(name, _zip_time(os.fstat(original.fileno()).st_mtime))
                    with archive.open(member, "w", force_zip64=True) as stored:
                        shutil.copyfileobj(original, stored)
            except OSError:
                missing.append(int(image_id))
                continue
            used.add(name)
    return target, missing


def _zip_time(mtime_s: float) -> tuple[int, int, int, int, int, int]:
    """A file's time as a zip member's, held within what zip can store (1980 to 2107), as ``ZipInfo.from_file``
    with ``strict_timestamps=False`` does: a photo restored with time 0 still goes in."""
    return max((1980, 1, 1, 0, 0, 0), min((2107, 12, 31, 23, 59, 58), tuple(time.localtime(mtime_s)[:6])))


def _open_original(recorded: RecordedFile) -> BinaryIO:
    """The file at ``recorded.path`` opened for reading, only if that very path names a regular file that is an
    image, of the size and time the ingest recorded (where it recorded them).

    Ingest refuses links that lead out of a folder, but a file can be swapped for a symbolic link afterwards (in a
    shared or synced folder): followed, it would hand out any file the server can read (a security walkthrough
    served a text file outside the collection). So the last component is opened without following links, and
    what is opened must start like an image (or, for the few formats with no magic number, carry their
    extension). A folder higher up swapped for a link still leads elsewhere, to an image file of the same name
    there: its size and time are not the ingested file's (an edited photo's are not either: ingesting its folder
    again records them).

    Raises:
        OSError: gone, unreadable, a symbolic link, not a regular file, not the file ingested, or not an image.
    """
    source = recorded.path
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, "it is a symbolic link now, which is not served") from exc
        raise
    original = os.fdopen(fd, "rb")
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode):
            raise OSError(errno.EINVAL, "it is not a regular file now")
        if recorded.size and (opened.st_size, opened.st_mtime_ns) != (recorded.size, recorded.mtime_ns):
            raise OSError(errno.EINVAL, "it is not the file ingested (its size or time changed since); ingest its "
                          "folder again to serve it")
        header = original.read(SNIFF_BYTES)
        if not looks_like_an_image(header, source):
            raise OSError(errno.EINVAL, "it is not an image file now")
        original.seek(0)
    except BaseException:
        original.close()
        raise
    return original


def _linked(source: Path, target: Path, opened: os.stat_result) -> bool:
    """Hard-link ``source`` as ``target`` if that links the file that was opened and checked (the path may have
    been swapped since); False when it could not, and nothing is left at ``target``."""
    try:
        os.link(source, target, follow_symlinks=False)
    except OSError:
        return False
    linked = os.stat(target, follow_symlinks=False)
    if (linked.st_dev, linked.st_ino) == (opened.st_dev, opened.st_ino):
        return True
    target.unlink()
    return False


def prune_exports(out_dir: Path, max_age_s: float = EXPORT_MAX_AGE_S) -> None:
    """Remove exports older than ``max_age_s`` (Gradio has copied them into its own cache by then)."""
    cutoff = time.time() - max_age_s
    for entry in out_dir.glob("*") if out_dir.is_dir() else ():
        try:
            if entry.lstat().st_mtime < cutoff:
                shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()
        except OSError as exc:  # another request pruned it first, or it is in use: try again next time
            logger.debug("cannot prune %s: %s", entry, exc)


def load_upload(path: str | None, what: str = "query image") -> Image.Image | None:
    """Decode an uploaded file (a path Gradio put in its upload dir) safely; None when nothing was uploaded.

    Raises:
        gr.Error: the upload is not a usable image (corrupt, truncated, a decompression bomb...).
    """
    return _decode_upload(path, what).image if path else None


def browser_copy(path: str | None, out_dir: Path) -> str | None:
    """The upload itself when a browser can draw it, else an upright JPEG copy of it in a fresh folder in ``out_dir``.

    An iPhone's HEIC (or a TIFF) uploads fine but shows as a broken picture: the browser cannot decode it.
    The copy becomes the component's value, so the preview and the search use the same pixels.

    Raises:
        gr.Error: the upload is not a usable image.
    """
    if not path:
        return None
    ensure_openers()
    try:
        with Image.open(path) as header:  # reads the header only
            shown_as_is = header.format in BROWSER_FORMATS
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise gr.Error(f"The uploaded image cannot be used: {_short(exc)}", print_exception=False) from exc
    if shown_as_is:
        return path
    image = _decode_upload(path, "uploaded image").image
    prune_exports(out_dir)
    target = out_dir / f"upload-{uuid.uuid4().hex[:8]}" / f"{display_path(Path(path).stem)}.jpg"
    target.parent.mkdir(parents=True)
    image.save(target, "JPEG", quality=BROWSER_COPY_QUALITY, subsampling=0)
    return str(target)


def _decode_upload(path: str, what: str) -> DecodedImage:
    try:
        return decode_image(path, max_pixels=MAX_UPLOAD_PIXELS)
    except ImageDecodeError as exc:
        raise gr.Error(f"The {what} cannot be used: {_reason_text(exc)}", print_exception=False) from exc
    except (OSError, ValueError, SyntaxError, EOFError) as exc:  # Pillow errors decode_image lets through
        raise gr.Error(f"The {what} cannot be used: the file is corrupt ({exc})", print_exception=False) from exc


def guard_upload(component: Any, what: str = "uploaded image") -> Any:
    """Make Gradio's own pre-decoding of an upload fail with a readable message.

    Also refuse a file that is not in Gradio's upload folder: an API request may name any path on the server.

    ``gr.Image`` opens every upload with Pillow before our handler sees it; a corrupt file, a bomb or (before
    our openers register) a HEIC raises there, which Gradio would show as a bare "Error". Wrapping the instance's ``preprocess``
    (not subclassing: a component subclass makes Gradio write stub files next to this module) keeps
    the message readable.
    """
    original = component.preprocess
    uploads = Path(component.GRADIO_CACHE).resolve()

    @functools.wraps(original)
    def preprocess(payload: Any) -> Any:
        # Gradio checks that a file's path is in its upload folder only when the request marks it as one of its
        # files; an API call that leaves the mark out could name any file on the server (and learn which exist).
        path = getattr(payload, "path", None)
        if payload is not None and not (isinstance(path, str) and Path(path).resolve().is_relative_to(uploads)):
            raise ToastError(f"The {what} must be a file uploaded to this app (gradio_client's handle_file(...)), "
                             "not a path or URL")
        ensure_openers()  # Gradio opens the upload with Pillow, which knows HEIC only once pillow-heif registers
        if payload is not None:
            _refuse_big_icon(path, what)
        try:
            return original(payload)
        except gr.Error:
            raise
        except Exception as exc:  # Pillow raises many types for bad files
            logger.info("rejected upload: %s", exc)
            # Raised before any handler runs (so outside user_errors): a ToastError of its own.
            raise ToastError(f"The {what} is not a usable image: {_short(exc)}") from exc

    component.preprocess = preprocess
    return component


def _refuse_big_icon(path: str, what: str) -> None:
    """Before Gradio opens an upload with Pillow, which decodes an icon (ICO, CUR) whole to open it: an icon
    holding more pixels than an upload may have is refused from its headers."""
    try:
        with open(path, "rb") as upload:
            check_icon(upload, MAX_UPLOAD_PIXELS)
    except ImageDecodeError as exc:
        raise ToastError(f"The {what} cannot be used: {_reason_text(exc)}") from exc
    except OSError:
        pass  # Gradio's own open says what is wrong with the file


# A 100-megapixel camera photo is as refused as a bomb, and deserves a way forward, not an alarm.
_TOO_MANY_PIXELS = (f"it has more than {MAX_UPLOAD_PIXELS // 1_000_000} megapixels, the most an upload may have "
                    "(a guard against decompression bombs); save a smaller copy of the picture and upload that")


def _reason_text(exc: ImageDecodeError) -> str:
    readable = {
        "decompression_bomb": _TOO_MANY_PIXELS,
        "not_an_image": "it is not an image format this app reads (JPEG, PNG, HEIC, AVIF, WebP, GIF, TIFF, ...)",
        "truncated": "the file is truncated",
        "corrupt": "the file is corrupt",
        "empty_file": "the file is empty",
        "too_large": "the file is too large",
    }
    return readable.get(exc.reason, str(exc))


def _short(exc: Exception) -> str:
    if isinstance(exc, Image.DecompressionBombError):
        return _TOO_MANY_PIXELS
    if isinstance(exc, Image.UnidentifiedImageError):
        return "the file is not an image format we can read"
    return type(exc).__name__
