"""Catalog schema versions and the ordered migrations between them.

The catalog records its schema version in ``meta.schema``. Opening a catalog applies every migration from
its version to :data:`SCHEMA_VERSION`, each in its own transaction (so a crash leaves the catalog at the
last version that fully committed), and refuses a catalog newer than this code.

Adding a migration is one line: append a function ``(db, directory) -> None`` to :data:`MIGRATIONS`; it runs
inside ``BEGIN IMMEDIATE`` and moves the catalog from version ``i + 1`` to ``i + 2`` (its position ``i``).
Tables that need no data moved can simply be added to :data:`SCHEMA` with ``CREATE ... IF NOT EXISTS``. A
migration that only changes data (current readers read the old data through) may leave
:data:`OLDEST_READABLE` as it is, with a line in :data:`UNMIGRATED_CAVEATS`; any other raises it to the new
version.

The number alone is not the whole story: commits 5c0e7c7..3881d80 (a branch merged later) numbered their photos
table schema 3, so their catalogs reach version 3 and beyond without label sets. :func:`needs_repair` looks at
``labels``' columns (one ``PRAGMA``) and :func:`migrate` then runs the label-sets step on its own, whatever the
stamped version.

Memory: migration 1 -> 2 streams the BLOB vectors in chunks of :data:`_CHUNK` rows (~20 MB at 512-d), so a
10 M-image v1 catalog migrates in bounded RAM; it needs the segment files' size in free disk (10 GB at
float16) until SQLite's freed pages are reused.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import CollectionError
from .photo_table import PHOTO_SCHEMA, backfill_from_mtime
from .segment_files import SEGMENTS_DIRNAME
from .segments import DEFAULT_DTYPE, SegmentStore

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path BLOB NOT NULL UNIQUE,          -- os.fsencode(absolute path)
    size INTEGER NOT NULL,              -- bytes, as stat() saw it when planned
    mtime_ns INTEGER NOT NULL,
    status TEXT NOT NULL,               -- pending | ok | failed | skipped
    content_hash TEXT,                  -- blake2b of the bytes, for embedded files (NULL for imported rows)
    width INTEGER, height INTEGER, format TEXT,
    reason TEXT, message TEXT,          -- why a row failed or was skipped
    caption TEXT
);
CREATE INDEX IF NOT EXISTS images_hash ON images(content_hash) WHERE content_hash IS NOT NULL;
-- planning's look-up of embedded files of a new file's size (a copy, a renamed folder: see ingest/copies.py)
CREATE INDEX IF NOT EXISTS images_size ON images(size) WHERE content_hash IS NOT NULL;
-- partial: a query uses it only when its WHERE states NOT_OK (below) word for word
CREATE INDEX IF NOT EXISTS images_status ON images(status) WHERE status != 'ok';
CREATE TABLE IF NOT EXISTS vector_rows (
    image_id INTEGER PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE,
    generation INTEGER NOT NULL,        -- catalog generation that wrote it
    segment INTEGER NOT NULL,           -- segments/<segment>.vec
    row INTEGER NOT NULL                -- row in that segment
);
CREATE INDEX IF NOT EXISTS vector_rows_generation ON vector_rows(generation);
CREATE INDEX IF NOT EXISTS vector_rows_place ON vector_rows(segment, row);
CREATE TABLE IF NOT EXISTS removed_vectors (  -- lets a reader's index catch up without diffing every id
    image_id INTEGER NOT NULL,
    generation INTEGER NOT NULL         -- a generation after the one it was removed in
);
CREATE INDEX IF NOT EXISTS removed_vectors_generation ON removed_vectors(generation);
CREATE TRIGGER IF NOT EXISTS vector_rows_removed AFTER DELETE ON vector_rows BEGIN INSERT INTO removed_vectors(image_id, generation) SELECT old.image_id, CAST(value AS INTEGER) + 1 FROM meta WHERE key = 'generation'; END;
CREATE TABLE IF NOT EXISTS segment_commits (
    sha256 TEXT PRIMARY KEY,            -- of the committed segment's .vec file
    source TEXT NOT NULL,               -- where it was committed from
    segment INTEGER NOT NULL,           -- the number it got in this collection
    rows INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS labels (
    label_set TEXT NOT NULL DEFAULT 'default',  -- the labelling run's set (see label_sets.py)
    image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    label TEXT NOT NULL,
    probability REAL NOT NULL,
    PRIMARY KEY (label_set, image_id, label)
);
CREATE INDEX IF NOT EXISTS labels_label ON labels(label);
CREATE INDEX IF NOT EXISTS labels_image ON labels(image_id);
CREATE TABLE IF NOT EXISTS labels_staging (     -- a labelling run's chunks until it commits
    label_set TEXT NOT NULL, image_id INTEGER NOT NULL, label TEXT NOT NULL, probability REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS label_sets (
    name TEXT PRIMARY KEY,
    labels TEXT NOT NULL,               -- JSON list of the run's labels, in the order given
    multi_label INTEGER NOT NULL,
    threshold REAL,                     -- multi-label cutoff, NULL for single-label
    created_s REAL NOT NULL             -- Unix time of the run
);
CREATE TABLE IF NOT EXISTS label_scored (  -- the images a set's run scored, labelled or not (see label_sets.py)
    label_set TEXT NOT NULL,
    image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    PRIMARY KEY (label_set, image_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS label_scored_image ON label_scored(image_id);
-- The triggers keep label_scored true whoever writes, mmretrieval before this table included: a set written (or
-- replaced) anew starts with nothing scored, a removed set keeps nothing, and an image whose bytes changed or that
-- lost its vector (its content hash changed or was cleared, as its labels go) counts as scored by no set.
CREATE TRIGGER IF NOT EXISTS label_scored_set_written AFTER INSERT ON label_sets
    BEGIN DELETE FROM label_scored WHERE label_set = new.name; END;
CREATE TRIGGER IF NOT EXISTS label_scored_set_removed AFTER DELETE ON label_sets
    BEGIN DELETE FROM label_scored WHERE label_set = old.name; END;
CREATE TRIGGER IF NOT EXISTS label_scored_new_content AFTER UPDATE OF content_hash ON images
    WHEN new.content_hash IS NULL OR new.content_hash IS NOT old.content_hash
    BEGIN DELETE FROM label_scored WHERE image_id = new.id; END;
-- Folders an ingest walked that lay on another file system than their parent (a drive, a share): a prune keeps the
-- rows under one that is no longer mounted, as its files are then only out of reach (ingest/mounts.py).
CREATE TABLE IF NOT EXISTS mount_points (
    path BLOB PRIMARY KEY,              -- catalog key of the folder, ending in a separator
    seen_ns INTEGER NOT NULL            -- when an ingest last found it mounted (time.time_ns)
) WITHOUT ROWID;
""" + PHOTO_SCHEMA  # capture time, camera, GPS per embedded image (migration 3 -> 4 adds it to older catalogs)

_CHUNK = 10_000  # v1 BLOB rows moved per step
# images_status indexes the rows that are not done (imported rows, and embedded ones once done, are 'ok'):
# a query can use a partial index only when its WHERE states the index's own condition, word for word
NOT_OK = "status != 'ok'"


def _v1_to_v2(db: sqlite3.Connection, directory: Path) -> None:
    """Move float32 BLOB vectors into segments (float16), record each row's place, drop the BLOB table."""
    segments_dir = directory / SEGMENTS_DIRNAME
    if segments_dir.exists():  # left by a migration killed before its commit: nothing points into it
        shutil.rmtree(segments_dir)
    create_tables(db)
    first = db.execute("SELECT embedding FROM vectors LIMIT 1").fetchone()
    if first is not None:
        store = SegmentStore(segments_dir)
        store.create(len(first[0]) // 4, DEFAULT_DTYPE)
        last = -1
        while True:
            rows = db.execute("SELECT image_id, generation, embedding FROM vectors WHERE image_id > ? "
                              "ORDER BY image_id LIMIT ?", (last, _CHUNK)).fetchall()
            if not rows:
                break
            ids = np.array([r[0] for r in rows], np.int64)
            vectors = np.frombuffer(b"".join(r[2] for r in rows), dtype="<f4").reshape(len(rows), -1)
            number, start = store.append(ids, vectors)
            db.executemany("INSERT INTO vector_rows(image_id, generation, segment, row) VALUES (?, ?, ?, ?)",
                           [(r[0], r[1], number, start + i) for i, r in enumerate(rows)])
            last = rows[-1][0]
    db.execute("DROP TABLE vectors")


def _v2_to_v3(db: sqlite3.Connection, directory: Path) -> None:
    """Label sets: ``labels`` gains ``label_set`` (earlier labels become set ``default``, described in ``label_sets``).

    Also the repair of a catalog that reached a later version without it (:func:`needs_repair`): such a catalog
    may hold any later table already (photos, label_sets, labels_staging); only ``labels`` is rebuilt, and a
    ``default`` set already described is kept.
    """
    if not _labels_lack_sets(db):  # (a repair that another process finished while this one waited for the lock)
        return
    db.execute("DROP TABLE IF EXISTS labels_v3")  # (a rolled-back attempt leaves none; a hand-made copy might)
    for statement in (
        """CREATE TABLE labels_v3 (
            label_set TEXT NOT NULL DEFAULT 'default',
            image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
            label TEXT NOT NULL,
            probability REAL NOT NULL,
            PRIMARY KEY (label_set, image_id, label))""",
        """INSERT INTO labels_v3(label_set, image_id, label, probability)
            SELECT 'default', image_id, label, probability FROM labels""",
        "DROP TABLE labels",
        "ALTER TABLE labels_v3 RENAME TO labels",
    ):
        db.execute(statement)
    create_tables(db)
    db.execute("""INSERT OR IGNORE INTO label_sets(name, labels, multi_label, threshold, created_s)
        SELECT 'default', (SELECT json_group_array(label) FROM (SELECT DISTINCT label FROM labels ORDER BY label)),
               0, NULL, CAST(strftime('%s', 'now') AS REAL)
        WHERE EXISTS (SELECT 1 FROM labels)""")


def _v3_to_v4(db: sqlite3.Connection, directory: Path) -> None:
    """Add the photos table; every embedded image gets a row dated by its file's mtime (EXIF comes with a
    re-ingest of the file). One INSERT ... SELECT: nothing held in Python memory."""
    added = backfill_from_mtime(db)
    logger.info("dated %d images of %s by their files' modification times", added, directory)


def _v4_to_v5(db: sqlite3.Connection, directory: Path) -> None:
    """Cheaper bulk imports: ``images_hash`` indexes only rows that have a hash (imported rows have none), and
    imported rows are recorded as one id range per shard instead of a row each (``imported_rows`` dropped)."""
    db.execute("DROP INDEX IF EXISTS images_hash")
    create_tables(db)
    if db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'imported_rows'").fetchone():
        # a shard's rows were inserted in one transaction, so every id between its lowest and highest is its own
        db.execute("ALTER TABLE import_shards ADD COLUMN first_id INTEGER")
        db.execute("ALTER TABLE import_shards ADD COLUMN last_id INTEGER")
        # one pass over imported_rows (it has no index on shard_id): a scan per shard would be 20 scans at 10 M
        db.execute("CREATE TEMP TABLE shard_ranges AS SELECT shard_id, MIN(image_id) AS lo, MAX(image_id) AS hi "
                   "FROM imported_rows GROUP BY shard_id")
        db.execute("UPDATE import_shards SET "
                   "first_id = (SELECT lo FROM shard_ranges WHERE shard_id = import_shards.id), "
                   "last_id = (SELECT hi FROM shard_ranges WHERE shard_id = import_shards.id)")
        db.execute("DROP TABLE temp.shard_ranges")
        db.execute("DROP TABLE imported_rows")


def _v5_to_v6(db: sqlite3.Connection, directory: Path) -> None:
    """Cheaper bulk imports: ``images_status`` indexes only rows that are not ``ok`` (:data:`NOT_OK`)."""
    db.execute("DROP INDEX IF EXISTS images_status")
    db.execute(f"CREATE INDEX images_status ON images(status) WHERE {NOT_OK}")


def _v6_to_v7(db: sqlite3.Connection, directory: Path) -> None:
    """GPS (0, 0) is what a camera without a fix writes: ingestion now records no place for it, and the rows it
    recorded before lose theirs (found along the latitude index)."""
    cleared = db.execute("UPDATE photos SET latitude = NULL, longitude = NULL "
                         "WHERE latitude = 0 AND longitude = 0").rowcount
    logger.info("cleared the GPS position 0,0 (no fix) of %d images of %s", cleared, directory)


# Position i moves a catalog from version i + 1 to i + 2. Append only; never reorder or remove.
MIGRATIONS: list[Callable[[sqlite3.Connection, Path], None]] = [_v1_to_v2, _v2_to_v3, _v3_to_v4, _v4_to_v5,
                                                                  _v5_to_v6, _v6_to_v7]
SCHEMA_VERSION = len(MIGRATIONS) + 1

# The oldest version a read-only open reads as it is, unmigrated (a reader cannot migrate: it may not write). Every
# migration after it only changes data that this code reads through (6 -> 7 clears GPS (0, 0)), never a table,
# column or index that a query here names. A migration that does change one raises this to its new version.
OLDEST_READABLE = 6
# What a reader of a catalog not yet at version v sees, for each data-only migration to v after OLDEST_READABLE.
UNMIGRATED_CAVEATS: dict[int, str] = {
    7: "its photos with GPS position (0, 0), what a camera without a fix writes, may still show as places there "
       "(--near, the map)",
}
_LABEL_SETS_VERSION = 3  # the first version whose labels have label_set (migration 2 -> 3)


def create_tables(db: sqlite3.Connection) -> None:
    """Create the current schema's missing tables and indexes (inside the caller's transaction, if any).

    Statement by statement: ``executescript`` would commit the caller's transaction first. (Statements end
    with ``;`` and a newline; a trigger keeps its body on one line.)
    """
    for statement in SCHEMA.split(";\n"):
        if statement.strip():
            db.execute(statement)


def schema_objects() -> set[str]:
    """Names of the tables, indexes and triggers :data:`SCHEMA` creates."""
    names = set()
    for kind in ("TABLE", "INDEX", "TRIGGER"):
        for rest in SCHEMA.split(f"CREATE {kind} IF NOT EXISTS ")[1:]:
            names.add(rest.split()[0].split("(")[0])
    return names


def missing_tables(db: sqlite3.Connection) -> bool:
    """Whether a table, index or trigger of :data:`SCHEMA` is missing from ``db`` (a writable open creates it: an
    index added to the schema reaches older catalogs so, without a version that older code would refuse)."""
    have = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'index', 'trigger')")}
    return bool(schema_objects() - have)


def catalog_version(db: sqlite3.Connection) -> int | None:
    """The stored schema version, or None for an empty (new) database."""
    has_meta = db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
    if not has_meta:
        return None
    row = db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
    return int(row[0]) if row else None


def needs_repair(db: sqlite3.Connection, version: int | None) -> bool:
    """Whether a catalog at ``version`` lacks what that version promises: ``labels`` without ``label_set``
    (a catalog from the photos branch, see the module's docstring). One ``PRAGMA``, cheap enough for every open."""
    return version is not None and version >= _LABEL_SETS_VERSION and _labels_lack_sets(db)


def _labels_lack_sets(db: sqlite3.Connection) -> bool:
    columns = {row[1] for row in db.execute("PRAGMA table_info(labels)")}
    return bool(columns) and "label_set" not in columns


def check_ours(db: sqlite3.Connection, path: Path) -> None:
    """Before a catalog is opened (see :func:`.connection.connect`): refuse a database with tables but no schema
    version, another program's (a ``catalog.sqlite`` of its own in the folder passed as ``--collection``), which
    adding this catalog's tables would change.

    Raises:
        CollectionError: naming a few of its tables.
    """
    if catalog_version(db) is not None:
        return
    tables = [row[0] for row in db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name LIMIT 4")]
    if tables:
        shown = ", ".join(tables[:3]) + (", ..." if len(tables) > 3 else "")
        raise CollectionError(f"{path} is a SQLite database but not an mmretrieval catalog (it holds tables {shown}, "
                              "and no catalog schema version); pass a new or empty folder as --collection "
                              "(nothing was changed)")


def check_version(version: int, path: Path) -> None:
    """Refuse a catalog made by newer code.

    Raises:
        CollectionError: naming both versions.
    """
    if version > SCHEMA_VERSION:
        raise CollectionError(f"{path} has catalog schema version {version}, this mmretrieval reads up to "
                              f"version {SCHEMA_VERSION}; upgrade mmretrieval to open it")


def check_readable_as_is(path: Path, version: int | None, repair: bool) -> None:
    """A read-only open of a catalog that is behind, in need of a repair, or lacks tables: read it as it is
    when this code can (with a warning saying what may read differently until a writable open migrates it).

    Raises:
        CollectionError: it has no tables yet, or needs a migration or repair before this code can read it.
    """
    if version is None:
        raise CollectionError(f"{path} has no tables yet and is opened read-only: a first ingest may "
                              "be creating it (run again in a moment); else open it once where it is "
                              "writable (any mmr command does it)")
    if version < OLDEST_READABLE:
        raise CollectionError(f"{path} needs its schema migrated to version {SCHEMA_VERSION} and is "
                              "opened read-only; open it once where it is writable (any mmr command does it)")
    if repair:
        raise CollectionError(f"{path} has labels without label sets (a catalog made by a pre-release "
                              f"branch of mmretrieval, stamped schema {version}) and is opened read-only; open it "
                              "once where it is writable (any mmr command does it) to add them")
    if version < SCHEMA_VERSION:
        caveats = "; ".join(UNMIGRATED_CAVEATS[later] for later in range(version + 1, SCHEMA_VERSION + 1))
        logger.warning("%s is at catalog schema %d and opened read-only, so it is read as it is: %s, until a "
                       "writable open migrates it to schema %d (any mmr command where its folder is writable)",
                       path, version, caveats, SCHEMA_VERSION)
    # else only tables that newer code adds are missing: readable as it is


def migrate(db: sqlite3.Connection, directory: Path, version: int) -> int:
    """Apply every migration after ``version``, one transaction each, then any repair :func:`needs_repair` finds
    (in a transaction of its own); returns the final version.

    The caller holds the collection's writer lock (migrations write segment files). A catalog that moved is
    announced with a warning: older mmretrieval cannot open it any more, and the open that did it may have been a
    mere reader (``mmr info``).
    """
    check_version(version, directory)
    start = version
    while version < SCHEMA_VERSION:
        step = MIGRATIONS[version - 1]
        logger.info("migrating %s from catalog schema %d to %d", directory, version, version + 1)
        _in_transaction(db, directory, step, version + 1)
        version += 1
    if version != start:
        logger.warning("migrated %s's catalog from schema %d to %d; mmretrieval versions before this one can no "
                       "longer open it", directory, start, version)
    if needs_repair(db, version):
        _in_transaction(db, directory, _v2_to_v3, version)
        logger.warning("added label sets to %s's catalog, whose labels predated them (a catalog made by a "
                       "pre-release branch of mmretrieval, commits 5c0e7c7..3881d80); its labels are now the set "
                       "'default'", directory)
    return version


def _in_transaction(db: sqlite3.Connection, directory: Path, step: Callable[[sqlite3.Connection, Path], None],
                    version: int) -> None:
    """Run ``step`` and stamp ``version`` in one ``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any exception."""
    db.execute("BEGIN IMMEDIATE")
    try:
        step(db, directory)
        db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('schema', ?)", (str(version),))
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
