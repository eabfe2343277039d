"""The SQLite catalog: the source of truth of a collection.

One row per file (path, size, mtime, content hash, size in pixels, status, failure reason, caption), the
place (segment, row) of every image's vector in the collection's segment files (:mod:`.segments`), zero-shot
labels, and the identity of the model that made the vectors. The schema is versioned (:mod:`.migrations`).
Paths are stored as the file system's bytes (``os.fsencode``) so that non-UTF-8 names round-trip exactly.

Ids are ``AUTOINCREMENT``: a pruned row's id is never reused, so an id always means one file. Every write is
one transaction (WAL, ``synchronous=FULL``), and every write that adds or removes vectors bumps the catalog
*generation*; the FAISS index records the generation it reflects and catches up from there.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import numpy.typing as npt

from . import label_sets
from ..atomic import exclusive_lock
from ..errors import CatalogFull, CollectionError
from ..images.metadata import PhotoMetadata
from .connection import ClosedConnection, checkpoint_wal, connect, open_error
from .photo_table import read_photos
from .migrations import (NOT_OK, SCHEMA_VERSION, catalog_version, check_ours, check_readable_as_is, check_version,
                         create_tables, migrate, missing_tables, needs_repair)
from .label_moves import DROPPED_TABLES
from .places import FailureWrite, RowMetadata, SegmentCommit, VectorPlaces, VectorWrite
from .planned_rows import FileState, PlannedRows
from .pruning import PrunedRows
from .segment_files import SEGMENTS_DIRNAME
from .sql_keys import in_lists, key_range
from .segments import SegmentStore

__all__ = ["Catalog", "CatalogFull", "FailureWrite", "FileState", "ImageRow", "RowMetadata", "SegmentCommit",
           "VectorWrite", "encode_path", "is_collection", "writer_busy", "CATALOG_NAME", "LOCK_NAME", "SCHEMA_VERSION"]

logger = logging.getLogger(__name__)

CATALOG_NAME = "catalog.sqlite"  # in the collection's folder
LOCK_NAME = "ingest.lock"  # held (flock) by the collection's writer; the OS releases it if the process dies
REMOVALS_KEY = "removals_logged_from"  # catalog meta: removed_vectors is complete after this generation
DTYPE_KEY = "vector_dtype"  # catalog meta: float16 | float32, chosen when the collection is created
FAILURE_PAGE = 10_000  # failed or skipped rows read per query
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")  # a scheme: never the start of an absolute local path


def is_collection(directory: str | os.PathLike) -> bool:
    """Whether ``directory`` holds a collection (its catalog), without opening it."""
    return (Path(directory).expanduser() / CATALOG_NAME).is_file()


def writer_busy(directory: str | os.PathLike, command: str) -> str:
    """What writer ``command`` (``ingest``, ``index``...) says when another writer holds :data:`LOCK_NAME`."""
    return (f"another process is writing {directory} (an ingest, import, index build, compaction, labelling run, "
            "check --repair, or a backup holding its lock with flock); "
            f"run mmr {command} when it is done (or with --wait, which waits for it; in Python, "
            "Collection.open(..., wait=True)), or stop it (an interrupted "
            "ingest or import resumes where it stopped)")

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


def is_uri(path: str) -> bool:
    """Whether ``path`` is a URI (``s3://b/x.jpg``, ``https://…``: an imported row's), not a local path."""
    return _URI.match(path) is not None


def encode_path(path: str | os.PathLike) -> bytes:
    """The catalog key of a path: its absolute form as file-system bytes; a URI (``s3://b/x.jpg``, as imported
    from clip-retrieval output) as it is."""
    if isinstance(path, str) and is_uri(path):
        return os.fsencode(path)
    return os.fsencode(os.path.abspath(path))


class Catalog(PlannedRows, VectorPlaces, PrunedRows):
    """A connection to one collection's SQLite catalog. Thread-safe (one lock around the connection).

    Vector reads and writes (:meth:`write_results`, :meth:`commit_segment`, :meth:`vectors`,
    :meth:`iter_vectors`) come from :class:`~.places.VectorPlaces`, :meth:`prune_missing` from
    :class:`~.pruning.PrunedRows`.
    """

    def __init__(self, path: str | os.PathLike, writable: bool = True):
        """Open (creating or migrating as needed) the catalog at ``path``.

        Args:
            path: the ``catalog.sqlite`` file; its folder holds the segments and the writer lock.
            writable: False opens it read-only: nothing in the folder is created or changed (a catalog that
                needs a migration is then read as it is when only data-only migrations are pending, see
                :data:`~.migrations.OLDEST_READABLE`, and refused otherwise).

        Raises:
            CollectionError: not a catalog, made by newer code, or read-only and in need of a migration or repair
                that this code cannot read through.
        """
        self.path = Path(path)
        self.writable = writable
        self._lock = threading.RLock()
        self.segments = SegmentStore(self.path.parent / SEGMENTS_DIRNAME, writable=writable,
                                     before_write=self.check_in_place)
        try:
            self._db = connect(self.path, writable, check=lambda db: check_ours(db, self.path))
        except sqlite3.DatabaseError as exc:
            raise open_error(self.path, exc) from exc
        self._file_identity = _file_identity(self.path)  # (check_in_place)
        try:
            self._prepare_schema()
            if writable:  # this connection's own scratch tables, never in the file
                for statement in DROPPED_TABLES:
                    self._db.execute(statement)
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise open_error(self.path, exc) from exc
        except BaseException:
            self._db.close()
            raise

    def check_in_place(self) -> None:
        """Refuse to go on writing when ``catalog.sqlite`` at this catalog's path is no longer the file it opened:
        the collection's folder was moved or deleted while a command wrote to it. The connection follows the file
        wherever it went, but the segments and the index are written by path: the segment store calls this before
        each change, the collection's writer block as it starts and before it saves the index.

        Raises:
            CollectionError: saying so; what was committed before is in the catalog, wherever it is now.
        """
        if _file_identity(self.path) != self._file_identity:
            raise CollectionError(
                f"the collection {self.path.parent} was moved or deleted while this command was writing to it; what "
                "it committed before then went with the folder, and nothing more was written: run the command again "
                "where the collection is now")

    def _prepare_schema(self) -> None:
        """Create, migrate or repair the schema (writable), or check that it can be read as it is (read-only).

        Raises:
            CollectionError: made by newer code, or read-only and not readable as it is.
        """
        version = catalog_version(self._db)
        if version is not None:
            check_version(version, self.path)
        behind = version is None or version < SCHEMA_VERSION
        repair = needs_repair(self._db, version)
        if not (behind or repair or missing_tables(self._db)):
            return
        if not self.writable:
            check_readable_as_is(self.path, version, repair)
            return
        with exclusive_lock(self.path.parent / LOCK_NAME):  # migrations write segments: a writer's job
            version = catalog_version(self._db)
            if version is None:
                with self.transaction() as db:
                    create_tables(db)
                    self.set_meta("schema", str(SCHEMA_VERSION))
                    self.set_meta("generation", "0")
            else:
                migrate(self._db, self.path.parent, version)
                if missing_tables(self._db):  # an index new to SCHEMA is built over every row: say why it waits
                    logger.info("adding tables or indexes new to this version to %s", self.path)
                create_tables(self._db)  # tables added to SCHEMA without a migration of their own
            if self.get_meta(REMOVALS_KEY) is None:  # removals are logged from now on
                with self.transaction():
                    self.set_meta(REMOVALS_KEY, str(self.generation))

    def close(self) -> None:
        """Close the connection and let go of the segment files (idempotent). Any later use raises
        :class:`~mmretrieval.errors.CollectionError` saying the collection was closed."""
        with self._lock:
            if isinstance(self._db, ClosedConnection):
                return
            self._db.close()
            self._db = ClosedConnection(self.path.parent)  # type: ignore[assignment]
            self.segments.close()

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

    @contextmanager
    def bulk_transaction(self) -> Iterator[sqlite3.Connection]:
        """:meth:`transaction` without foreign-key checks, for inserts whose references hold by construction
        (rows that point at rows inserted just before, in the same transaction): checking a million of them
        costs as much as inserting them. The checks are back on when it ends, whatever happens."""
        with self._lock:
            self._db.execute("PRAGMA foreign_keys=OFF")  # a no-op inside a transaction, so set before BEGIN
            try:
                with self.transaction() as db:
                    yield db
            finally:
                self._db.execute("PRAGMA foreign_keys=ON")

    @contextmanager
    def checkpoints_aside(self) -> Iterator[Callable[[], None]]:
        """For a run of large transactions (an import's shards): SQLite's own checkpoint, which copies the WAL
        into the database and fsyncs it at the end of the commit that grew the WAL past 1,000 pages, is off on
        this connection; the function yielded starts one on a thread and connection of its own instead (unless
        one is still running), so the copy overlaps the next transaction rather than lengthening this one's
        commit (0.5 s of a 500,000-row shard's at 10 M, 0.2 s after). When the block ends, a last one copies
        what was committed since (``PASSIVE``: frames a reader's older snapshot still needs stay in the WAL
        until a later checkpoint), and SQLite's own are back on.

        Raises:
            sqlite3.Error: a checkpoint failed (only when the block itself did not raise: its error comes first).
        """
        pool = ThreadPoolExecutor(1, thread_name_prefix="mmr-catalog-checkpoint")
        started: list[Future[None]] = []

        def checkpoint() -> None:
            self.check_in_place()  # it opens the catalog by path
            if not started or started[-1].done():
                started.append(pool.submit(checkpoint_wal, self.path))

        previous = int(self._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0])
        self._db.execute("PRAGMA wal_autocheckpoint=0")
        try:
            yield checkpoint
            self.check_in_place()
            started.append(pool.submit(checkpoint_wal, self.path))  # after every commit
        finally:
            pool.shutdown()  # waits for the running one
            self._db.execute(f"PRAGMA wal_autocheckpoint={previous}")
        for done in started:
            done.result()

    def _query(self, sql: str, params: Sequence = ()) -> list[tuple]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    def quick_check(self) -> list[str]:
        """SQLite's ``PRAGMA quick_check``: ``["ok"]``, or what is damaged (every page and index entry read; not
        the uniqueness checks of ``integrity_check``, which take minutes at 10 M rows)."""
        try:
            return [row[0] for row in self._query("PRAGMA quick_check")]
        except sqlite3.DatabaseError as exc:  # a page so damaged that the check itself stops
            return [str(exc)]

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

    # -- reading rows -----------------------------------------------------------------------------------------
    def rows(self, ids: Sequence[int]) -> dict[int, ImageRow]:
        """Rows by id; unknown ids are simply absent."""
        found: dict[int, ImageRow] = {}
        for chunk, marks in in_lists(ids):
            for row in self._query(
                    f"SELECT id, path, status, width, height, caption, reason, message FROM images WHERE id IN ({marks})",
                    chunk):
                found[row[0]] = ImageRow(row[0], os.fsdecode(row[1]), *row[2:])
        return found

    def id_of_path(self, path: str | os.PathLike) -> int | None:
        rows = self._query("SELECT id FROM images WHERE path = ?", (encode_path(path),))
        return rows[0][0] if rows else None

    def stats_of(self, ids: Sequence[int]) -> dict[int, tuple[int, int, str]]:
        """``id -> (size, mtime_ns, status)`` of the files as last planned ((0, 0) for imported rows): a row
        ``pending`` again has its new size and time but still its old vector."""
        found: dict[int, tuple[int, int, str]] = {}
        for chunk, marks in in_lists(ids):
            found.update((row[0], (row[1], row[2], row[3])) for row in self._query(
                f"SELECT id, size, mtime_ns, status FROM images WHERE id IN ({marks})", chunk))
        return found

    def file_state(self, path: str | os.PathLike) -> tuple[int, int, int] | None:
        """``(id, size, mtime_ns)`` of ``path``'s row as it was last read (0, 0 for an imported row), or None."""
        rows = self._query("SELECT id, size, mtime_ns FROM images WHERE path = ?", (encode_path(path),))
        return tuple(rows[0]) if rows else None

    def ids_with_prefix(self, prefix: str | os.PathLike) -> npt.NDArray[np.int64]:
        """Ids of embedded rows whose absolute path starts with ``prefix`` (bytewise; relative to the cwd), or
        with the same prefix through its folder's real path where that differs: a folder given through a link to
        where the collection's images were ingested from (``~/Pictures`` linking to a data disk).

        A trailing separator is kept, so ``photos/`` matches ``photos/a.jpg`` but not ``photos2/a.jpg``.
        """
        raw = encode_path(prefix)  # absolute: a trailing separator is dropped (but for the root's own)
        if str(prefix).endswith(os.sep) and not raw.endswith(os.sep.encode()):
            raw += os.sep.encode()
        folder, rest = raw.rsplit(os.sep.encode(), 1)
        folder = folder or os.sep.encode()  # a name in the root
        real = os.path.join(os.path.realpath(folder), rest) if os.path.isdir(folder) else raw
        ids: list[int] = []
        for form in dict.fromkeys((raw, real)):  # along the path index (at 1 M rows, substr took 94-154 ms)
            ids += [r[0] for r in self._query("SELECT i.id FROM images i JOIN vector_rows v ON v.image_id = i.id "
                                              "WHERE i.path >= ? AND i.path < ?", key_range(form))]
        return np.unique(np.array(ids, dtype=np.int64))

    def photos(self, ids: Sequence[int]) -> dict[int, PhotoMetadata]:
        """Capture time, camera and GPS of rows by id (see :mod:`~mmretrieval.collection.photo_table`)."""
        return read_photos(self._query, ids)

    def select(self, sql: str, params: Sequence = ()) -> list[tuple]:
        """Run a read-only query (for the modules that own their own tables, such as the photo filters)."""
        return self._query(sql, params)

    def vacuum(self) -> None:
        """Rewrite the catalog without its free pages (SQLite's ``VACUUM``): the writer's job, under the lock."""
        self._query("VACUUM")

    def checkpoint_without_waiting(self) -> bool:
        """Move the WAL into the catalog and truncate it, waiting for no reader; returns whether a reader on an
        older snapshot kept part of it (the file shrinks at a later checkpoint then)."""
        (timeout,), = self._query("PRAGMA busy_timeout")
        self._query("PRAGMA busy_timeout = 0")  # a reader on an older snapshot would hold it for the whole timeout
        try:
            (busy, _, _), = self._query("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._query(f"PRAGMA busy_timeout = {int(timeout)}")
        return bool(busy)

    def select_ids(self, sql: str, params: Sequence = ()) -> npt.NDArray[np.int64]:
        """Run a read-only query whose rows are one id each, in its order: streamed into the array, as
        :meth:`vector_ids` does (a list of 10 M row tuples would cost ~1 GB on the way)."""
        with self._lock:
            return np.fromiter((row[0] for row in self._db.execute(sql, params)), dtype=np.int64)

    def select_array(self, sql: str, params: Sequence = (), page: int = 100_000) -> npt.NDArray[np.float64]:
        """Run a read-only query of numeric columns into one float64 array (rows x columns), fetched ``page`` rows
        at a time: never every row as Python tuples, as :meth:`select_ids` (ids up to 2**53 stay exact)."""
        with self._lock:
            cursor = self._db.execute(sql, params)
            pages = [np.array(rows, dtype=np.float64) for rows in iter(lambda: cursor.fetchmany(page), [])]
            columns = len(cursor.description)
        return np.concatenate(pages) if pages else np.zeros((0, columns), np.float64)

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Every read in the block sees the catalog as one moment did (one read transaction), whatever another
        process commits meanwhile. This connection is held for the block: keep it short."""
        with self._lock:
            begun = not self._db.in_transaction
            if begun:
                self._db.execute("BEGIN")
            try:
                yield
            finally:
                if begun:
                    self._db.execute("COMMIT")

    def counts_by_status(self) -> dict[str, int]:
        with self.snapshot():  # both counts from one moment, whatever a writer commits in between
            others = dict(self._db.execute(f"SELECT status, COUNT(*) FROM images WHERE {NOT_OK} GROUP BY status"))
            ok = int(self._db.execute("SELECT COUNT(*) FROM images").fetchone()[0]) - sum(others.values())
        return {"ok": ok, **others} if ok else others

    def failures(self) -> Iterator[ImageRow]:
        """Rows that failed, then rows that were skipped, each in the order their files were first met, read
        :data:`FAILURE_PAGE` rows at a time along the status index (which holds only rows that are not ``ok``,
        in id order within a status: no sort, so every page costs the same)."""
        for status in ("failed", "skipped"):
            after = 0
            while rows := self._query("SELECT id, path, status, width, height, caption, reason, message FROM images "
                                      f"WHERE {NOT_OK} AND status = ? AND id > ? ORDER BY id LIMIT {FAILURE_PAGE}",
                                      (status, after)):
                yield from (ImageRow(row[0], os.fsdecode(row[1]), *row[2:]) for row in rows)
                after = rows[-1][0]

    # -- labels (stored per label set: see label_sets.py) -------------------------------------------------------
    def labels_of(self, ids: Sequence[int], label_set: str | None = None) -> dict[int, tuple[tuple[str, float], ...]]:
        """Assigned ``(label, probability)`` pairs per id, best first (``SET:LABEL`` outside the default set), or
        those of ``label_set`` alone by their own names."""
        return label_sets.labels_of(self, ids, label_set)

    def ids_with_label(self, label: str) -> npt.NDArray[np.int64]:
        """Ids assigned ``label``: ``SET:LABEL``, or ``LABEL`` in any set."""
        return label_sets.ids_with_label(self, label)

    def label_counts(self) -> dict[str, int]:
        """Images per label, over every label set."""
        return label_sets.counts(self)


def _file_identity(path: Path) -> tuple[int, int] | None:
    """``(device, inode)`` of the file at ``path``, or None when nothing is there."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino
