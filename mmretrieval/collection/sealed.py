"""Sealed segments written outside the collection: :class:`SegmentWriter`, :class:`SealedSegment`, :func:`read_sealed`.

A process (an import, a Ray worker on another node) writes ``<name>.vec`` (rows of ``dim`` little-endian
float16 or float32), ``<name>.ids`` (little-endian int64 catalog ids, one per row) and, on :meth:`SegmentWriter.seal`,
``<name>.json`` describing them (dim, dtype, count, size, sha256 of both files). The collection's writer then
commits it with :meth:`Catalog.commit_segment <mmretrieval.collection.places.VectorPlaces.commit_segment>`;
see :mod:`.segments` for the whole picture.

Memory: appends stream to the files (the checksums follow them on a thread, at most two appends behind);
:func:`read_sealed` checksums in 1 MiB reads.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from ..atomic import atomic_write_text, file_sha256
from ..errors import CollectionError

DTYPES = ("float16", "float32")
DEFAULT_DTYPE = "float16"  # half the disk and page cache of float32; cosine error ~1e-3, below ranking noise
NORM_TOLERANCE = 0.01  # a unit vector stored as float16 is within 0.002 of length 1 (512-d); damage is far off


@dataclass(frozen=True)
class SealedSegment:
    """A finished segment written by :class:`SegmentWriter`, described by ``<name>.json`` beside its files."""

    directory: Path  # where ``<name>.vec`` / ``<name>.ids`` / ``<name>.json`` are
    name: str
    dim: int
    dtype: str  # float16 | float32
    count: int
    size: int  # bytes of the .vec file
    sha256: str  # of the .vec file: the segment's identity for idempotent commits
    ids_sha256: str

    @property
    def vec_path(self) -> Path:
        return self.directory / f"{self.name}.vec"

    @property
    def ids_path(self) -> Path:
        return self.directory / f"{self.name}.ids"

    def ids(self) -> npt.NDArray[np.int64]:
        """The catalog ids of the rows, in row order."""
        return np.fromfile(self.ids_path, dtype="<i8").astype(np.int64)


class SegmentWriter:
    """Writes one segment: ``append`` blocks of ``(ids, vectors)``, then ``seal``.

    Args:
        directory: where to write (created if missing).
        dim: vector dimension.
        dtype: ``float16`` or ``float32`` (must match the collection it will be committed to).
        name: file stem; must be new in ``directory``.

    Raises:
        CollectionError: an unknown dtype, a name already used, or an append of the wrong shape or of rows that
            are not unit length.
    """

    def __init__(self, directory: str | os.PathLike, dim: int, dtype: str = DEFAULT_DTYPE, name: str = "segment"):
        self.directory = Path(directory)
        self.dim = int(dim)
        self.dtype = check_dtype(dtype)
        self.name = name
        self.count = 0
        self.directory.mkdir(parents=True, exist_ok=True)
        vec, ids = self.directory / f"{name}.vec", self.directory / f"{name}.ids"
        if vec.exists() or ids.exists():
            raise CollectionError(f"segment {name!r} already exists in {self.directory}; choose another name")
        self._vec = open(vec, "xb")
        self._ids = open(ids, "xb")
        self._digest = RunningDigest()

    def append(self, ids: npt.ArrayLike, vectors: npt.ArrayLike, check_lengths: bool = True) -> int:
        """Append rows; returns the row number of the first one.

        Every row must be a unit vector (within :data:`NORM_TOLERANCE`), as the collection's cosine scores assume;
        ``check_lengths=False`` is for rows copied from a collection's own segments (compaction), which
        ``mmr check`` judges, so that damage there stops no copy."""
        if check_lengths:
            _check_unit_rows(vectors, self.directory / f"{self.name}.vec")
        first = self.count
        written = write_rows(self._vec, self._ids, ids, vectors, self.dim, self.dtype)
        self._digest.feed(*written)
        self._digest.wait()  # the caller may refill its arrays once this returns
        self.count += len(written[1])
        return first

    def seal(self) -> SealedSegment:
        """Flush, fsync and checksum the files; write ``<name>.json`` atomically and return its contents."""
        for handle in (self._vec, self._ids):
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()
        vec, ids = self.directory / f"{self.name}.vec", self.directory / f"{self.name}.ids"
        sealed = SealedSegment(self.directory, self.name, self.dim, self.dtype, self.count, vec.stat().st_size,
                               *checksums(vec, ids, self._digest))
        described = {key: value for key, value in asdict(sealed).items() if key != "directory"}
        atomic_write_text(self.directory / f"{self.name}.json", json.dumps(described, indent=1, sort_keys=True))
        return sealed


def row_lengths(rows: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """Each row's Euclidean length, summed in ``dtype``, with no ``(rows, dim)`` temporary (``norm()`` makes one)."""
    return np.sqrt(np.einsum("ij,ij->i", rows, rows, dtype=dtype))


def exact_cosines(rows: npt.ArrayLike, other: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """The cosine of each of ``rows`` with ``other`` (as many rows, or one vector for all), as every score of a
    collection is given (a search's hits, `mmr duplicates`' pairs): in float64, each product divided by both
    lengths, to six decimals, within [-1, 1] (a zero row scores 0). float16 storage leaves vectors 1 +- 4e-5 long,
    and float32 sums of 768 products and more left a byte-identical copy below 1, which a threshold of 1 missed."""
    rows, other = np.asarray(rows, np.float64), np.asarray(other, np.float64)
    if other.ndim == 1:
        dots, other_lengths = rows @ other, np.linalg.norm(other)
    else:
        dots, other_lengths = np.einsum("ij,ij->i", rows, other), row_lengths(other, np.float64)
    lengths = row_lengths(rows, np.float64) * other_lengths
    return np.clip(np.round(dots / np.where(lengths > 0, lengths, 1.0), 6), -1.0, 1.0)


def not_unit(lengths: np.ndarray) -> npt.NDArray[np.bool_]:
    """Which lengths are not 1 within :data:`NORM_TOLERANCE` (NaN included): damaged or unnormalised rows."""
    return ~(np.abs(lengths - 1) <= NORM_TOLERANCE)


def _check_unit_rows(vectors: npt.ArrayLike, path: Path) -> None:
    rows = np.asarray(vectors)
    if rows.ndim != 2 or rows.dtype.kind not in "fiu":
        return  # write_rows names the wrong shape; a wrong dtype fails its conversion
    lengths = row_lengths(rows, np.float64)  # float64 and int rows too
    wrong = not_unit(lengths)
    if wrong.any():
        first = int(np.flatnonzero(wrong)[0])
        raise CollectionError(f"cannot append to {path}: {int(wrong.sum())} of {len(rows)} rows are not unit vectors "
                              f"(row {first} has length {lengths[first]:.4g}); divide each row by its norm first")


def read_sealed(descriptor: str | os.PathLike, verify: bool = True) -> SealedSegment:
    """The sealed segment described by ``<name>.json``, its files checked against sizes (and checksums).

    Raises:
        CollectionError: the descriptor is unreadable, or a file is missing, truncated or altered.
    """
    descriptor = Path(descriptor)
    try:
        fields = json.loads(descriptor.read_text(encoding="utf-8"))
        sealed = SealedSegment(directory=descriptor.parent, **fields)
    except (OSError, ValueError, TypeError) as exc:
        raise CollectionError(f"{descriptor} is not a segment descriptor ({exc}); re-write that segment") from exc
    check_dtype(sealed.dtype)
    row_bytes = sealed.dim * np.dtype(sealed.dtype).itemsize
    problem = None
    if not sealed.vec_path.is_file() or not sealed.ids_path.is_file():
        problem = "its .vec or .ids file is missing"
    elif sealed.vec_path.stat().st_size != sealed.size or sealed.size != sealed.count * row_bytes:
        problem = f"{sealed.vec_path.name} is {sealed.vec_path.stat().st_size} bytes, expected {sealed.size}"
    elif sealed.ids_path.stat().st_size != 8 * sealed.count:
        problem = f"{sealed.ids_path.name} holds {sealed.ids_path.stat().st_size // 8} ids, expected {sealed.count}"
    elif verify and (file_sha256(sealed.vec_path) != sealed.sha256 or file_sha256(sealed.ids_path) != sealed.ids_sha256):
        problem = "its files do not match their sha256 (corrupt or modified)"
    if problem:
        raise CollectionError(f"segment {descriptor} is damaged: {problem}; re-write it, nothing of it was used")
    return sealed


def write_rows(vec: BinaryIO, id_file: BinaryIO, ids: npt.ArrayLike, vectors: npt.ArrayLike, dim: int, dtype: str
               ) -> tuple[np.ndarray, np.ndarray]:
    """Append rows to a segment's two files; returns the ``(vectors, ids)`` arrays whose bytes were written."""
    ids = np.ascontiguousarray(ids, dtype="<i8").reshape(-1)
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or vectors.shape != (len(ids), dim):
        raise CollectionError(f"cannot append vectors of shape {vectors.shape} with {len(ids)} ids to a "
                              f"{dim}-d segment; pass (n, {dim}) vectors and n ids")
    vectors = np.ascontiguousarray(vectors, dtype=np.dtype(dtype).newbyteorder("<"))
    vec.write(vectors.data)  # buffers, not copies
    id_file.write(ids.data)
    return vectors, ids


class RunningDigest:
    """The sha256 of a segment's ``.vec`` and ``.ids`` files, fed the bytes as they are appended and computed on
    a thread of its own (hashlib releases the GIL), so sealing need not read the files back: a GiB takes
    0.7-2 s to hash from the page cache on this project's machine, which an import would otherwise wait for at
    every segment it fills. At most two appends wait to be hashed (their arrays are held until then)."""

    def __init__(self) -> None:
        self.vec_bytes = self.ids_bytes = 0  # bytes fed so far
        self._vec, self._ids = hashlib.sha256(), hashlib.sha256()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="mmr-segment-digest")
        self._pending: deque[Future[None]] = deque()

    def feed(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Hash the bytes of an append (in order after the earlier ones), waiting while two are still queued."""
        while len(self._pending) >= 2:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(self._update, vectors, ids))
        self.vec_bytes += vectors.nbytes
        self.ids_bytes += ids.nbytes

    def _update(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        self._vec.update(vectors.data)
        self._ids.update(ids.data)

    def wait(self) -> None:
        """Return once everything fed is hashed (the arrays fed may then change)."""
        while self._pending:
            self._pending.popleft().result()

    def hexdigests(self) -> tuple[str, str]:
        """``(sha256 of .vec, sha256 of .ids)`` of everything fed; the digest takes no more bytes after this."""
        try:
            self.wait()
        finally:
            self._pool.shutdown()
        return self._vec.hexdigest(), self._ids.hexdigest()

    def abandon(self) -> None:
        """Stop hashing (the file was appended to behind its back, or is gone)."""
        self._pending.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)


def checksums(vec: Path, ids: Path, followed: RunningDigest | None) -> tuple[str, str]:
    """``(sha256 of vec, sha256 of ids)``: from the digest that followed the appends when it was fed exactly the
    files' bytes, else read back from the files (an append failed midway, or someone else began them)."""
    if followed is not None and (followed.vec_bytes, followed.ids_bytes) == (vec.stat().st_size, ids.stat().st_size):
        return followed.hexdigests()
    if followed is not None:
        followed.abandon()
    return file_sha256(vec), file_sha256(ids)


def check_dtype(dtype: str) -> str:
    """``dtype`` if it is one of :data:`DTYPES`; raises CollectionError naming it otherwise."""
    if dtype not in DTYPES:
        raise CollectionError(f"unknown vector dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    return dtype
