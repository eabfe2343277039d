"""Reading stage: find the files a set of sources names, and decode one file safely.

Sources are folders (walked recursively, following links only while they stay inside the folder and never
around a loop; each folder is walked once, under its real path where the walk meets it, so a link to such a
folder is skipped whatever the names' order; a broken link is reported as one), single files, list files
(``.txt``: one path per line; ``.csv``: a ``path`` column and an optional ``caption`` column), and a
:class:`PathStream` (a list read from a stream as it comes: the command line's ``-``, its standard input). In a
list, relative paths are taken from the list file's folder (a stream's from its ``base``), surrounding whitespace
is stripped, and (``.txt`` and streams) blank lines and lines starting with ``#`` are skipped; a name that is not
UTF-8 keeps its bytes as surrogate escapes, as ``os.fsdecode`` and a folder walk do. A walk passes
over hidden entries, files and folders whose name starts with ``.`` (``.thumbnails``, ``.Trash-1000``, ``.git``,
macOS ``._IMG_0001.jpg`` forks), as photo managers do; a hidden folder or file named as a source, or listed in a
list file, is still read. So is a folder that ``mmr label --organize`` or ``mmr duplicates --organize`` filled
(it holds :data:`~mmretrieval.filled_folders.MARKER_NAME`) only when named as a source: within a walk its links (or
copies) of images already catalogued would make every image a second row. Nothing is opened while walking;
:func:`decode_file` opens a file without blocking and refuses anything that is not a regular file.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence, TextIO

import numpy as np

from ..filled_folders import MARKER_NAME
from ..images.preprocess import ImagePreparer
from ..errors import CollectionError, ImageDecodeError
from ..images.decode import DEFAULT_MAX_PIXELS, decode_file_bytes, read_image_file
from ..images.formats import NOT_IMAGE_EXTENSIONS, RAW_EXTENSIONS, image_extensions, sniff_file
from ..images.metadata import photo_metadata
from .batches import Decoded, DecodeTask, Failed, SourceFile, Skipped, content_hash
from .lists import csv_rows, decoded_lines, null_rows, once_in_a_row, text_rows

logger = logging.getLogger(__name__)

LIST_SUFFIXES = (".txt", ".csv")
STDIN_SOURCE = "-"  # on the command line, the source that stands for a list of paths on standard input
_FOLDER = "folder"  # what _classify says of a folder to walk now
_LINKED_FOLDER = "linked folder"  # ... and of a link to a folder, followed after every real folder


@dataclass(frozen=True)
class PathStream:
    """A list of paths read from a binary stream as it comes, one per line, by a ``.txt`` list's rules: what the
    command line makes of the source ``-`` (:func:`stdin_sources`). Library code reads a stream only when handed
    one; a source named ``-`` is the file of that name.

    It is read once, so an ingest with ``prune`` refuses it: the files to prune could not be listed again.
    """

    stream: Iterable[bytes] = field(repr=False)  # lines of bytes: sys.stdin.buffer, an open file, a pipe
    base: str = field(default_factory=os.getcwd)  # the folder relative paths are taken from
    name: str = STDIN_SOURCE  # how messages name it
    null: bool = False  # paths end with NUL (``find -print0``), kept exactly: no stripping, no # comments

    def __str__(self) -> str:
        return self.name


def stdin_sources(sources: Sequence[str], stdin: TextIO | None, null: bool = False,
                  example: str = "mmr ingest --null - --collection C") -> list[str | PathStream]:
    """``sources`` as the command line gives them, ``-`` standing for a list of paths read from ``stdin`` (the
    process's standard input, read through its byte stream), relative paths taken from the current folder; with
    ``null``, each path ends with NUL instead of a newline. ``example``: the command a misplaced ``--null`` is
    shown in.

    Raises:
        CollectionError: ``-`` given twice (standard input is read once), no standard input to read, or ``null``
            without ``-``.
    """
    if sources.count(STDIN_SOURCE) > 1:
        raise CollectionError("- (the paths on standard input) given twice; standard input is read once")
    if STDIN_SOURCE in sources and stdin is None:
        raise CollectionError("- reads paths from standard input, and this process has none")
    if null and STDIN_SOURCE not in sources:
        raise CollectionError("--null is for the paths on standard input (-): add - as a source, e.g. "
                              f"find DIR -print0 | {example}")
    return [PathStream(stdin.buffer, null=null) if source == STDIN_SOURCE else source for source in sources]


def source_list(sources: str | bytes | os.PathLike | Sequence[str | bytes | os.PathLike]) -> list[str | PathStream]:
    """Sources as strings with ``~`` expanded (the shell does that on the command line, not in the Python API),
    streams as they are; one path alone (``str``, ``bytes`` or a path object) is one source, not a sequence of
    one-letter ones.

    Raises:
        CollectionError: no source, or an empty one.
    """
    if isinstance(sources, (str, bytes, os.PathLike, PathStream)):
        sources = [sources]
    if not sources:  # an empty list: it read as a run that found nothing, all zeros and no word
        raise CollectionError("no source given: pass folders, image files or .txt/.csv lists ('.' is the current "
                              "folder)")
    listed = [source if isinstance(source, PathStream) else os.path.expanduser(os.fsdecode(source))
              for source in sources]
    if "" in listed:  # an unset setting, most often: not the working folder ("." says that), which was ingested
        raise CollectionError("an empty source names no file or folder; pass folders, image files or .txt/.csv "
                              "lists ('.' is the current folder)")
    return listed


def refuse_missing(sources: Sequence[str | PathStream]) -> None:
    """Refuse a source that does not exist before anything is said or made (:func:`discover` meets it later).

    Raises:
        CollectionError: naming the first such source.
    """
    for source in sources:
        if not isinstance(source, PathStream) and not os.path.lexists(os.path.abspath(source)):
            raise CollectionError(_no_source(source))


def _no_source(source: str | os.PathLike) -> str:
    return f"source {source} does not exist; pass folders, image files or .txt/.csv lists"


def discover(sources: Sequence[str | os.PathLike | PathStream],
             mount_points: list[str] | None = None) -> Iterator[SourceFile | Skipped]:
    """Every candidate file under ``sources``, in a stable order.

    ``mount_points``: where to add the folders walked that lie on another file system than the folder holding
    them (a drive or a share mounted there), source folders included; folders reached through a link are not
    looked at (a link to another drive is no mount point).

    Raises:
        CollectionError: a source that does not exist, or a CSV list without a path column.
    """
    walked: set[tuple[int, int]] = set()  # every folder walked, by identity, whichever source it came from
    for source in sources:
        if isinstance(source, PathStream):
            yield from _read_stream(source)
            continue
        path = Path(os.path.abspath(source))
        if path.is_dir():
            if _identity(path) in walked:  # a link to a folder given before, or a folder inside one
                logger.info("passed over %s: walked already, from an earlier source", path)
                continue
            yield from _walk(path, walked, mount_points)
        elif not os.path.lexists(path):
            raise CollectionError(_no_source(source))
        elif path.suffix.lower() in LIST_SUFFIXES and path.is_file():
            yield from _read_list(path)
        else:
            yield _single(path)


def _single(path: Path, caption: str | None = None) -> SourceFile | Skipped:
    try:
        info = path.stat()
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR) and os.path.islink(path):  # as a folder walk names it
            return Skipped(str(path), "broken_link",
                           f"{path} is a broken link: {os.path.realpath(path)} does not exist")
        reason = "symlink_loop" if exc.errno == errno.ELOOP else "missing"
        return Skipped(str(path), reason, f"cannot stat {path}: {exc.strerror}")
    if stat.S_ISDIR(info.st_mode):  # named in a list file (a folder is walked only when it is a source itself)
        return Skipped(str(path), "not_regular_file", f"{path} is a folder; a list file names image files")
    if not stat.S_ISREG(info.st_mode):
        return Skipped(str(path), "not_regular_file", f"{path} is not a regular file (FIFO, device or socket)")
    return SourceFile(str(path), info.st_size, storable_mtime_ns(info.st_mtime_ns), caption)


def _identity(folder: Path) -> tuple[int, int]:
    info = folder.stat()
    return info.st_dev, info.st_ino


def _walk(root: Path, walked: set[tuple[int, int]], mount_points: list[str] | None) -> Iterator[SourceFile | Skipped]:
    """Every candidate under ``root``, each folder walked once: real folders first, then linked ones.

    A folder linked from inside the tree is usually also there under its real path. Walking every real folder
    before any link makes that path the one catalogued, whatever the names' order, and the link the skip;
    otherwise removing the link would re-embed the folder. Memory holds the identities of the folders walked
    (``walked``, which this adds to) and the folder links still to follow, never the files.
    """
    real_root = os.path.realpath(root)
    links: collections.deque[str] = collections.deque()  # folder links met, followed in that order
    try:
        holder = os.stat(root.parent).st_dev if mount_points is not None and not root.is_symlink() else None
    except OSError:
        holder = None
    yield from _walk_folders(str(root), real_root, walked, links, holder, mount_points)
    while links:
        yield from _walk_folders(links.popleft(), real_root, walked, links, None, mount_points)


def _walk_folders(top: str, real_root: str, walked: set[tuple[int, int]], links: collections.deque[str],
                  holder: int | None = None, mount_points: list[str] | None = None) -> Iterator[SourceFile | Skipped]:
    """``top`` and the real folders under it, depth-first in name order; folder links go on ``links``.

    ``holder``: the device of the folder holding ``top`` (None: not known, ``top`` being a link); with
    ``mount_points``, a folder whose device differs from its holder's is added to it."""
    stack: list[tuple[str, int | None]] = [(top, holder)]
    while stack:
        directory, holder = stack.pop()
        try:
            info = os.stat(directory)
        except OSError as exc:  # removed (or made unreadable) since its parent was listed
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                logger.info("folder %s disappeared during the walk", directory)
            else:
                yield Skipped(directory, "unreadable", f"cannot open folder {directory}: {exc.strerror}")
            continue
        if (info.st_dev, info.st_ino) in walked:
            if os.path.islink(directory):
                yield Skipped(directory, "symlink_loop",
                              f"{directory} leads to {os.path.realpath(directory)}, a folder already walked")
            else:  # a folder an earlier source walked (`mmr ingest A/sub A`): its files are in, under that path
                logger.info("passed over %s: walked already, from an earlier source", directory)
            continue
        walked.add((info.st_dev, info.st_ino))
        if mount_points is not None and holder is not None and info.st_dev != holder:
            mount_points.append(directory)
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as exc:
            yield Skipped(directory, "unreadable", f"cannot list {directory}: {exc.strerror}")
            continue
        if directory != top and any(entry.name == MARKER_NAME for entry in entries):
            logger.info("passed over %s: a command of ours filled it (links to, or copies of, images)", directory)
            continue
        subdirs = []
        for entry in entries:
            found = _classify(entry, real_root)
            if found == _FOLDER:
                subdirs.append(entry.path)
            elif found == _LINKED_FOLDER:
                links.append(entry.path)
            elif found is not None:
                yield found
        stack.extend((subdir, info.st_dev) for subdir in reversed(subdirs))


def _classify(entry: os.DirEntry, real_root: str) -> SourceFile | Skipped | str | None:
    if entry.name.startswith("."):
        return None  # hidden: caches, thumbnails, trash, version control, AppleDouble forks; never walked or opened
    try:
        is_link = entry.is_symlink()
        is_dir = not is_link and entry.is_dir()
    except OSError:  # gone since the folder was listed; _single below says so
        is_link = is_dir = False
    if is_link:
        return _linked(entry, real_root)
    return _FOLDER if is_dir else _file(entry)


def _linked(entry: os.DirEntry, real_root: str) -> SourceFile | Skipped | str | None:
    """A link: a folder to follow once the real folders are walked, a file read under the link's path, or a skip."""
    target = os.path.realpath(entry.path)
    try:
        is_dir = stat.S_ISDIR(os.stat(entry.path).st_mode)
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR) or not os.path.lexists(entry.path):
            is_dir = False  # a loop of links, or the link itself gone since the folder was listed: _single says so
        elif os.path.splitext(entry.name)[1].lower() in NOT_IMAGE_EXTENSIONS:
            return None  # never read, so not worth a report
        else:  # a name that would be read or sniffed; with no target there is nothing to read
            return Skipped(entry.path, "broken_link", f"{entry.path} is a broken link: {target} does not exist")
    if os.path.commonpath([target, real_root]) != real_root:
        return Skipped(entry.path, "link_outside_root", f"{entry.path} links outside the folder, to {target}")
    return _LINKED_FOLDER if is_dir else _file(entry)


def _file(entry: os.DirEntry) -> SourceFile | Skipped | None:
    """A file by its extension: an image candidate, never opened (lists, sidecars, documents), or sniffed."""
    suffix = os.path.splitext(entry.name)[1].lower()
    if suffix in image_extensions() or suffix in RAW_EXTENSIONS:
        return _single(Path(entry.path))
    if suffix in NOT_IMAGE_EXTENSIONS:
        return None
    return _sniffed(entry)


def _sniffed(entry: os.DirEntry) -> SourceFile | Skipped | None:
    """A file with an unfamiliar or no extension is a candidate when its first bytes announce an image."""
    try:
        if not entry.is_file():  # FIFOs, devices and sockets are never opened, not even to sniff
            return None
    except OSError:
        return None
    return _single(Path(entry.path)) if sniff_file(entry.path) else None


def _read_list(path: Path) -> Iterator[SourceFile | Skipped]:
    """A list file's entries, relative paths taken from the list's folder; read as a stream, so a list of 10 M
    paths is never held at once."""
    base = path.parent
    try:
        # A name that is not UTF-8 keeps its bytes (surrogate escapes, as os.fsdecode), so the file is found.
        with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as handle:
            rows = text_rows(handle) if path.suffix.lower() == ".txt" else csv_rows(path, handle)
            for name, caption in once_in_a_row(rows):
                yield _single(_listed_path(str(base), name), caption or None)
    except OSError as exc:
        raise CollectionError(f"cannot read list file {path}: {exc}") from exc


def _read_stream(source: PathStream) -> Iterator[SourceFile | Skipped]:
    """A stream's entries, relative paths taken from its ``base``; line by line, never held whole."""
    rows = null_rows(source.stream) if source.null else text_rows(decoded_lines(source.stream))
    try:
        for name, _ in once_in_a_row(rows):  # (a NUL-ended name is kept exactly, spaces included)
            yield _single(Path(os.path.abspath(os.path.join(source.base, name))) if source.null
                          else _listed_path(source.base, name))
    except OSError as exc:
        raise CollectionError(f"cannot read the list of paths on {source}: {exc}") from exc


def _listed_path(base: str, name: str) -> Path:
    """A list's line or cell as a path from ``base``, without the spaces around it unless the file's name has them
    (``mmr label --out`` writes names as they are, and its CSV is meant to be read back as a list)."""
    path = Path(os.path.abspath(os.path.join(base, name.strip())))
    if name != name.strip() and name.strip() and os.path.lexists(os.path.join(base, name)):
        return Path(os.path.abspath(os.path.join(base, name)))
    return path


def decode_file(task: DecodeTask, preparer: ImagePreparer, max_pixels: int = DEFAULT_MAX_PIXELS) -> Decoded | Failed:
    """Read, hash, decode and prepare one file; every problem becomes a :class:`Failed` with a reason."""
    try:
        data = read_image_file(task.path)
        decoded = decode_file_bytes(data, task.path, draft_size=preparer.size, max_pixels=max_pixels)
        pixels = preparer(decoded.image)
        metadata = photo_metadata(decoded.exif, mtime_ns=file_mtime_ns(task.path), width=decoded.width,
                                  height=decoded.height)
    except ImageDecodeError as exc:
        return Failed(task.image_id, exc.reason, str(exc))
    except Exception as exc:  # a Pillow or transform bug on one file must not stop the run
        logger.debug("unexpected decode failure for %s", task.path, exc_info=True)
        return Failed(task.image_id, "corrupt", f"cannot decode: {type(exc).__name__}: {exc}")
    return Decoded(task.image_id, content_hash(data), decoded.width,
                   decoded.height, decoded.format, np.ascontiguousarray(pixels), metadata)


@dataclass(frozen=True)
class FileDecoder:
    """:func:`decode_file` with a pixel limit: pickled into the decoding processes, equal by value (Ray's workers
    keep one decoding pool per decoder)."""

    max_pixels: int = DEFAULT_MAX_PIXELS  # refuse images with more pixels (decompression bombs)

    def __call__(self, task: DecodeTask, preparer: ImagePreparer) -> Decoded | Failed:
        return decode_file(task, preparer, self.max_pixels)


def file_mtime_ns(path: str) -> int | None:
    """The file's modification time in ns (as :func:`storable_mtime_ns`), None if it is gone."""
    try:
        return storable_mtime_ns(os.stat(path).st_mtime_ns)
    except OSError:
        return None


_INT64 = 2**63 - 1


def storable_mtime_ns(mtime_ns: int) -> int:
    """A modification time in ns that fits the catalog's 64-bit integers: past April 2262 (a clock gone wrong,
    ``touch -d 2300-01-01``), nanoseconds overflow them, and one such file failed every ingest of its folder."""
    return max(-_INT64, min(mtime_ns, _INT64))
