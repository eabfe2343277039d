"""Landing checked import shards in a collection: one catalog transaction per shard, with its provenance.

:mod:`.imports` reads and checks shards; this module writes them. A shard's vectors are appended (and fsynced) to
the collection's active segment before its transaction commits; its rows, their places in the segments and the
shard record (with the range of ids it added: the provenance) commit in that one transaction, together or not at
all (appended bytes of a shard that never committed are unreferenced waste, which compaction reclaims), so a
process killed at any moment leaves each shard whole or absent, and a re-run (which skips recorded shards and
known paths) neither loses nor duplicates rows. A path the collection holds only as a row without a vector (failed,
pending or skipped) is not known: the imported row replaces it.
The caller holds the collection's writer lock (``Collection.writing``), so an import and an ingest never
interleave.
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np
import numpy.typing as npt

from ..errors import CollectionError
from ..json_lines import bytes_escaped
from ..wording import counted
from .catalog import Catalog
from .import_vectors import checked_blocks, unit_blocks

if TYPE_CHECKING:
    from .collection import Collection
    from .import_sources import CheckedShard
    from .segments import SegmentStore

logger = logging.getLogger(__name__)

_LOOKUP_ROWS = 500  # paths looked up in one query (SQLite's limit on parameters is 32,766)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS import_shards (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,               -- absolute path of the imported folder
    shard TEXT NOT NULL,                -- e.g. img_emb_3
    fingerprint TEXT NOT NULL,          -- sizes and mtimes of the shard's two files
    rows_added INTEGER NOT NULL,        -- rows this shard added
    rows_known INTEGER NOT NULL,        -- rows skipped because the collection already had the path
    renormalised INTEGER NOT NULL,      -- vectors that were not unit length
    first_id INTEGER,                   -- the rows it added are the images with ids first_id..last_id
    last_id INTEGER,                    -- (one transaction inserted them all), NULL when it added none
    UNIQUE (source, shard, fingerprint)
)
"""


@dataclass(frozen=True)
class ImportSource:
    """Provenance of imported rows, per source folder, for ``mmr info``."""

    source: str  # the imported folder
    shards: int  # shards imported from it
    rows: int  # rows imported from it that are still in the collection
    renormalised: int = 0  # of those imported, vectors that were not unit length
    shard_names: tuple[str, ...] = field(default=(), repr=False)


def ensure_schema(catalog: Catalog) -> None:
    """Create the provenance tables if this catalog has none yet (idempotent)."""
    with catalog.transaction() as db:
        for statement in _SCHEMA.split(";"):
            db.execute(statement)


def shard_seen(catalog: Catalog, source: str, shard: str, fingerprint: str) -> bool:
    """Whether this exact shard (same files, same sizes and mtimes) was imported before."""
    return bool(catalog.select("SELECT 1 FROM import_shards WHERE source = ? AND shard = ? AND fingerprint = ?",
                               (bytes_escaped(source), bytes_escaped(shard), fingerprint)))


class ShardLanding:
    """Lands checked shards one after another: each shard's new rows, vectors and provenance in one transaction.

    Three threads share a shard's work. The caller's inserts the rows: as one JSON parameter that SQLite unpacks
    itself (``json_each``; binding a shard row by row from Python costs three times as much as SQLite's own
    work of inserting them), without foreign-key checks (every place points at a row inserted just before it),
    then each written block's places. One checks the vectors block by block (:func:`~.import_vectors.checked_blocks`),
    and one appends them (fsynced once, before the commit) under the ids the rows will get if every path is
    new: ids follow the ``AUTOINCREMENT`` sequence, and are never reused. A bad vector raises, and the
    transaction rolls back. If some path turns out to be known (or repeated in the shard), the appended blocks
    are left as waste (compaction reclaims them) and the new rows' vectors are appended again under their real
    ids; a shard whose first or last path the collection already has (a re-import) skips the guess and only
    checks on the other thread.

    The vector work does not wait between shards: once a shard's rows are in (so the ids the next one's rows
    will get are known) and its guess proved right, the next shard's vectors are queued on the append thread,
    behind this shard's, while this one records its last places and commits. If this shard then fails, the
    next one's appends stop and are waste, as after a crash.

    Use it as a context manager (the threads stop when it ends); the caller holds the collection's writer lock.
    """

    def __init__(self, collection: "Collection"):
        self._catalog = collection.catalog
        self._catalog._ensure_store(collection.identity.embed_dim)  # a new collection's first vectors make its store
        self._appender = ThreadPoolExecutor(1, thread_name_prefix="mmr-import-append")
        self._current: _VectorWork | None = None  # the landing shard's
        self._queued: _VectorWork | None = None  # the next shard's, queued while the one before it commits

    def __enter__(self) -> "ShardLanding":
        return self

    def __exit__(self, *exc_info: object) -> None:
        for work in (self._current, self._queued):  # set only when a land() failed: what they write is waste
            if work is not None:
                work.stop.set()
        self._appender.shutdown()

    def land(self, shard: "CheckedShard", source: str, fingerprint: str,
             upcoming: Callable[[], "CheckedShard | None"] = lambda: None,
             written: Callable[[int], None] = lambda rows: None) -> tuple[int, int, int]:
        """Land ``shard``; returns (added, known, renormalised). ``upcoming`` gives the shard that will be landed
        next, if it is ready (None otherwise), so that its vectors can start while this one commits;
        ``written(rows)`` says how many of its rows are written so far (not yet committed), a block at a time.

        Raises:
            CollectionError: a NaN, infinite or zero vector (nothing of the shard lands).
        """
        catalog = self._catalog
        with catalog.bulk_transaction() as db:
            last = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'images'").fetchone()
            base = int(last[0]) if last else 0
            work = self._current = self._work_for(db, shard, base)
            # OR IGNORE: a path the collection knows (or a repeat inside the shard) keeps its first row
            _insert_rows(db, shard)
            ids = _new_ids(db, base)
            if 0 < len(ids) == len(shard.keys) and not _in_shard_order(db, shard.keys, ids):
                raise CollectionError(f"{shard.file}: SQLite inserted its rows out of order; nothing of this shard "
                                      "was imported (please report this, with your SQLite version)")
            retaken = len(ids) < len(shard.keys) and _retake_unembedded(db, shard)
            if retaken:  # those rows now follow the shard's new ones: out of key order, so no id was guessed right
                ids = _new_ids(db, base)
            generation = catalog._bump_generation()
            guessed_right = not retaken and work.ids is not None and np.array_equal(ids, work.ids)
            following = upcoming() if guessed_right else None
            if following is not None:
                next_base = int(ids[-1]) if len(ids) else base
                self._queued = self._queue(following, next_base, _any_known(db, following.keys))
            while (place := work.written.get()) is not None:  # places of written blocks, while later ones are written
                if guessed_right:
                    _insert_places(db, ids[place[0]], generation, place[1], place[2])
                    written(place[0].stop)
            appended, renormalised = work.done.result()  # every vector checked and fsynced (or the error raised)
            if not appended or not guessed_right:  # nothing was queued behind it: this thread may append
                positions = _positions_of_new(db, shard.keys, base, len(ids), in_key_order=not retaken)

                def placed(rows: slice, number: int, first: int) -> None:  # as each block is written
                    _insert_places(db, ids[rows], generation, number, first)
                    written(len(shard.keys) - len(ids) + rows.stop)  # (the known rows count as done)

                renormalised = _append(catalog.segments, ids, shard.vectors, positions, renormalised > 0, placed)
            known = len(shard.keys) - len(ids)  # (renormalised counts only added rows: known ones were not stored)
            _record_shard(db, source, shard.name, fingerprint, ids, known, renormalised)
        self._current = None
        if renormalised:
            logger.warning("%s: %d of the %s it added were not unit length; they were renormalised", shard.file,
                           renormalised, counted(len(ids), "vector"))
        logger.info("imported %s: %d rows added, %d already known", shard.file, len(ids), known)
        return len(ids), known, renormalised

    def _work_for(self, db: sqlite3.Connection, shard: "CheckedShard", base: int) -> "_VectorWork":
        """The vector work queued for ``shard`` while the shard before it committed, if it was queued under
        the right ids; else (the first shard, or one whose check was not ready) queued now."""
        work, self._queued = self._queued, None
        if work is not None and work.shard is shard and work.base == base:
            return work
        if work is not None:
            work.stop.set()
        return self._queue(shard, base, _any_known(db, shard.keys))

    def _queue(self, shard: "CheckedShard", base: int, any_known: bool) -> "_VectorWork":
        """Queue the check of ``shard``'s vectors and, unless a path is known, their append under the ids after
        ``base``."""
        guessed = None if any_known else np.arange(base + 1, base + 1 + len(shard.keys), dtype=np.int64)
        written: queue.SimpleQueue[tuple[slice, int, int] | None] = queue.SimpleQueue()
        stop = threading.Event()
        done = self._appender.submit(_check_and_append, self._catalog.segments, shard, guessed, written.put, stop)
        return _VectorWork(shard, base, guessed, written, stop, done)


@dataclass(frozen=True)
class _VectorWork:
    """One shard's vectors on the append thread: checked, and appended under ``ids`` unless that is None."""

    shard: "CheckedShard"
    base: int  # the ids were guessed as base + 1, base + 2, ...
    ids: npt.NDArray[np.int64] | None
    written: "queue.SimpleQueue[tuple[slice, int, int] | None]"  # each written block's place, then None
    stop: threading.Event  # set: stop appending (the shard will not land)
    done: "Future[tuple[bool, int]]"  # (appended, renormalised)


def _record_shard(db: sqlite3.Connection, source: str, name: str, fingerprint: str, ids: npt.NDArray[np.int64],
                  known: int, renormalised: int) -> None:
    """The shard's provenance: what it added (the ids, one range: one transaction inserted them) and skipped."""
    db.execute("INSERT INTO import_shards(source, shard, fingerprint, rows_added, rows_known, renormalised, "
               "first_id, last_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
               (bytes_escaped(source), bytes_escaped(name), fingerprint, len(ids), known, renormalised,
                int(ids[0]) if len(ids) else None, int(ids[-1]) if len(ids) else None))


def _any_known(db: sqlite3.Connection, keys: Sequence[bytes]) -> bool:
    """Whether the collection has the shard's first or last path (two lookups; catches re-imports)."""
    ends = list({keys[0], keys[-1]}) if keys else []
    return bool(ends) and db.execute(f"SELECT 1 FROM images WHERE path IN ({', '.join('?' * len(ends))}) LIMIT 1",
                                     ends).fetchone() is not None


def _check_and_append(segments: "SegmentStore", shard: "CheckedShard", ids: npt.NDArray[np.int64] | None,
                      written: Callable[[tuple[slice, int, int] | None], None], stop: threading.Event
                      ) -> tuple[bool, int]:
    """Check every vector of ``shard`` (on a thread of its own, a few blocks ahead) and, given ``ids``, append
    them, fsynced once at the end; returns whether they were appended and how many were renormalised.

    Each block's ``(rows, segment, first row)`` goes to ``written`` once it is written, then ``None`` at the
    end, whatever happens (so the caller can record places while later blocks are written). Once ``stop`` is
    set, it stops within a few blocks (those already checked ahead are still written: waste).
    """
    renormalised = 0

    def blocks() -> Iterator[tuple[npt.NDArray[np.int64], np.ndarray]]:
        nonlocal renormalised
        for rows, block, off_unit in checked_blocks(shard.file, shard.vectors):
            if stop.is_set():
                raise CollectionError(f"{shard.file}: stopped, as its shard will not land")
            renormalised += off_unit
            if ids is not None:
                rows_of.append(rows)
                yield ids[rows], block

    rows_of: list[slice] = []  # filled by blocks() before it yields each block, so always ahead of the writes
    in_order = iter(rows_of)
    checked = _ahead(blocks())
    try:
        segments.append_blocks(checked, lambda number, first: written((next(in_order), number, first)))
    finally:
        checked.close()  # stops the checking thread now, even if append_blocks failed midway
        written(None)
    return ids is not None, renormalised


def _ahead(items: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """``items``, produced on a thread of their own up to ``depth`` ahead of the consumer (numpy and file
    writes release the GIL, so checking and writing overlap); the producer's exception is raised here, and a
    consumer that stops early stops the producer."""
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def offer(item: Any, error: BaseException | None = None) -> bool:
        while not stop.is_set():
            try:
                ready.put((item, error), timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer(item):
                    return
            offer(end)
        except BaseException as exc:  # handed to the consumer, which raises it
            offer(end, exc)

    producer = threading.Thread(target=produce, name="mmr-import-check-vectors", daemon=True)
    producer.start()
    try:
        while True:
            item, error = ready.get()
            if error is not None:
                raise error
            if item is end:
                return
            yield item
    finally:
        stop.set()
        producer.join()


def _append(segments: "SegmentStore", ids: npt.NDArray[np.int64], vectors: Any, positions: npt.NDArray[np.int64],
            renormalise: bool, placed: Callable[[slice, int, int], None]) -> int:
    """Append checked ``vectors[positions]`` under ``ids`` (fsynced), a block at a time, handing ``placed`` each
    block's ``(slice of ids, segment, first row)`` as it is written; returns how many of those vectors were
    renormalised. Bytes first: a kill before the catalog commits leaves only waste."""
    rows_of: list[slice] = []  # filled by blocks() before it yields each block, so always ahead of the writes
    renormalised = 0

    def blocks() -> Iterator[tuple[npt.NDArray[np.int64], np.ndarray]]:
        nonlocal renormalised
        for rows, block, off_unit in unit_blocks(vectors, positions, renormalise):
            rows_of.append(rows)
            renormalised += off_unit
            yield ids[rows], block

    in_order = iter(rows_of)
    segments.append_blocks(blocks(), lambda number, first: placed(next(in_order), number, first))
    return renormalised


def _insert_rows(db: sqlite3.Connection, shard: "CheckedShard") -> None:
    """``INSERT OR IGNORE`` the rows in key order: from the shard's JSON array (json_each walks it in order:
    an ``ORDER BY key`` would sort half a million rows for nothing), else one by one (a key that is not UTF-8)."""
    if shard.rows_json is None:
        db.executemany("INSERT OR IGNORE INTO images(path, size, mtime_ns, status, caption) VALUES (?, 0, 0, 'ok', ?)",
                       zip(shard.keys, shard.captions))
    elif not any(caption is not None for caption in shard.captions):
        db.execute("INSERT OR IGNORE INTO images(path, size, mtime_ns, status) "
                   "SELECT CAST(value AS BLOB), 0, 0, 'ok' FROM json_each(?)", (shard.rows_json,))
    else:
        db.execute("INSERT OR IGNORE INTO images(path, size, mtime_ns, status, caption) "
                   "SELECT CAST(json_extract(value, '$[0]') AS BLOB), 0, 0, 'ok', json_extract(value, '$[1]') "
                   "FROM json_each(?)", (shard.rows_json,))


def _retake_unembedded(db: sqlite3.Connection, shard: "CheckedShard") -> bool:
    """Replace the shard's paths that the collection holds only as rows without a vector (``failed``: an ingest
    could not decode the file; ``pending``: it stopped before embedding it, or repair forgot a lost vector;
    ``skipped``: a listed file not on this machine) by the shard's rows; returns whether there were any.
    Otherwise ``INSERT OR IGNORE`` would count them as known and drop their vectors. Their labels, records of
    having been scored and photo data go with them (this transaction runs with foreign keys off): an imported row
    has no content hash, and labels follow content."""
    # the usual case, no such row at all, costs one seek (`status != 'ok'` lets SQLite use the partial index)
    if db.execute("SELECT 1 FROM images WHERE status != 'ok' AND status IN ('failed', 'pending', 'skipped') "
                  "LIMIT 1").fetchone() is None:
        return False
    unembedded: list[int] = []
    for start in range(0, len(shard.keys), _LOOKUP_ROWS):
        keys = shard.keys[start:start + _LOOKUP_ROWS]
        unembedded += (image_id for image_id, in db.execute(
            f"SELECT id FROM images WHERE path IN ({', '.join('?' * len(keys))}) "
            "AND status IN ('failed', 'pending', 'skipped') "
            "AND NOT EXISTS (SELECT 1 FROM vector_rows WHERE image_id = images.id)", keys))
    if not unembedded:
        return False
    listed = json.dumps(unembedded)
    for table in ("labels", "label_scored", "photos", "images"):
        column = "id" if table == "images" else "image_id"
        db.execute(f"DELETE FROM {table} WHERE {column} IN (SELECT value FROM json_each(?))", (listed,))
    _insert_rows(db, shard)
    return True


def _in_shard_order(db: sqlite3.Connection, keys: Sequence[bytes], ids: npt.NDArray[np.int64]) -> bool:
    """Whether ``ids`` (one per key) went to the keys in order: checked at the first, middle and last row, since
    the vectors are appended under ids guessed from that order."""
    picks = sorted({0, len(ids) // 2, len(ids) - 1})
    found = dict(db.execute(f"SELECT id, path FROM images WHERE id IN ({', '.join('?' * len(picks))})",
                            [int(ids[pick]) for pick in picks]))
    return all(found.get(int(ids[pick])) == keys[pick] for pick in picks)


def _new_ids(db: sqlite3.Connection, base: int) -> npt.NDArray[np.int64]:
    """Ids above ``base``, in order: counted, not fetched, when they are consecutive (as good as always)."""
    count, last = db.execute("SELECT COUNT(*), MAX(id) FROM images WHERE id > ?", (base,)).fetchone()
    if count and last - base == count:
        return np.arange(base + 1, last + 1, dtype=np.int64)
    rows = db.execute("SELECT id FROM images WHERE id > ? ORDER BY id", (base,)).fetchall()
    return np.array(rows, dtype=np.int64).reshape(-1)


def _insert_places(db: sqlite3.Connection, ids: npt.NDArray[np.int64], generation: int, segment: int,
                   first: int) -> None:
    """Record that ``ids`` are rows ``first, first + 1, ...`` of ``segment``: by id range when the ids are
    consecutive (no parameter per row at all), else as one JSON array."""
    if len(ids) and ids[-1] - ids[0] + 1 == len(ids):
        db.execute("INSERT INTO vector_rows(image_id, generation, segment, row) "
                   "SELECT id, ?, ?, ? + id - ? FROM images WHERE id BETWEEN ? AND ? ORDER BY id",
                   (generation, segment, first, int(ids[0]), int(ids[0]), int(ids[-1])))
        return
    db.execute("INSERT INTO vector_rows(image_id, generation, segment, row) SELECT value, ?, ?, ? + key "
               "FROM json_each(?)", (generation, segment, first, json.dumps(ids.tolist())))


def _positions_of_new(db: sqlite3.Connection, keys: Sequence[bytes], base: int, added: int,
                      in_key_order: bool = True) -> npt.NDArray[np.int64]:
    """Shard positions of the rows just added, in id order (ids follow insertion order: key order, unless
    ``in_key_order`` is False because some rows were inserted again after the rest)."""
    if added == len(keys) and in_key_order:  # nothing was known: every row is new (the common case, the fast one)
        return np.arange(added, dtype=np.int64)
    first_of = {key: pos for pos, key in reversed(list(enumerate(keys)))}
    rows = db.execute("SELECT path FROM images WHERE id > ? ORDER BY id", (base,))
    return np.fromiter((first_of[path] for path, in rows), dtype=np.int64, count=added)


def provenance(catalog: Catalog) -> list[ImportSource]:
    """Imported rows still in the collection, per source folder (empty if nothing was ever imported)."""
    # reads only (catalog._query): `mmr info` on a read-only collection must not need a write transaction
    if not catalog.select("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'import_shards'"):
        return []
    rows = catalog.select(
        "SELECT s.source, COUNT(*), SUM(s.renormalised), GROUP_CONCAT(s.shard), "
        "SUM((SELECT COUNT(*) FROM images WHERE id BETWEEN s.first_id AND s.last_id)) "
        "FROM import_shards s GROUP BY s.source ORDER BY s.source")
    return [ImportSource(source, shards, kept, renormalised or 0, tuple(sorted((names or "").split(","))))
            for source, shards, renormalised, names, kept in rows]
