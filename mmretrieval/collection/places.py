"""The catalog's half of vector storage: each row's place in the segments, and the writes that move them.

:class:`VectorPlaces` is mixed into :class:`~mmretrieval.collection.catalog.Catalog`: the SQL that records,
looks up and streams places (``vector_rows``: image id -> generation, segment, row) lives here; the bytes live
in :class:`~mmretrieval.collection.segments.SegmentStore`. Writers append the bytes (fsynced) first and then
commit the places in one transaction, so a committed place always points at complete bytes and a crash
in between only leaves unreferenced rows (waste, reclaimed by compaction).

Memory: reading ``n`` vectors by id costs ``n x dim`` float32; :meth:`VectorPlaces.iter_vectors` holds one
block (default 65,536 rows: 128 MiB at 512-d) whatever the collection's size; :meth:`vector_ids` holds 8 bytes
per vector (80 MB at 10 M).
"""

from __future__ import annotations

import logging
import sqlite3
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import numpy.typing as npt

from ..errors import CollectionError
from ..images.metadata import PhotoMetadata
from ..json_lines import bytes_escaped
from .photo_table import write_mtime_photos, write_photos
from .label_moves import drop_labels_of_new_content, take_labels_of_moved_files
from .segment_files import SEGMENT_GONE
from .segments import SealedSegment, SegmentStore
from .sql_keys import in_lists

logger = logging.getLogger(__name__)

_BLOCK = 65_536  # rows per streamed block


@dataclass(frozen=True)
class VectorWrite:
    """A vector to store for one row (``embedding`` may be shared by several rows with the same bytes)."""

    image_id: int
    content_hash: str
    width: int
    height: int
    format: str
    embedding: npt.NDArray[np.float32]
    photo: PhotoMetadata | None = None  # capture time, camera, GPS (None: not extracted; dated by its mtime)


@dataclass(frozen=True)
class RowMetadata:
    """What a committed segment's row says about its file (all optional but the id)."""

    image_id: int
    content_hash: str | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    photo: PhotoMetadata | None = None  # capture time, camera, GPS (None: keep what is stored, else mtime)


@dataclass(frozen=True)
class FailureWrite:
    """A row that did not embed, and why."""

    image_id: int
    reason: str
    message: str


@dataclass(frozen=True)
class SegmentCommit:
    """What :meth:`VectorPlaces.commit_segment` did."""

    segment: int  # the number the segment has in the collection
    placed: int  # rows whose place now points into it (0 when already committed)
    unknown_ids: int  # rows whose id is not in the catalog (left as waste)
    already_committed: bool  # the same content was committed before: nothing changed


class VectorPlaces:
    """Vector reads and writes of a catalog (needs ``segments``, ``transaction``, ``_query``, ``_bump_generation``)."""

    segments: SegmentStore
    _db: sqlite3.Connection

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]: ...  # provided by Catalog
    def _query(self, sql: str, params: Sequence = ()) -> list[tuple]: ...
    _lock: AbstractContextManager
    def _bump_generation(self) -> int: ...
    def get_meta(self, key: str) -> str | None: ...

    # -- writing ----------------------------------------------------------------------------------------------
    def write_results(self, vectors: Sequence[VectorWrite], failures: Sequence[FailureWrite]) -> int:
        """Store one batch: append its vectors to the active segment, then commit places and statuses in one
        transaction; returns the new generation. A row whose content hash changed loses its labels (in every
        set); one whose bytes are the same (a file only touched) keeps them; one whose bytes a row of a vanished
        file has (a moved or renamed file) takes that row's labels
        (:func:`.label_moves.take_labels_of_moved_files`)."""
        places: list[tuple[int, int, int]] = []
        if vectors:
            ids = np.array([v.image_id for v in vectors], np.int64)
            self._ensure_store(len(vectors[0].embedding))
            number, first = self.segments.append(ids, np.stack([v.embedding for v in vectors]))
            places = [(int(i), number, first + row) for row, i in enumerate(ids)]
        with self.transaction() as db:
            generation = self._bump_generation()
            drop_labels_of_new_content(db, [(v.image_id, v.content_hash) for v in vectors])
            db.executemany(
                "UPDATE images SET status = 'ok', content_hash = ?, width = ?, height = ?, format = ?, "
                "reason = NULL, message = NULL WHERE id = ?",
                [(v.content_hash, v.width, v.height, v.format, v.image_id) for v in vectors])
            take_labels_of_moved_files(db, [(v.image_id, v.content_hash) for v in vectors])
            db.executemany("INSERT OR REPLACE INTO vector_rows(image_id, generation, segment, row) VALUES (?, ?, ?, ?)",
                           [(i, generation, number, row) for i, number, row in places])
            write_photos(db, [(v.image_id, v.photo) for v in vectors if v.photo is not None])
            write_mtime_photos(db, [v.image_id for v in vectors if v.photo is None])
            _write_failures(db, failures)
        return generation

    def commit_segment(self, sealed: SealedSegment, metadata: Sequence[RowMetadata] = (),
                       failures: Sequence[FailureWrite] = (), source: str | None = None) -> SegmentCommit:
        """Make a sealed segment (written by :class:`~.segments.SegmentWriter`, maybe elsewhere) part of the
        collection: its rows become the vectors of the ids it holds, and those rows turn ``ok``.

        Idempotent: a segment whose content (sha256) was committed before changes nothing. Call it from the
        collection's writer, holding its lock. Ids missing from the catalog are ignored (and counted); an id
        written twice keeps its last row. A row keeps its labels only when ``metadata`` gives it the content hash
        it already had (the same bytes, so the same vector), and takes those of a vanished file's row with the hash it
        gets (a move).

        Args:
            sealed: from :meth:`SegmentWriter.seal` or :func:`~.segments.read_sealed` (files already verified).
            metadata: per-row hash, size and format to record (rows not named keep theirs).
            failures: rows of the same batch that did not embed, committed in the same transaction.
            source: where it came from, for ``mmr info``; default the segment's path.

        Raises:
            CollectionError: the segment's dimension or dtype differs from the collection's.
        """
        done = self._query("SELECT segment FROM segment_commits WHERE sha256 = ?", (sealed.sha256,))
        if done:
            return SegmentCommit(int(done[0][0]), 0, 0, True)
        self._ensure_store(sealed.dim, sealed.dtype)
        number = self.segments.add_sealed(sealed)
        ids = sealed.ids()
        known = set(self._existing_ids(np.unique(ids)))
        rows = [(int(i), number, row) for row, i in enumerate(ids.tolist()) if i in known]
        hashes = {m.image_id: m.content_hash for m in metadata}
        with self.transaction() as db:
            generation = self._bump_generation()
            db.executemany("INSERT OR REPLACE INTO vector_rows(image_id, generation, segment, row) VALUES (?, ?, ?, ?)",
                           [(i, generation, n, row) for i, n, row in rows])
            labelled = db.execute("SELECT v.image_id FROM vector_rows v WHERE v.segment = ? AND "
                                  "(EXISTS (SELECT 1 FROM labels l WHERE l.image_id = v.image_id) OR "
                                  "EXISTS (SELECT 1 FROM label_scored s WHERE s.image_id = v.image_id))",
                                  (number,)).fetchall()
            drop_labels_of_new_content(db, [(image_id, hashes.get(image_id)) for image_id, in labelled])
            db.execute("UPDATE images SET status = 'ok', reason = NULL, message = NULL WHERE status != 'ok' AND id IN "
                       "(SELECT image_id FROM vector_rows WHERE segment = ?)", (number,))
            db.executemany(
                "UPDATE images SET content_hash = COALESCE(?, content_hash), width = COALESCE(?, width), "
                "height = COALESCE(?, height), format = COALESCE(?, format) WHERE id = ?",
                [(m.content_hash, m.width, m.height, m.format, m.image_id) for m in metadata])
            take_labels_of_moved_files(db, [(m.image_id, m.content_hash) for m in metadata if m.image_id in known])
            write_photos(db, [(m.image_id, m.photo) for m in metadata if m.photo is not None and m.image_id in known])
            write_mtime_photos(db, known, replace=False)  # rows committed without metadata: dated by mtime
            _write_failures(db, failures)
            db.execute("INSERT INTO segment_commits(sha256, source, segment, rows) VALUES (?, ?, ?, ?)",
                       (sealed.sha256, source or str(sealed.vec_path), number, len(rows)))
        return SegmentCommit(number, len(rows), len(ids) - len(rows), False)

    def _ensure_store(self, dim: int, dtype: str | None = None) -> None:
        """Before an append: the store of ``dim``-d vectors, made on the first one."""
        if not self.segments.exists:
            self.segments.create(dim, dtype or self.get_meta("vector_dtype") or "float16")
        elif self.segments.dim != dim:
            raise CollectionError(f"cannot store {dim}-d vectors in a collection of {self.segments.dim}-d vectors; "
                                  "use the collection's own model, or a new --collection")

    def _existing_ids(self, ids: npt.NDArray[np.int64]) -> list[int]:
        found: list[int] = []
        for chunk, marks in in_lists(ids):
            found += [r[0] for r in self._query(f"SELECT id FROM images WHERE id IN ({marks})", chunk)]
        return found

    # -- reading ----------------------------------------------------------------------------------------------
    def vectors(self, ids: Sequence[int] | None = None, since_generation: int | None = None, unit_length: bool = True
                ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """``(ids, (n, dim) float32)`` of stored vectors, by id: the given ids (unknown ones left out), those
        written after a generation, or (for small collections only: it materialises them) all.

        ``unit_length``: float16 rows scaled to length 1, which scores need (float16 leaves them 1 +- 4e-5 long);
        False gives them as stored."""
        if ids is None:
            blocks = list(self.iter_vectors(since_generation=since_generation, unit_length=unit_length))
            if not blocks:
                return np.zeros(0, np.int64), np.zeros((0, self._dim_or_zero()), np.float32)
            found = np.concatenate([b[0] for b in blocks])
            order = np.argsort(found, kind="stable")
            return found[order], np.concatenate([b[1] for b in blocks])[order]
        def places() -> list[tuple]:
            found: list[tuple] = []
            for chunk, marks in in_lists(ids):
                found += self._query(f"SELECT image_id, segment, row FROM vector_rows WHERE image_id IN ({marks})", chunk)
            return sorted(found)

        return self._gather_fresh(places, unit_length)

    def _gather_fresh(self, places: Callable[[], list[tuple]], unit_length: bool
                      ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """Gather the places ``places()`` returns; once more if a compaction deleted a segment in between."""
        try:
            return self._gather(places(), unit_length)
        except SEGMENT_GONE:
            self.segments.forget_maps()
            return self._gather(places(), unit_length)

    def iter_vectors(self, block_rows: int = _BLOCK, since_generation: int | None = None, unit_length: bool = True
                     ) -> Iterator[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]]:
        """Blocks of ``(ids, float32 vectors)`` in storage order, never more than ``block_rows`` at once
        (``unit_length`` as for :meth:`vectors`)."""
        after = (-1, -1)
        condition = "" if since_generation is None else f"AND generation > {int(since_generation)}"
        while True:
            places = self._query(f"SELECT image_id, segment, row FROM vector_rows WHERE (segment, row) > (?, ?) "
                                 f"{condition} ORDER BY segment, row LIMIT ?", (*after, block_rows))
            if not places:
                return
            yield self._gather(places, unit_length)  # writers stream under the lock: no compaction runs meanwhile
            after = (places[-1][1], places[-1][2])

    def _gather(self, places: list[tuple], unit_length: bool) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        if not places:
            return np.zeros(0, np.int64), np.zeros((0, self._dim_or_zero()), np.float32)
        table = np.array(places, dtype=np.int64)
        return table[:, 0].copy(), self.segments.gather(table[:, 1], table[:, 2], unit_length=unit_length)

    def _dim_or_zero(self) -> int:
        return self.segments.dim if self.segments.exists else 0

    def vector_ids(self, since_generation: int | None = None) -> npt.NDArray[np.int64]:
        """Sorted ids that have a vector (8 bytes each), or only those written after a generation."""
        if since_generation is None:
            sql, params = "SELECT image_id FROM vector_rows ORDER BY image_id", ()
        else:
            sql, params = "SELECT image_id FROM vector_rows WHERE generation > ? ORDER BY image_id", (since_generation,)
        with self._lock:  # streamed into the array: a list of 10 M row tuples would cost ~1 GB on the way
            return np.fromiter((row[0] for row in self._db.execute(sql, params)), dtype=np.int64)

    def removed_since(self, generation: int) -> npt.NDArray[np.int64] | None:
        """Ids whose vector was removed after ``generation`` (maybe a few more), or None when the removal log
        does not reach back that far (the caller then compares every id)."""
        logged_from = self.get_meta("removals_logged_from")
        if logged_from is None or generation < int(logged_from):
            return None
        rows = self._query("SELECT DISTINCT image_id FROM removed_vectors WHERE generation > ?", (generation,))
        return np.array([r[0] for r in rows], dtype=np.int64).reshape(-1)

    def vector_count(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM vector_rows")[0][0])

    def vectors_by_hash(self, hashes: Iterable[str]) -> dict[str, npt.NDArray[np.float32]]:
        """Stored vectors of already-embedded content, for reuse when the same bytes turn up at another path."""
        return self._vectors_by_hash_where("i.content_hash", list(set(hashes)))

    def vectors_of_rows(self, ids: Sequence[int]) -> dict[str, npt.NDArray[np.float32]]:
        """The stored vectors of the rows ``ids`` that have one, by the content hash they were embedded from."""
        return self._vectors_by_hash_where("i.id", ids)

    def _vectors_by_hash_where(self, column: str, values: Sequence) -> dict[str, npt.NDArray[np.float32]]:
        places: dict[str, tuple] = {}
        for chunk, marks in in_lists(values):
            for digest, *place in self._query(
                    "SELECT i.content_hash, v.image_id, v.segment, v.row FROM images i JOIN vector_rows v "
                    f"ON v.image_id = i.id WHERE {column} IN ({marks}) AND i.content_hash IS NOT NULL", chunk):
                places[digest] = tuple(place)
        _, vectors = self._gather(list(places.values()), unit_length=False)  # a copy stores the same bytes
        return dict(zip(places, vectors))

    def rows_per_segment(self) -> dict[int, int]:
        """Live (referenced) rows per segment number."""
        return dict(self._query("SELECT segment, COUNT(*) FROM vector_rows GROUP BY segment"))

    def places_in_segment(self, number: int, after_row: int, limit: int) -> list[tuple[int, int]]:
        """``(image_id, row)`` of live rows of one segment after ``after_row``, in row order, at most ``limit``."""
        return self._query("SELECT image_id, row FROM vector_rows WHERE segment = ? AND row > ? ORDER BY row LIMIT ?",
                           (number, after_row, limit))

    def segment_sources(self) -> list[tuple[str, int, int]]:
        """``(source, segment, rows)`` of every committed segment (imports, distributed ingests)."""
        return self._query("SELECT source, segment, rows FROM segment_commits ORDER BY segment")

    def ids_placed_from(self, number: int, row: int, through: int | None = None) -> list[int]:
        """Ids whose vector is in segment ``number`` at ``row`` or after (up to row ``through``, if given)."""
        last = 2**63 - 1 if through is None else through
        return [r[0] for r in self._query("SELECT image_id FROM vector_rows WHERE segment = ? AND row >= ? AND "
                                          "row <= ?", (number, row, last))]

    def segment_extents(self) -> dict[int, int]:
        """The rows each segment must hold for the catalog's places in it (its last place's row + 1), by segment
        number: two index seeks a segment, not a scan of every row."""
        extents: dict[int, int] = {}
        after = -1
        while True:
            ((number, last),) = self._query(
                "SELECT segment, MAX(row) FROM vector_rows WHERE segment = "
                "(SELECT MIN(segment) FROM vector_rows WHERE segment > ?)", (after,))
            if number is None:
                return extents
            extents[number], after = last + 1, number

    def forget_vectors(self, ids: Sequence[int]) -> None:
        """Drop the vectors of ``ids`` and set their images ``pending``, to be embedded again (their vectors were
        lost: :mod:`.repair`); labels and metadata stay."""
        with self.transaction() as db:
            for chunk, marks in in_lists(ids):
                db.execute(f"DELETE FROM vector_rows WHERE image_id IN ({marks})", chunk)
                db.execute(f"UPDATE images SET status = 'pending', reason = NULL, message = NULL WHERE id IN "
                           f"({marks})", chunk)
            self._bump_generation()

    def forget_dropped_labels(self) -> None:
        """Start a run's record of the labels that changed files left (:data:`DROPPED_TABLES`) afresh."""
        with self.transaction() as db:
            db.execute("DELETE FROM temp.dropped_labels")
            db.execute("DELETE FROM temp.dropped_scored")



def _write_failures(db: sqlite3.Connection, failures: Sequence[FailureWrite]) -> None:
    db.executemany("UPDATE images SET status = 'failed', reason = ?, message = ?, content_hash = NULL WHERE id = ?",
                   [(f.reason, bytes_escaped(f.message), f.image_id) for f in failures])
    db.executemany("DELETE FROM vector_rows WHERE image_id = ?", [(f.image_id,) for f in failures])
    db.executemany("DELETE FROM labels WHERE image_id = ?", [(f.image_id,) for f in failures])
    db.executemany("DELETE FROM photos WHERE image_id = ?", [(f.image_id,) for f in failures])
