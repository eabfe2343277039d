"""The catalog's ``photos`` table: capture time, camera, GPS position and orientation per embedded file.

Every ingested row has a ``photos`` row and every ``photos`` row is an embedded one, so the filters are
indexed column comparisons on this table alone (no join):

* written with the vectors, in the same transaction (``write_results`` and ``commit_segment`` of
  :class:`~mmretrieval.collection.places.VectorPlaces`); a file decoded without metadata (or committed from
  elsewhere without it) gets a row dated by its modification time, as the decoder would have dated it;
* dropped with the vector, whatever removes it (a trigger on ``vector_rows``), when the file changes
  (``mark_pending``), and with the image (``ON DELETE CASCADE``);
* rows landed by ``mmr import`` (vectors made elsewhere, no file times) have none: their capture time is
  unknown, so date, camera and place filters leave them out;
* catalogs made before the table existed get it from migration 2 -> 3 (:func:`backfill_from_mtime`).
"""

from __future__ import annotations

import sqlite3
from typing import Callable, Iterable, Sequence

from ..images.metadata import PhotoMetadata, photo_metadata

PHOTO_SCHEMA = """
CREATE TABLE IF NOT EXISTS photos (
    image_id INTEGER PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE,
    taken_local TEXT,                   -- 'YYYY-MM-DDTHH:MM:SS', the wall clock where the photo was taken
    taken_utc_s REAL,                   -- POSIX seconds
    utc_offset_min INTEGER,             -- minutes east of UTC, when known
    taken_source TEXT,                  -- exif_original | exif_digitized | exif_datetime | mtime
    make TEXT, model TEXT,
    latitude REAL, longitude REAL,      -- decimal degrees
    orientation INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS photos_taken_local ON photos(taken_local);
CREATE INDEX IF NOT EXISTS photos_taken_utc ON photos(taken_utc_s);
CREATE INDEX IF NOT EXISTS photos_camera ON photos(make, model);
CREATE INDEX IF NOT EXISTS photos_latitude ON photos(latitude);
CREATE TRIGGER IF NOT EXISTS vector_rows_removed_photo AFTER DELETE ON vector_rows BEGIN DELETE FROM photos WHERE image_id = old.image_id; END;
"""
_COLUMNS = ("taken_local", "taken_utc_s", "utc_offset_min", "taken_source", "make", "model", "latitude",
            "longitude", "orientation")
# A row dated by its file's mtime, as photo_metadata() dates it: this machine's wall clock and UTC offset, in whole
# seconds rounded down as Python's datetime rounds them (SQLite's integer division rounds toward zero, which would
# move a fractional time before 1970 a second later).
_SECONDS = "((i.mtime_ns - ((i.mtime_ns % 1000000000) + 1000000000) % 1000000000) / 1000000000)"
_MTIME_DATE = (f"strftime('%Y-%m-%dT%H:%M:%S', {_SECONDS}, 'unixepoch', 'localtime'), i.mtime_ns / 1e9, "
               f"CAST(round((julianday({_SECONDS}, 'unixepoch', 'localtime') - julianday({_SECONDS}, 'unixepoch')) "
               "* 1440) AS INTEGER)")  # taken_local, taken_utc_s, utc_offset_min
# mtime 0: an imported row, no file time known; below 0, a file time before 1970 (a scan dated 1961), a date too
_FROM_MTIME_SQL = (
    "INSERT OR {conflict} INTO photos(image_id, taken_local, taken_utc_s, utc_offset_min, taken_source) "
    f"SELECT i.id, {_MTIME_DATE}, 'mtime' FROM images i WHERE i.mtime_ns != 0")

Query = Callable[[str, Sequence], list[tuple]]


def create_photo_table(db: sqlite3.Connection) -> None:
    """Create the table and its indexes if missing (statement by statement: inside the caller's transaction)."""
    for statement in PHOTO_SCHEMA.split(";\n"):  # as migrations.create_tables: a trigger's body is one line
        if statement.strip():
            db.execute(statement)


def backfill_from_mtime(db: sqlite3.Connection) -> int:
    """Give every embedded row without a ``photos`` row one dated by its file's mtime; returns how many.

    Migration 2 -> 3: older catalogs never read EXIF; their photos are dated as the decoder dates a photo
    without EXIF until they are re-ingested.
    """
    create_photo_table(db)
    return db.execute(_FROM_MTIME_SQL.format(conflict="IGNORE")
                      + " AND i.id IN (SELECT image_id FROM vector_rows)").rowcount


def write_photos(db: sqlite3.Connection, rows: Sequence[tuple[int, PhotoMetadata]]) -> None:
    """Insert or replace the metadata of ``(image_id, metadata)`` rows, inside the caller's transaction."""
    db.executemany(
        f"INSERT OR REPLACE INTO photos(image_id, {', '.join(_COLUMNS)}) VALUES (?{', ?' * len(_COLUMNS)})",
        [(image_id, *(getattr(meta, column) for column in _COLUMNS)) for image_id, meta in rows])


def redate_from_mtime(db: sqlite3.Connection, ids: Sequence[int]) -> None:
    """Date ``ids`` anew from their files' mtimes where that is what dates them (no EXIF date), keeping the camera,
    place and orientation their rows hold; give a row dated so to those without one."""
    db.executemany(f"UPDATE photos SET (taken_local, taken_utc_s, utc_offset_min) = (SELECT {_MTIME_DATE} FROM "
                   "images i WHERE i.id = photos.image_id AND i.mtime_ns != 0) WHERE image_id = ? "
                   "AND taken_source = 'mtime'", [(int(i),) for i in ids])
    write_mtime_photos(db, ids, replace=False)


def write_mtime_photos(db: sqlite3.Connection, ids: Iterable[int], replace: bool = True) -> None:
    """Rows dated by mtime for ids decoded without metadata (``replace=False`` keeps an existing row)."""
    sql = _FROM_MTIME_SQL.format(conflict="REPLACE" if replace else "IGNORE") + " AND i.id = ?"
    db.executemany(sql, [(int(i),) for i in ids])


def camera_pairs(query: Query, text: str) -> list[tuple[str | None, str | None]]:
    """The distinct (make, model) pairs whose "make model" contains ``text``, ignoring case (full Unicode
    case folding, which SQLite's own ``lower()`` lacks). A library holds a few dozen cameras at most."""
    wanted = text.casefold()
    pairs = query("SELECT DISTINCT make, model FROM photos", ())
    return [(make, model) for make, model in pairs if wanted in f"{make or ''} {model or ''}".casefold()]


def read_photos(query: Query, ids: Sequence[int]) -> dict[int, PhotoMetadata]:
    """Metadata of rows by id (unknown ids absent); a row without a ``photos`` row is dated by its mtime."""
    found: dict[int, PhotoMetadata] = {}
    for start in range(0, len(ids), 500):
        chunk = [int(i) for i in ids[start:start + 500]]
        rows = query(f"SELECT i.id, i.mtime_ns, i.width, i.height, p.image_id, {', '.join('p.' + c for c in _COLUMNS)} "
                     f"FROM images i LEFT JOIN photos p ON p.image_id = i.id "
                     f"WHERE i.id IN ({','.join('?' * len(chunk))})", chunk)
        for image_id, mtime_ns, width, height, has_row, *values in rows:
            if has_row is None:  # imported rows record mtime 0: no time at all rather than 1970
                found[image_id] = photo_metadata(None, mtime_ns=mtime_ns or None, width=width, height=height)
            else:
                found[image_id] = PhotoMetadata(**dict(zip(_COLUMNS, values)), width=width, height=height)
    return found
