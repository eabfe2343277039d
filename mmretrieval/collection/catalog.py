"""The SQLite catalog: the source of truth of a collection.

One row per file (path, size, mtime, content hash, size in pixels, status, failure reason, caption), the
vector of every image that embedded, zero-shot labels, and the identity of the model that made the vectors.
Paths are stored as the file system's bytes (``os.fsencode``) so that non-UTF-8 names round-trip exactly.

Ids are ``AUTOINCREMENT``: a pruned row's id is never reused, so an id always means one file. Every write is
one transaction (WAL, ``synchronous=FULL``), and every write that adds or removes vectors bumps the catalog
*generation*; the FAISS index records the generation it reflects and catches up from there.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import numpy.typing as npt

from ..errors import CollectionError
from ..images.metadata import PhotoMetadata
from .photo_table import read_photos, setup_photo_table, write_photos

logger = logging.getLogger(__name__)

SCHEMA_VERSION = "1"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path BLOB NOT NULL UNIQUE,          -- os.fsencode(absolute path)
    size INTEGER NOT NULL,              -- bytes, as stat() saw it when planned
    mtime_ns INTEGER NOT NULL,
    status TEXT NOT NULL,               -- pending | ok | failed | skipped
    content_hash TEXT,                  -- blake2b of the bytes, for ok rows
    width INTEGER, height INTEGER, format TEXT,
    reason TEXT, message TEXT,          -- why a row failed or was skipped
    caption TEXT
);
CREATE INDEX IF NOT EXISTS images_hash ON images(content_hash);
CREATE INDEX IF NOT EXISTS images_status ON images(status);
CREATE TABLE IF NOT EXISTS vectors (
    image_id INTEGER PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE,
    generation INTEGER NOT NULL,        -- catalog generation that wrote it
    embedding BLOB NOT NULL             -- float32 little-endian, unit length
);
CREATE INDEX IF NOT EXISTS vectors_generation ON vectors(generation);
CREATE TABLE IF NOT EXISTS labels (
    image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    label TEXT NOT NULL,
    probability REAL NOT NULL,
    PRIMARY KEY (image_id, label)
);
CREATE INDEX IF NOT EXISTS labels_label ON labels(label);
"""


@dataclass(frozen=True)
class FileState:
    """What the catalog knows about a path, enough to decide whether to re-embed it."""

    id: int
    size: int
    mtime_ns: int
    status: str
    reason: str | None = None  # why it failed or was skipped


@dataclass(frozen=True)
class ImageRow:
    """One catalog row as the search and UI layers see it."""

    id: int
    path: str  # os.fsdecode of the stored bytes: opens the same file, whatever its encoding
    status: str
    width: int | None
    height: int | None
    caption: str | None
    reason: str | None
    message: str | None


@dataclass(frozen=True)
class VectorWrite:
    """A vector to store for one row (``embedding`` may be shared by several rows with the same bytes)."""

    image_id: int
    content_hash: str
    width: int
    height: int
    format: str
    embedding: npt.NDArray[np.float32]
    metadata: PhotoMetadata | None = None  # capture time, camera, GPS (None: not extracted, dated by mtime)


@dataclass(frozen=True)
class FailureWrite:
    """A row that did not embed, and why."""

    image_id: int
    reason: str
    message: str


def encode_path(path: str | os.PathLike) -> bytes:
    """The catalog key of a path: its absolute form as file-system bytes."""
    return os.fsencode(os.path.abspath(path))


class Catalog:
    """A connection to one collection's SQLite catalog. Thread-safe (one lock around the connection)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
            setup_photo_table(self._db)
        except sqlite3.DatabaseError as exc:
            raise CollectionError(f"{self.path} is not a readable catalog ({exc}); move it away and re-ingest") from exc
        self._lock = threading.RLock()
        if self.get_meta("schema") is None:
            with self.transaction():
                self.set_meta("schema", SCHEMA_VERSION)
                self.set_meta("generation", "0")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` ... ``COMMIT``; rolled back on any exception."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, params: Sequence = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    # -- meta -------------------------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        """Set a meta value (inside the caller's transaction if there is one)."""
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    @property
    def generation(self) -> int:
        return int(self.get_meta("generation") or 0)

    def _bump_generation(self) -> int:
        generation = self.generation + 1
        self.set_meta("generation", str(generation))
        return generation

    # -- planning ---------------------------------------------------------------------------------------------
    def file_states(self) -> dict[bytes, FileState]:
        """Every known path and its (id, size, mtime, status, reason)."""
        rows = self._query("SELECT path, id, size, mtime_ns, status, reason FROM images")
        return {row[0]: FileState(*row[1:]) for row in rows}

    def mark_pending(self, entries: Iterable[tuple[bytes, int, int, str | None]]) -> None:
        """Insert or reset rows to ``pending`` for ``(path, size, mtime_ns, caption)``; one transaction."""
        with self.transaction() as db:
            db.executemany(
                "INSERT INTO images(path, size, mtime_ns, status, caption) VALUES (?, ?, ?, 'pending', ?) "
                "ON CONFLICT(path) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns, "
                "status = 'pending', reason = NULL, message = NULL, "
                "caption = COALESCE(excluded.caption, images.caption)",
                entries,
            )
            # a changed file's labels described its old pixels; they come back with the next `mmr label`
            db.execute("DELETE FROM labels WHERE image_id IN (SELECT id FROM images WHERE status = 'pending')")

    def mark_skipped(self, entries: Sequence[tuple[bytes, str, str]]) -> None:
        """Record ``(path, reason, message)`` for things that were never opened (FIFOs, link loops)."""
        with self.transaction() as db:
            db.executemany(
                "INSERT INTO images(path, size, mtime_ns, status, reason, message) VALUES (?, 0, 0, 'skipped', ?, ?) "
                "ON CONFLICT(path) DO UPDATE SET status = 'skipped', reason = excluded.reason, "
                "message = excluded.message, content_hash = NULL",
                entries,
            )
            dropped = db.execute(
                "DELETE FROM vectors WHERE image_id IN (SELECT id FROM images WHERE status = 'skipped')").rowcount
            db.execute("DELETE FROM labels WHERE image_id IN (SELECT id FROM images WHERE status = 'skipped')")
            if dropped:
                self._bump_generation()

    def pending(self) -> list[tuple[int, str]]:
        """``(id, path)`` of every row still to embed, oldest first (including rows a killed run left)."""
        rows = self._query("SELECT id, path FROM images WHERE status = 'pending' ORDER BY id")
        return [(id_, os.fsdecode(path)) for id_, path in rows]

    def set_caption(self, path: bytes, caption: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE images SET caption = ? WHERE path = ?", (caption, path))

    # -- writing results --------------------------------------------------------------------------------------
    def write_results(self, vectors: Sequence[VectorWrite], failures: Sequence[FailureWrite]) -> int:
        """Store one batch of results in one transaction; returns the new generation."""
        with self.transaction() as db:
            generation = self._bump_generation()
            db.executemany(
                "UPDATE images SET status = 'ok', content_hash = ?, width = ?, height = ?, format = ?, "
                "reason = NULL, message = NULL WHERE id = ?",
                [(v.content_hash, v.width, v.height, v.format, v.image_id) for v in vectors],
            )
            db.executemany(
                "INSERT OR REPLACE INTO vectors(image_id, generation, embedding) VALUES (?, ?, ?)",
                [(v.image_id, generation, _to_blob(v.embedding)) for v in vectors],
            )
            write_photos(db, [(v.image_id, v.metadata) for v in vectors if v.metadata is not None])
            db.executemany("DELETE FROM photos WHERE image_id = ?",  # the file changed: its old metadata is stale
                           [(v.image_id,) for v in vectors if v.metadata is None])
            db.executemany(
                "UPDATE images SET status = 'failed', reason = ?, message = ?, content_hash = NULL WHERE id = ?",
                [(f.reason, f.message, f.image_id) for f in failures],
            )
            db.executemany("DELETE FROM vectors WHERE image_id = ?", [(f.image_id,) for f in failures])
            db.executemany("DELETE FROM labels WHERE image_id = ?", [(f.image_id,) for f in failures])
            db.executemany("DELETE FROM photos WHERE image_id = ?", [(f.image_id,) for f in failures])
        return generation

    def prune_missing(self) -> int:
        """Delete rows whose file no longer exists; returns how many went."""
        gone = [(path,) for path, in self._query("SELECT path FROM images") if not os.path.lexists(path)]
        if gone:
            with self.transaction() as db:
                db.executemany("DELETE FROM images WHERE path = ?", gone)
                self._bump_generation()
        return len(gone)

    # -- vectors ----------------------------------------------------------------------------------------------
    def vectors_by_hash(self, hashes: Iterable[str]) -> dict[str, npt.NDArray[np.float32]]:
        """Stored vectors of already-embedded content, for reuse when the same bytes turn up at another path."""
        wanted = list(set(hashes))
        found: dict[str, npt.NDArray[np.float32]] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            rows = self._query(
                "SELECT i.content_hash, v.embedding FROM images i JOIN vectors v ON v.image_id = i.id "
                f"WHERE i.content_hash IN ({','.join('?' * len(chunk))})", chunk)
            found.update((digest, _from_blob(blob)) for digest, blob in rows)
        return found

    def vectors(self, ids: Sequence[int] | None = None, since_generation: int | None = None
                ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        """``(ids, (n, dim) float32)`` of stored vectors: all, the given ids, or those written after a generation."""
        if ids is not None:
            rows = []
            for start in range(0, len(ids), 500):
                chunk = [int(i) for i in ids[start:start + 500]]
                rows += self._query(
                    f"SELECT image_id, embedding FROM vectors WHERE image_id IN ({','.join('?' * len(chunk))})", chunk)
            rows.sort()
        elif since_generation is not None:
            rows = self._query("SELECT image_id, embedding FROM vectors WHERE generation > ? ORDER BY image_id",
                               (since_generation,))
        else:
            rows = self._query("SELECT image_id, embedding FROM vectors ORDER BY image_id")
        return _stack(rows)

    def vector_ids(self) -> npt.NDArray[np.int64]:
        return np.array([r[0] for r in self._query("SELECT image_id FROM vectors")], dtype=np.int64)

    # -- reading rows -----------------------------------------------------------------------------------------
    def rows(self, ids: Sequence[int]) -> dict[int, ImageRow]:
        """Rows by id; unknown ids are simply absent."""
        found: dict[int, ImageRow] = {}
        for start in range(0, len(ids), 500):
            chunk = [int(i) for i in ids[start:start + 500]]
            for row in self._query(
                "SELECT id, path, status, width, height, caption, reason, message FROM images "
                f"WHERE id IN ({','.join('?' * len(chunk))})", chunk):
                found[row[0]] = ImageRow(row[0], os.fsdecode(row[1]), *row[2:])
        return found

    def id_of_path(self, path: str | os.PathLike) -> int | None:
        rows = self._query("SELECT id FROM images WHERE path = ?", (encode_path(path),))
        return rows[0][0] if rows else None

    def ids_with_prefix(self, prefix: str | os.PathLike) -> npt.NDArray[np.int64]:
        """Ids of embedded rows whose absolute path starts with ``prefix`` (bytewise; relative to the cwd).

        A trailing separator is kept, so ``photos/`` matches ``photos/a.jpg`` but not ``photos2/a.jpg``.
        """
        raw = encode_path(prefix) + (os.sep.encode() if str(prefix).endswith(os.sep) else b"")
        rows = self._query(
            "SELECT i.id FROM images i JOIN vectors v ON v.image_id = i.id WHERE substr(i.path, 1, ?) = ?",
            (len(raw), raw))
        return np.array([r[0] for r in rows], dtype=np.int64)

    def photos(self, ids: Sequence[int]) -> dict[int, PhotoMetadata]:
        """Capture time, camera and GPS of rows by id (see :mod:`~mmretrieval.collection.photo_table`)."""
        return read_photos(self._query, ids)

    def select(self, sql: str, params: Sequence = ()) -> list[tuple]:
        """Run a read-only query (for the modules that own their own tables, such as the photo filters)."""
        return self._query(sql, params)

    def counts_by_status(self) -> dict[str, int]:
        return dict(self._query("SELECT status, COUNT(*) FROM images GROUP BY status"))

    def failures(self) -> list[ImageRow]:
        """Rows that failed or were skipped, by path."""
        rows = self._query("SELECT id, path, status, width, height, caption, reason, message FROM images "
                           "WHERE status IN ('failed', 'skipped') ORDER BY path")
        return [ImageRow(row[0], os.fsdecode(row[1]), *row[2:]) for row in rows]

    # -- labels -----------------------------------------------------------------------------------------------
    def replace_labels(self, assignments: Iterable[tuple[int, str, float]]) -> None:
        """Replace every stored label with ``(image_id, label, probability)`` rows, in one transaction."""
        with self.transaction() as db:
            db.execute("DELETE FROM labels")
            db.executemany("INSERT INTO labels(image_id, label, probability) VALUES (?, ?, ?)", assignments)

    def labels_of(self, ids: Sequence[int]) -> dict[int, tuple[tuple[str, float], ...]]:
        """Assigned ``(label, probability)`` pairs per id, best first."""
        found: dict[int, list[tuple[str, float]]] = {}
        for start in range(0, len(ids), 500):
            chunk = [int(i) for i in ids[start:start + 500]]
            for id_, label, probability in self._query(
                "SELECT image_id, label, probability FROM labels "
                f"WHERE image_id IN ({','.join('?' * len(chunk))}) ORDER BY probability DESC", chunk):
                found.setdefault(id_, []).append((label, probability))
        return {id_: tuple(pairs) for id_, pairs in found.items()}

    def ids_with_label(self, label: str) -> npt.NDArray[np.int64]:
        rows = self._query("SELECT image_id FROM labels WHERE label = ?", (label,))
        return np.array([r[0] for r in rows], dtype=np.int64)

    def label_counts(self) -> dict[str, int]:
        return dict(self._query("SELECT label, COUNT(*) FROM labels GROUP BY label ORDER BY label"))


def _to_blob(vector: npt.NDArray[np.float32]) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def _from_blob(blob: bytes) -> npt.NDArray[np.float32]:
    return np.frombuffer(blob, dtype="<f4").astype(np.float32)


def _stack(rows: list[tuple[int, bytes]]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    if not rows:
        return ids, np.zeros((0, 0), dtype=np.float32)
    dim = len(rows[0][1]) // 4
    vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), dim)
    return ids, vectors.astype(np.float32)
