"""Landing checked import shards in a collection: one catalog transaction per shard, with its provenance.

:mod:`.imports` reads and checks shards; this module writes them. A shard's vectors are appended (and fsynced) to
the collection's active segment first; its rows, their places in the segments, the shard record and the per-row
provenance then commit in one transaction, together or not at all (appended bytes of a shard that never
committed are unreferenced waste, which compaction reclaims), so a process killed at any moment leaves each shard
whole or absent, and a re-run (which skips recorded shards and known paths) neither loses nor duplicates rows.
The caller holds the collection's writer lock (``Collection.writing``), so an import and an ingest never
interleave.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np
import numpy.typing as npt

from .catalog import Catalog

if TYPE_CHECKING:
    from .collection import Collection
    from .imports import CheckedShard

logger = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS import_shards (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    source TEXT NOT NULL,               -- absolute path of the imported folder
    shard TEXT NOT NULL,                -- e.g. img_emb_3
    fingerprint TEXT NOT NULL,          -- sizes and mtimes of the shard's two files
    rows_added INTEGER NOT NULL,        -- rows this shard added
    rows_known INTEGER NOT NULL,        -- rows skipped because the collection already had the path
    renormalised INTEGER NOT NULL,      -- vectors that were not unit length
    UNIQUE (source, shard, fingerprint)
);
CREATE TABLE IF NOT EXISTS imported_rows (
    image_id INTEGER PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE,
    shard_id INTEGER NOT NULL REFERENCES import_shards(id)
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
    return bool(catalog._query("SELECT 1 FROM import_shards WHERE source = ? AND shard = ? AND fingerprint = ?",
                               (source, shard, fingerprint)))


def land_shard(collection: "Collection", shard: "CheckedShard", source: str, fingerprint: str) -> tuple[int, int]:
    """Add a checked shard's new rows, vectors and provenance in one transaction; returns (added, known).

    New rows are those with ids above the ``AUTOINCREMENT`` sequence as it was when the transaction began (ids
    are never reused; an ignored insert may use one up, so they need not be consecutive). Rows go in as one
    JSON parameter that SQLite unpacks itself (``json_each``): binding a shard row by row from Python costs
    three times as much as SQLite's own work of inserting them.
    """
    catalog = collection.catalog
    catalog._ensure_store(collection.identity.embed_dim)  # the first vectors of a new collection make its store
    with catalog.transaction() as db:
        last = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'images'").fetchone()
        base = int(last[0]) if last else 0
        # OR IGNORE: a path the collection knows (or a repeat inside the shard) keeps its first row
        _insert_rows(db, shard.keys, shard.captions)
        ids = _new_ids(db, base)
        positions = _positions_of_new(db, shard.keys, base, len(ids))
        generation = catalog._bump_generation()
        for rows, block in _unit_blocks(shard.vectors, positions, shard.renormalised > 0):
            # bytes first (fsynced), places in this same transaction: a kill before COMMIT leaves only waste
            number, first = catalog.segments.append(ids[rows], block)
            _insert_places(db, ids[rows], generation, number, first)
        known = len(shard.keys) - len(ids)
        shard_id = db.execute(
            "INSERT INTO import_shards(source, shard, fingerprint, rows_added, rows_known, renormalised) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (source, shard.name, fingerprint, len(ids), known, shard.renormalised)).lastrowid
        db.execute("INSERT INTO imported_rows(image_id, shard_id) SELECT id, ? FROM images WHERE id > ?",
                   (shard_id, base))
    logger.info("imported %s: %d rows added, %d already known", shard.file, len(ids), known)
    return len(ids), known


def _insert_rows(db: sqlite3.Connection, keys: Sequence[bytes], captions: Sequence[str | None]) -> None:
    """``INSERT OR IGNORE`` the rows in key order: as one JSON array when every key is UTF-8 (as good as
    always), else one by one (JSON cannot carry other bytes)."""
    try:
        texts = [key.decode("utf-8") for key in keys]
    except UnicodeDecodeError:
        db.executemany("INSERT OR IGNORE INTO images(path, size, mtime_ns, status, caption) VALUES (?, 0, 0, 'ok', ?)",
                       zip(keys, captions))
        return
    if not any(caption is not None for caption in captions):
        db.execute("INSERT OR IGNORE INTO images(path, size, mtime_ns, status) "
                   "SELECT CAST(value AS BLOB), 0, 0, 'ok' FROM json_each(?) ORDER BY key", (json.dumps(texts),))
        return
    db.execute("INSERT OR IGNORE INTO images(path, size, mtime_ns, status, caption) "
               "SELECT CAST(json_extract(value, '$[0]') AS BLOB), 0, 0, 'ok', json_extract(value, '$[1]') "
               "FROM json_each(?) ORDER BY key", (json.dumps(list(zip(texts, captions))),))


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


def _positions_of_new(db: sqlite3.Connection, keys: Sequence[bytes], base: int, added: int) -> npt.NDArray[np.int64]:
    """Shard positions of the rows just added, in id order (ids follow insertion order, which is key order)."""
    if added == len(keys):  # nothing was known: every row is new (the common case, and the fast one)
        return np.arange(added, dtype=np.int64)
    first_of = {key: pos for pos, key in reversed(list(enumerate(keys)))}
    rows = db.execute("SELECT path FROM images WHERE id > ? ORDER BY id", (base,))
    return np.fromiter((first_of[path] for path, in rows), dtype=np.int64, count=added)


def _unit_blocks(vectors, positions, renormalise):  # noqa: ANN001, ANN202
    from .imports import unit_blocks

    return unit_blocks(vectors, positions, renormalise)


def provenance(catalog: Catalog) -> list[ImportSource]:
    """Imported rows still in the collection, per source folder (empty if nothing was ever imported)."""
    # reads only (catalog._query): `mmr info` on a read-only collection must not need a write transaction
    if not catalog._query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'import_shards'"):
        return []
    rows = catalog._query(
        "SELECT s.source, COUNT(*), SUM(s.renormalised), GROUP_CONCAT(s.shard), "
        "(SELECT COUNT(*) FROM imported_rows r JOIN import_shards t ON t.id = r.shard_id "
        " WHERE t.source = s.source) "
        "FROM import_shards s GROUP BY s.source ORDER BY s.source")
    return [ImportSource(source, shards, kept, renormalised or 0, tuple(sorted((names or "").split(","))))
            for source, shards, renormalised, names, kept in rows]
