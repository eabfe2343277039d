"""A collection's segment files as they lie on disk: their names, the checksummed manifest that lists them, and
their rows read through memory maps.

:class:`SegmentFiles` is the base of :class:`~mmretrieval.collection.segments.SegmentStore`, which adds what the
collection's writer does to the files (appends, sealing, adding, dropping, garbage collection); the layout is
described in :mod:`.segments`.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ..atomic import atomic_write_text
from ..errors import CollectionError, SegmentFileMissing
from ..wording import counted
from .sealed import DEFAULT_DTYPE, check_dtype, row_lengths

SEGMENTS_DIRNAME = "segments"
RESTORE = "restore it from a backup (README: Backups)"  # for the manifest, which no writer can rebuild
DAMAGED = ("the collection's segments are damaged: the next `mmr ingest` into it embeds the images whose vectors "
           "were lost again from their files (README: Backups)")
MANIFEST_NAME = "manifest.json"
# What a reader meets when a writer's clean-up deleted a segment file after a compaction moved its rows (the .ids
# read by numpy, the .vec by the store): it asks the catalog again, which points at the new segments.
SEGMENT_GONE = (FileNotFoundError, SegmentFileMissing)
_FORMAT = 1


def scale_to_unit_length(vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """``vectors`` with each row divided by its length, in place. A unit vector stored as float16 comes back
    1 +- 4e-5 long, so raw dot products put a re-saved copy of an image (1.00004: "1.0000") above its byte-identical
    copy (0.99998), and a threshold of 1 missed the latter. Rows of length 0 or NaN (damage, which ``mmr check``
    names) are left as they are."""
    lengths = row_lengths(vectors)
    return np.divide(vectors, lengths[:, None], out=vectors, where=(lengths > 0)[:, None])


@dataclass(frozen=True)
class SegmentInfo:
    """One manifest entry."""

    number: int  # file stem, zero-padded to 6 digits
    sealed: bool  # False only for the active segment, which the writer appends to
    count: int = 0  # rows (sealed segments only)
    size: int = 0  # bytes of the .vec file (sealed only)
    sha256: str = ""  # of the .vec file (sealed only)
    ids_sha256: str = ""  # of the .ids file (sealed only)


def missing_manifest(directory: Path) -> str:
    """What to say of a segments folder whose manifest is gone while the catalog points at vectors there."""
    return (f"{directory / MANIFEST_NAME} is missing, so the vectors the catalog points at cannot be read; "
            f"{RESTORE}")


class SegmentFiles:
    """The segments of one collection as any reader sees them: the manifest and memory maps of the rows.

    Only :class:`~mmretrieval.collection.segments.SegmentStore` is made; it adds the writer's methods.
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self._maps: dict[int, np.memmap] = {}
        self._manifest: dict | None = None
        self._manifest_mtime: tuple[int, int, int] | None = None

    # -- manifest ---------------------------------------------------------------------------------------------
    @property
    def exists(self) -> bool:
        return (self.directory / MANIFEST_NAME).is_file()

    def manifest(self, refresh: bool = False) -> dict:
        """The manifest (re-read when the file changed, or with ``refresh``).

        Raises:
            CollectionError: the manifest is corrupt (its checksum does not match).
        """
        path = self.directory / MANIFEST_NAME
        try:
            info = path.stat()
            mtime = (info.st_ino, info.st_mtime_ns, info.st_size)  # atomic replaces change the inode
        except FileNotFoundError:
            raise CollectionError(missing_manifest(self.directory)) from None
        if refresh or self._manifest is None or mtime != self._manifest_mtime:
            try:
                manifest = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise CollectionError(f"{path} is unreadable ({exc}); {RESTORE}") from exc
            if manifest.pop("checksum", None) != _checksum(manifest):
                raise CollectionError(f"{path} does not match its checksum (corrupt); {RESTORE}")
            self._manifest, self._manifest_mtime = manifest, mtime
        return self._manifest

    def create(self, dim: int, dtype: str = DEFAULT_DTYPE) -> None:
        """Write an empty manifest for ``dim``-d vectors of ``dtype`` (no-op if one exists)."""
        if self.exists:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        self.write_manifest({"format": _FORMAT, "dim": int(dim), "dtype": check_dtype(dtype), "next_number": 1,
                             "segments": []})

    def write_manifest(self, manifest: dict) -> None:
        body = {key: value for key, value in manifest.items() if key != "checksum"}
        atomic_write_text(self.directory / MANIFEST_NAME, json.dumps({**body, "checksum": _checksum(body)}, indent=1))
        self._manifest, self._manifest_mtime = None, None

    @property
    def dim(self) -> int:
        return int(self.manifest()["dim"])

    @property
    def dtype(self) -> str:
        return str(self.manifest()["dtype"])

    def segments(self) -> list[SegmentInfo]:
        return [SegmentInfo(**entry) for entry in self.manifest()["segments"]]

    def rows_in(self, number: int) -> int:
        """Rows in segment ``number`` (for the active one: complete rows on disk now)."""
        entry = next((s for s in self.segments() if s.number == number), None)
        if entry is None:
            return 0
        if entry.sealed:
            return entry.count
        return self._vec_bytes(number) // self._row_bytes()

    def intact_rows(self, entry: SegmentInfo) -> int:
        """Rows of a listed segment that both its files hold whole (0 when one is gone), at most a sealed one's
        count: the rows past them are lost (a file deleted or cut short), whatever the manifest says."""
        sizes = []
        for suffix, row_bytes in (("vec", self._row_bytes()), ("ids", 8)):
            try:
                sizes.append(segment_path(self.directory, entry.number, suffix).stat().st_size // row_bytes)
            except FileNotFoundError:
                return 0
        return min(*sizes, entry.count) if entry.sealed else min(sizes)

    def total_rows(self) -> int:
        return sum(self.rows_in(s.number) for s in self.segments())

    # -- reading ----------------------------------------------------------------------------------------------
    def gather(self, numbers: npt.ArrayLike, rows: npt.ArrayLike, stored_dtype: bool = False,
               unit_length: bool = False) -> npt.NDArray:
        """Vectors at places ``(numbers[i], rows[i])``, in that order: float32, or as stored (for copying).

        ``unit_length`` scales float16 rows to length 1 (see :func:`scale_to_unit_length`), for scores that are
        cosines; float32 rows are unit vectors to float32's precision already, and stay as stored, as every row
        does without it (``mmr check`` judges them, copies reuse them)."""
        numbers, rows = np.asarray(numbers, np.int64), np.asarray(rows, np.int64)
        out = np.empty((len(rows), self.dim), self.dtype if stored_dtype else np.float32)
        for number in np.unique(numbers):
            where = np.flatnonzero(numbers == number)
            out[where] = self._map(int(number), int(rows[where].max()) + 1)[rows[where]]
        return scale_to_unit_length(out) if unit_length and not stored_dtype and self.dtype == "float16" else out

    def read_rows(self, number: int, start: int, stop: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """``(ids, float32 vectors)`` of rows ``start:stop`` of one segment (a block of a stream)."""
        vectors = np.asarray(self._map(number, stop)[start:stop], dtype=np.float32)
        ids = np.fromfile(segment_path(self.directory, number, "ids"), dtype="<i8", count=stop - start,
                          offset=8 * start)
        return ids.astype(np.int64), vectors

    def _map(self, number: int, needed_rows: int) -> np.memmap:
        mapped = self._maps.get(number)
        if mapped is None or len(mapped) < needed_rows:
            path = segment_path(self.directory, number, "vec")
            rows = self._vec_bytes(number) // self._row_bytes()
            if rows < needed_rows:
                raise CollectionError(f"{path} holds {counted(rows, 'row')}, the catalog points at row "
                                      f"{needed_rows - 1}; {DAMAGED}")
            mapped = np.memmap(path, dtype=np.dtype(self.dtype).newbyteorder("<"), mode="r", shape=(rows, self.dim))
            self._maps[number] = mapped
        return mapped

    def _vec_bytes(self, number: int) -> int:
        path = segment_path(self.directory, number, "vec")
        try:
            return path.stat().st_size
        except FileNotFoundError:
            raise SegmentFileMissing(str(path), f"{path} is missing; {DAMAGED}") from None

    def forget_maps(self) -> None:
        """Drop the memory maps (after compaction deleted files; a reader re-maps what it needs)."""
        self._maps.clear()

    def _row_bytes(self) -> int:
        return self.dim * np.dtype(self.dtype).itemsize


def _checksum(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def segment_path(directory: Path, number: int, suffix: str) -> Path:
    """Segment ``number``'s file with ``suffix`` (``vec``: the vectors, ``ids``: their catalog ids)."""
    return directory / f"{number:06d}.{suffix}"
