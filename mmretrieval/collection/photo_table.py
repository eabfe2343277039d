"""The catalog's ``photos`` table: capture time, camera, GPS position and orientation per embedded file.

Rows are written with the vectors, in the same transaction (``write_results`` and ``commit_segment`` of
:class:`~mmretrieval.collection.places.VectorPlaces`), and leave with their image (``ON DELETE CASCADE``). The
table is part of the catalog's schema (:data:`~mmretrieval.collection.migrations.SCHEMA`); it needs no data
moved, so collections made before it existed get it, empty, when first opened (as the migrations module
provides for new tables), and their images fall back to the file's modification time (``images.mtime_ns``)
for date filters and output until they are re-ingested.
"""

from __future__ import annotations

import sqlite3
from typing import Callable, Sequence

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
"""
# A row without a ``photos`` row (an older collection) is dated by its file's modification time, as at ingest.
TAKEN_LOCAL_SQL = ("COALESCE(p.taken_local, strftime('%Y-%m-%dT%H:%M:%S', i.mtime_ns / 1000000000, "
                   "'unixepoch', 'localtime'))")
TAKEN_UTC_SQL = "COALESCE(p.taken_utc_s, i.mtime_ns / 1e9)"
CAMERA_SQL = "casefold(COALESCE(p.make, '') || ' ' || COALESCE(p.model, ''))"
FROM_EMBEDDED_SQL = ("FROM vector_rows v JOIN images i ON i.id = v.image_id "
                     "LEFT JOIN photos p ON p.image_id = v.image_id")
_COLUMNS = ("taken_local", "taken_utc_s", "utc_offset_min", "taken_source", "make", "model", "latitude",
            "longitude", "orientation")

Query = Callable[[str, Sequence], list[tuple]]


def register_sql_functions(db: sqlite3.Connection) -> None:
    """Register ``casefold()`` on a connection: SQLite's ``lower()`` folds ASCII only."""
    db.create_function("casefold", 1, lambda text: text.casefold() if isinstance(text, str) else text,
                       deterministic=True)


def write_photos(db: sqlite3.Connection, rows: Sequence[tuple[int, PhotoMetadata]]) -> None:
    """Insert or replace the metadata of ``(image_id, metadata)`` rows, inside the caller's transaction."""
    db.executemany(
        f"INSERT OR REPLACE INTO photos(image_id, {', '.join(_COLUMNS)}) VALUES (?{', ?' * len(_COLUMNS)})",
        [(image_id, *(getattr(meta, column) for column in _COLUMNS)) for image_id, meta in rows])


def read_photos(query: Query, ids: Sequence[int]) -> dict[int, PhotoMetadata]:
    """Metadata of rows by id (unknown ids absent); rows ingested before the table existed get their mtime."""
    found: dict[int, PhotoMetadata] = {}
    for start in range(0, len(ids), 500):
        chunk = [int(i) for i in ids[start:start + 500]]
        rows = query(f"SELECT i.id, i.mtime_ns, i.width, i.height, p.image_id, {', '.join('p.' + c for c in _COLUMNS)} "
                     f"FROM images i LEFT JOIN photos p ON p.image_id = i.id "
                     f"WHERE i.id IN ({','.join('?' * len(chunk))})", chunk)
        for image_id, mtime_ns, width, height, has_row, *values in rows:
            if has_row is None:
                found[image_id] = photo_metadata(None, mtime_ns=mtime_ns, width=width, height=height)
            else:
                found[image_id] = PhotoMetadata(**dict(zip(_COLUMNS, values)), width=width, height=height)
    return found

