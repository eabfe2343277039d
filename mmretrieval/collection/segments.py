"""Vector segments: append-only, memory-mapped files of embeddings, listed in a checksummed manifest.

A collection keeps its vectors here, not in SQLite. The catalog keeps each row's *place* (segment number,
row); a deleted or replaced vector is a tombstone (no catalog row points at its place any more) until
compaction (:mod:`.compaction`) rewrites the live rows into new segments.

On disk, in ``<collection>/segments/``::

    manifest.json        {"format", "dim", "dtype", "next_number", "segments": [...], "checksum"} (atomic writes)
    000001.vec           count x dim little-endian float16 (default) or float32, row-major, no header
    000001.ids           count little-endian int64: the catalog id each row was written for

Every segment listed in the manifest is *sealed* (its count, size and sha256 are in the manifest) except at
most one *active* segment that the collection's writer appends to; its row count is its file size divided
by the row size. Appends are fsynced before the catalog commits a place in them, so a committed place always
points at complete bytes; a torn tail left by a killed writer is cut off when the next writer opens the store.

The manifest, the file names and reading rows are :mod:`.segment_files`'s (:class:`SegmentStore` inherits them);
this module is what the collection's writer does to the files.

Public API (what ingest, ``mmr import`` and the Ray runner use)::

    # anywhere (another process, another node): write and seal a segment of your own
    writer = SegmentWriter(out_dir, dim=512, dtype="float16", name="part-00007")
    writer.append(ids, vectors)          # ids: catalog ids (int64), vectors: (n, dim) unit rows
    sealed = writer.seal()               # fsync + sha256; writes part-00007.json next to the data
    # later, in the collection's writer (under its lock): idempotent by path + content hash
    catalog.commit_segment(read_sealed(out_dir / "part-00007.json"), metadata=..., failures=...)

:func:`read_sealed` verifies the files against their descriptor. Committing the same sealed segment twice
does nothing the second time (the catalog remembers each committed segment's sha256 and source path).

Memory: the store maps files (page cache, not anonymous memory). Gathering ``n`` vectors costs ``n x dim``
float32 of RAM; streaming (:meth:`SegmentStore.read_rows` over blocks) costs one block. For a 10 M x 512
collection the segment files take 10 GB (float16) or 20 GB (float32) on disk; a search needs only the
pages of the vectors it re-ranks.
"""

from __future__ import annotations

import logging
import os
import functools
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Sequence, TypeVar

import numpy as np
import numpy.typing as npt

from ..atomic import file_sha256, fsync_dir, remove_stale_temporaries
from ..errors import CollectionError
from .sealed import (DEFAULT_DTYPE, DTYPES, RunningDigest, SealedSegment, SegmentWriter, check_dtype, checksums,
                     read_sealed, write_rows)
from .segment_files import MANIFEST_NAME, SegmentFiles, SegmentInfo, segment_path

__all__ = ["DEFAULT_DTYPE", "DTYPES", "SEGMENT_ROWS", "SealedSegment", "SegmentStore", "SegmentWriter", "check_dtype",
           "file_sha256", "read_sealed"]

logger = logging.getLogger(__name__)

SEGMENT_ROWS = 1 << 20  # an active segment is sealed past this many rows (1 GiB at 512-d float16)

_Method = TypeVar("_Method", bound=Callable)


def _writes_by_path(method: _Method) -> _Method:
    """For the store's methods that change files by path: refused on a read-only store, or when the collection's
    folder was moved or deleted (``before_write``); and an error midway (a file or the manifest gone) is named
    as that move when the folder went while the method ran, as it can under an append already under way."""
    @functools.wraps(method)
    def checked(self: "SegmentStore", *args, **kwargs):
        self._require_writable()
        try:
            return method(self, *args, **kwargs)
        except (OSError, CollectionError):
            if self._before_write is not None:
                self._before_write()
            raise
    return checked  # type: ignore[return-value]


class SegmentStore(SegmentFiles):
    """The segments of one collection: manifest, memory maps, the active segment's appends.

    Readers use :meth:`gather` / :meth:`read_rows`; every method that changes a file is for the collection's
    writer, which holds the collection lock. A read-only store (``writable=False``) never touches the disk.

    The files are written by path, so each change first calls ``before_write`` (the catalog's
    :meth:`~mmretrieval.collection.catalog.Catalog.check_in_place`), which refuses when the collection's folder
    was moved or deleted since it opened: a store made afresh at the old path, or another collection moved there,
    would take rows whose places the moved catalog then recorded.
    """

    def __init__(self, directory: str | os.PathLike, writable: bool = True,
                 before_write: Callable[[], None] | None = None):
        super().__init__(directory)
        self.writable = writable
        self._before_write = before_write
        # the active segment's checksums, kept up with this store's appends when it made the segment itself
        self._digest: tuple[int, RunningDigest] | None = None

    def close(self) -> None:
        """Unmap the segment files and stop the checksum thread (idempotent; a later read maps them again).

        The active segment's running checksum is finished and dropped: whoever seals it reads it back from disk.
        """
        followed, self._digest = self._digest, None
        try:
            if followed is not None:
                followed[1].hexdigests()  # waits for the queued appends and joins the hashing thread
        finally:
            self._maps.clear()

    # -- writing (the collection's writer only) ---------------------------------------------------------------
    def append(self, ids: npt.ArrayLike, vectors: npt.ArrayLike) -> tuple[int, int]:
        """Append to the active segment (made or rotated as needed) and fsync; returns ``(number, first row)``."""
        placed = self.append_blocks([(ids, vectors)])[0]
        if self._digest is not None:
            self._digest[1].wait()  # hashed: the caller may refill its arrays
        return placed

    @_writes_by_path
    def append_blocks(self, blocks: Iterable[tuple[npt.ArrayLike, npt.ArrayLike]],
                      written: Callable[[int, int], None] | None = None) -> list[tuple[int, int]]:
        """:meth:`append` for each ``(ids, vectors)`` block, made durable once at the end (and before a segment
        is sealed) rather than once a block: a thread of its own keeps the disk writing back (``fdatasync``)
        while the caller makes the next block, so little is left for the final fsync.

        Returns each block's ``(number, first row)``, also passed to ``written`` as soon as the block is written
        (not yet durable: a catalog may record the place then, but must not commit it before this returns).
        Blocks written before an error are unreferenced waste. A block's arrays must not change afterwards
        (pass copies, or memory maps of files nobody rewrites): the segment's checksum is computed from them on
        a thread, up to two blocks behind the writes, and waiting for it at the end of every call cost an import
        ~10% of its speed (185,432-189,226/s against 205,360/s at 10 M). :meth:`append` does wait."""
        placed: list[tuple[int, int]] = []
        open_files: list[BinaryIO] = []  # the active segment's .vec and .ids while they are open
        number = 0
        flusher = _BackgroundFlush()
        try:
            for ids, vectors in blocks:
                count = len(np.asarray(ids))
                if open_files and self.rows_in(number) + count > SEGMENT_ROWS:
                    flusher.settle()
                    _sync_and_close(open_files)  # durable before _active seals it and starts the next
                number = self._active(count)
                if not open_files:
                    open_files = [open(segment_path(self.directory, number, suffix), "ab")
                                  for suffix in ("vec", "ids")]
                offset = open_files[0].tell()
                written_rows = write_rows(open_files[0], open_files[1], ids, vectors, self.dim, self.dtype)
                self._follow(number, offset, written_rows)
                first = offset // self._row_bytes()
                for handle in open_files:
                    handle.flush()  # to the OS, so rows_in (file size) counts it
                if placed:  # from the second block on (a one-block append starts no thread)
                    flusher.nudge(open_files[0])
                placed.append((number, first))
                if written is not None:
                    written(number, first)
        finally:
            try:
                flusher.close()
            finally:
                _sync_and_close(open_files)
        return placed

    def _follow(self, number: int, offset: int, written: tuple[np.ndarray, np.ndarray]) -> None:
        """Hash an append to segment ``number`` at byte ``offset`` along with the ones before it, if this store
        has followed the segment from its first byte (else its checksums are read back from disk when sealed)."""
        if self._digest is not None and self._digest[0] == number and self._digest[1].vec_bytes == offset:
            self._digest[1].feed(*written)
            return
        if self._digest is not None:
            self._digest[1].abandon()
            self._digest = None
        if offset == 0:
            digest = RunningDigest()
            digest.feed(*written)
            self._digest = (number, digest)

    def _active(self, incoming: int) -> int:
        manifest = self.manifest()
        active = next((s for s in self.segments() if not s.sealed), None)
        if active is not None and self.rows_in(active.number) + incoming <= SEGMENT_ROWS:
            return active.number
        if active is not None:
            self.seal_active()
            manifest = self.manifest()
        number = self.new_number()
        for suffix in ("vec", "ids"):
            segment_path(self.directory, number, suffix).touch()
        fsync_dir(self.directory)
        manifest = self.manifest()
        self.write_manifest({**manifest, "segments": manifest["segments"] + [asdict(SegmentInfo(number, False))]})
        return number

    @_writes_by_path
    def new_number(self) -> int:
        """Reserve a segment number (recorded in the manifest, so it is never reused)."""
        manifest = self.manifest()
        number = int(manifest["next_number"])
        self.write_manifest({**manifest, "next_number": number + 1})
        return number

    def seal_active(self) -> None:
        """Seal the active segment (if any): it stops growing and gets its checksums."""
        manifest = self.manifest()
        entries = [SegmentInfo(**entry) for entry in manifest["segments"]]
        for i, entry in enumerate(entries):
            if not entry.sealed:
                rows = self.rows_in(entry.number)
                entries[i] = self._sealed_info(entry.number, rows)
        self.write_manifest({**manifest, "segments": [asdict(e) for e in entries]})

    def _sealed_info(self, number: int, rows: int) -> SegmentInfo:
        vec, ids = self.cut_to(number, rows)
        followed, self._digest = self._digest, None
        if followed is not None and followed[0] != number:  # another segment's: of no use here
            followed[1].abandon()
            followed = None
        return SegmentInfo(number, True, rows, vec.stat().st_size,
                           *checksums(vec, ids, followed[1] if followed is not None else None))

    def cut_to(self, number: int, rows: int) -> tuple[Path, Path]:
        """Cut a segment's files to ``rows`` whole rows (a killed writer's torn tail, or what is left of a damaged
        active segment: a file gone is made anew, empty); returns their paths."""
        vec, ids = segment_path(self.directory, number, "vec"), segment_path(self.directory, number, "ids")
        for path, size in ((vec, rows * self._row_bytes()), (ids, 8 * rows)):
            if not path.exists() or path.stat().st_size != size:
                with open(path, "ab") as handle:  # made if gone; "ab" never cuts, so truncate
                    handle.truncate(size)
                    os.fsync(handle.fileno())
        self._maps.pop(number, None)
        return vec, ids

    @_writes_by_path
    def add_sealed(self, sealed: SealedSegment) -> int:
        """Copy (or hard-link) a sealed segment's files in under a new number and list it; returns the number.

        Nothing points at it until the caller's catalog transaction does; if that never happens, the next
        :meth:`collect_garbage` removes it.
        """
        if sealed.dim != self.dim or sealed.dtype != self.dtype:
            raise CollectionError(f"segment {sealed.name} is {sealed.dim}-d {sealed.dtype}, the collection stores "
                                  f"{self.dim}-d {self.dtype}; write it with SegmentWriter(dim={self.dim}, "
                                  f"dtype={self.dtype!r})")
        number = self.new_number()
        for source, suffix in ((sealed.vec_path, "vec"), (sealed.ids_path, "ids")):
            _link_or_copy(source, segment_path(self.directory, number, suffix))
        fsync_dir(self.directory)
        manifest = self.manifest()
        info = SegmentInfo(number, True, sealed.count, sealed.size, sealed.sha256, sealed.ids_sha256)
        self.write_manifest({**manifest, "segments": manifest["segments"] + [asdict(info)]})
        return number

    @_writes_by_path
    def drop(self, numbers: Sequence[int]) -> None:
        """Unlist segments, then delete their files (the manifest first, so a crash leaves only orphan files)."""
        gone = set(int(n) for n in numbers)
        if not gone:
            return
        manifest = self.manifest()
        self.write_manifest({**manifest, "segments": [s for s in manifest["segments"] if s["number"] not in gone]})
        for number in gone:
            self._maps.pop(number, None)
            for suffix in ("vec", "ids"):
                segment_path(self.directory, number, suffix).unlink(missing_ok=True)
        fsync_dir(self.directory)

    @_writes_by_path
    def collect_garbage(self, referenced: dict[int, int]) -> list[int]:
        """Cut torn tails, drop listed segments nothing references, delete unlisted files and the manifest's
        temporaries; returns the numbers dropped.

        Args:
            referenced: the rows the catalog points into, by segment number (its last place's row + 1; the caller
                reads them under the lock). An active segment is never cut below them: a file a network share
                called missing for a moment read as 0 rows, and the cut emptied the whole segment.
        """
        listed = self.segments()
        unused = [s.number for s in listed if s.number not in referenced]
        self.drop(unused)
        known = {s.number for s in listed} - set(unused)
        for path in self.directory.glob("*.*"):
            stem, _, suffix = path.name.partition(".")
            if suffix in ("vec", "ids") and stem.isdigit() and int(stem) not in known:
                logger.info("removing %s, left by an interrupted compaction or commit", path.name)
                path.unlink(missing_ok=True)
        for path in remove_stale_temporaries(self.directory, MANIFEST_NAME):
            logger.info("removed %s, left by an interrupted manifest write", path.name)
        for entry in self.segments():
            if not entry.sealed:  # a writer killed mid-append leaves a partial row; cut .vec and .ids alike
                intact = self.intact_rows(entry)
                if intact >= referenced.get(entry.number, 0):  # else a file looked short or gone for a moment
                    self.cut_to(entry.number, intact)
        return unused

    @_writes_by_path
    def create(self, dim: int, dtype: str = DEFAULT_DTYPE) -> None:
        super().create(dim, dtype)

    def _require_writable(self) -> None:
        if not self.writable:
            raise CollectionError(f"{self.directory} was opened read-only; vectors can only be written by a "
                                  "writer command (ingest, import, compact) on a writable collection")
        if self._before_write is not None:
            self._before_write()


class _BackgroundFlush:
    """``fdatasync`` a file being appended to on a thread of its own, one call at a time, while the writer goes on:
    Linux starts writing dirty pages back only past a threshold (gigabytes) or at an fsync, so without this the
    final fsync of a large append would wait for all of it."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="mmr-segment-flush")
        self._pending: Future[None] | None = None

    def nudge(self, handle: BinaryIO) -> None:
        """Start a flush of ``handle`` unless one is still running (errors surface at the next settle)."""
        if self._pending is None or self._pending.done():
            self.settle()
            self._pending = self._pool.submit(os.fdatasync, handle.fileno())

    def settle(self) -> None:
        """Wait for the running flush (before its file is closed); raises its OSError."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        try:
            self.settle()
        finally:
            self._pool.shutdown()


def _sync_and_close(files: list[BinaryIO]) -> None:
    """fsync and close ``files`` (emptied: a second call does nothing)."""
    while files:
        handle = files.pop(0)
        with handle:
            handle.flush()
            os.fsync(handle.fileno())


def _link_or_copy(source: Path, target: Path) -> None:
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed: copy (and fsync) instead
        shutil.copyfile(source, target)
        with open(target, "rb+") as handle:
            os.fsync(handle.fileno())
