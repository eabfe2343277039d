"""The catalog's rows as an ingest plans them: which files are known and how, marking new and changed ones
``pending``, recording skips, and reading the pending rows back a page at a time (a mixin of
:class:`~.catalog.Catalog`)."""

from __future__ import annotations

import collections
import os
import sqlite3
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

from ..json_lines import bytes_escaped
from .migrations import NOT_OK
from .photo_table import redate_from_mtime, write_photos
from .sql_keys import in_lists, key_range

if TYPE_CHECKING:
    from ..images.metadata import PhotoMetadata


@dataclass(frozen=True)
class FileFacts:
    """What an ingest records of a file read without the model (pixel size, format and photo None when its header
    did not open): an imported row's file, adopted (:meth:`PlannedRows.adopt_imported`)."""

    size: int
    mtime_ns: int
    content_hash: str
    width: int | None = None
    height: int | None = None
    format: str | None = None
    photo: "PhotoMetadata | None" = None


@dataclass(frozen=True)
class FileState:
    """What the catalog knows about a path, enough to decide whether to re-embed it."""

    id: int
    size: int
    mtime_ns: int
    status: str
    reason: str | None = None  # why it failed or was skipped
    content_hash: str | None = None  # of the bytes its vector was made from
    message: str | None = None  # the failure's words (a decompression bomb's pixel count)


TWIN_SIZE_CAP = 64  # embedded rows of one size past which the size says nothing of a file (see twins)


@dataclass(frozen=True)
class Twin:
    """An embedded row at another path that may hold a new file's bytes: the same size, and the same file name
    or modification time (see :meth:`PlannedRows.twins`)."""

    path: bytes
    id: int
    mtime_ns: int
    content_hash: str
    width: int | None  # None for an imported row whose file's header did not open (camera RAW)
    height: int | None
    format: str | None


class PlannedRows:
    """Planning reads and writes of a catalog (needs ``transaction``, ``_query``, ``_bump_generation`` and
    ``_not_ok_rows_under``)."""

    if TYPE_CHECKING:  # (declared for type checkers only: a stub here would hide VectorPlaces' method)
        def transaction(self) -> AbstractContextManager[sqlite3.Connection]: ...  # Catalog's
        def _query(self, sql: str, params: Sequence = ()) -> list[tuple]: ...
        def _bump_generation(self) -> int: ...
        def _not_ok_rows_under(self, prefix: bytes,
                               statuses: Sequence[str] = ()) -> Iterator[list[tuple[int, bytes]]]: ...  # VectorPlaces'

    def file_states_of(self, paths: Sequence[bytes]) -> dict[bytes, FileState]:
        """The known ones among ``paths`` and their (id, size, mtime, status, reason, content hash, message)."""
        found: dict[bytes, FileState] = {}
        for chunk, marks in in_lists(paths):
            for row in self._query("SELECT path, id, size, mtime_ns, status, reason, content_hash, message FROM "
                                   f"images WHERE path IN ({marks})", chunk):
                found[row[0]] = FileState(*row[1:])
        return found

    def twins(self, files: dict[bytes, tuple[int, int]]) -> dict[bytes, list[Twin]]:
        """For each of ``files`` (path key -> (size, mtime_ns)) that has some, the embedded rows at other paths of
        the same size and the same file name or time: where a copied folder's files were embedded before (same
        names), or moved and renamed ones (``mv`` and ``cp -p`` keep the time).

        One look-up along the size index (``images_size``) per distinct size, reading at most
        :data:`TWIN_SIZE_CAP` + 1 rows: a size that more embedded rows share (uncompressed RAW, BMP, fixed-size
        scans) says nothing of a file, and its files are left to the decoder's content hash. So the rows read and
        the time taken grow with the new files, never with the rows of one size (a loop over rows x files took
        24 s for 4,000 new files against 20,000 rows of one size).
        """
        by_size: dict[int, list[bytes]] = collections.defaultdict(list)
        for key, (size, _) in files.items():
            by_size[size].append(key)
        found: dict[bytes, list[Twin]] = {}
        for size, keys in by_size.items():
            rows = self._query("SELECT path, id, mtime_ns, content_hash, width, height, format FROM images "
                               "WHERE content_hash IS NOT NULL AND size = ? AND status = 'ok' LIMIT ?",
                               (size, TWIN_SIZE_CAP + 1))
            if not rows or len(rows) > TWIN_SIZE_CAP:
                continue
            by_name: dict[bytes, list[Twin]] = collections.defaultdict(list)
            by_time: dict[int, list[Twin]] = collections.defaultdict(list)
            for row in rows:
                twin = Twin(*row)
                by_name[os.path.basename(twin.path)].append(twin)
                by_time[twin.mtime_ns].append(twin)
            for key in keys:
                candidates = by_name.get(os.path.basename(key), []) + by_time.get(files[key][1], [])
                unique = list({twin.id: twin for twin in candidates if twin.path != key}.values())
                if unique:
                    found[key] = unique
        return found

    def mark_pending(self, entries: Iterable[tuple[bytes, int, int, str | None]]) -> None:
        """Insert or reset rows to ``pending`` for ``(path, size, mtime_ns, caption)``; one transaction.

        A row keeps its vector, content hash and labels until its new vector is committed: only then is it known
        whether the bytes changed (labels go) or the file was only touched (they stay; see
        :meth:`~.places.VectorPlaces.write_results`).
        """
        entries = list(entries)
        with self.transaction() as db:
            # a changed file's capture time and camera come back when it is decoded again
            for paths, marks in in_lists([entry[0] for entry in entries]):
                changed = f"SELECT id FROM images WHERE path IN ({marks})"
                db.execute(f"DELETE FROM photos WHERE image_id IN ({changed})", paths)
            db.executemany(
                "INSERT INTO images(path, size, mtime_ns, status, caption) VALUES (?, ?, ?, 'pending', ?) "
                "ON CONFLICT(path) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns, "
                "status = 'pending', reason = NULL, message = NULL, "
                "caption = COALESCE(excluded.caption, images.caption)",
                entries,
            )

    def mark_touched(self, entries: Sequence[tuple[bytes, int]]) -> None:
        """Record the new mtimes of ``(path, mtime_ns)`` whose bytes are unchanged (a copy without ``-p``, a sync,
        a restore), in one transaction: vector, labels and photo metadata stay; a capture time taken from the mtime
        (a file without an EXIF date) moves with it."""
        with self.transaction() as db:
            db.executemany("UPDATE images SET mtime_ns = ? WHERE path = ?", [(mtime, path) for path, mtime in entries])
            ids = []
            for paths, marks in in_lists([path for path, _ in entries]):
                ids += [row[0] for row in db.execute(f"SELECT id FROM images WHERE path IN ({marks})", paths)]
            redate_from_mtime(db, ids)

    def adopt_imported(self, entries: Sequence[tuple[bytes, FileFacts]]) -> None:
        """Record what is now known of imported rows' files, ``(path, facts)``, keeping their vectors, labels and
        the label sets' record of having scored them; one transaction. A row without a photo is dated by its mtime."""
        with self.transaction() as db:
            ids: dict[bytes, int] = {}
            for paths, marks in in_lists([path for path, _ in entries]):
                ids.update(db.execute(f"SELECT path, id FROM images WHERE path IN ({marks})", paths).fetchall())
            scored = []
            for chunk, marks in in_lists(list(ids.values())):
                scored += db.execute(f"SELECT label_set, image_id FROM label_scored WHERE image_id IN ({marks})",
                                     chunk).fetchall()
            db.executemany(  # a new content hash drops label_scored rows (a trigger): put back below
                "UPDATE images SET size = ?, mtime_ns = ?, content_hash = ?, width = COALESCE(?, width), "
                "height = COALESCE(?, height), format = COALESCE(?, format) WHERE path = ? AND status = 'ok'",
                [(facts.size, facts.mtime_ns, facts.content_hash, facts.width, facts.height, facts.format, path)
                 for path, facts in entries])
            db.executemany("INSERT OR IGNORE INTO label_scored(label_set, image_id) VALUES (?, ?)", scored)
            write_photos(db, [(ids[path], facts.photo) for path, facts in entries
                              if facts.photo is not None and path in ids])

    def mark_skipped(self, entries: Sequence[tuple[bytes, str, str]], cleared: Sequence[bytes] = (),
                     new_missing: bool = True) -> None:
        """Record ``(path, reason, message)`` for things that were never opened (FIFOs, link loops, folders that
        could not be listed), and delete the skipped rows of the ``cleared`` paths (their cause is gone: a folder
        that lists now); one transaction.

        An embedded file that a list names and that is ``missing`` now (a drive not mounted, a share down) keeps
        its row, vector and labels: it was only out of reach this time, and ``--prune`` is what removes the gone.
        Without ``new_missing`` (a prune is about to run), a ``missing`` path that has no row gets none: the prune
        would delete it at once, and count it as pruned on every run.
        """
        upsert = ("INSERT INTO images(path, size, mtime_ns, status, reason, message) VALUES (?, 0, 0, 'skipped', ?, ?) "
                  "ON CONFLICT(path) DO UPDATE SET status = 'skipped', reason = excluded.reason, "
                  "message = excluded.message, content_hash = NULL "
                  "WHERE images.status != 'ok' OR excluded.reason != 'missing'")
        update = ("UPDATE images SET status = 'skipped', reason = ?, message = ?, content_hash = NULL "
                  "WHERE path = ? AND status != 'ok'")
        inserted = [entry for entry in entries if new_missing or entry[1] != "missing"]
        updated = [entry for entry in entries if not new_missing and entry[1] == "missing"]
        with self.transaction() as db:
            db.executemany(upsert, [(path, reason, bytes_escaped(message)) for path, reason, message in inserted])
            db.executemany(update, [(reason, bytes_escaped(message), path) for path, reason, message in updated])
            # a skipped row holds no vector (see below), so removing one leaves the generation as it is
            db.executemany("DELETE FROM images WHERE path = ? AND status = 'skipped'", [(path,) for path in cleared])
            skipped = f"SELECT id FROM images WHERE {NOT_OK} AND status = 'skipped'"
            dropped = db.execute(f"DELETE FROM vector_rows WHERE image_id IN ({skipped})").rowcount
            db.execute(f"DELETE FROM labels WHERE image_id IN ({skipped})")
            db.execute(f"DELETE FROM photos WHERE image_id IN ({skipped})")
            if dropped:
                self._bump_generation()

    def skipped_under(self, folder: bytes) -> Iterator[bytes]:
        """Path keys of the skipped rows that are ``folder`` (a key, no trailing separator) or lie under it, read a
        page at a time along the status index (skipped rows are few; ``ok`` ones are never read)."""
        inside = folder + os.sep.encode()
        for page in self._not_ok_rows_under(folder, statuses=("skipped",)):
            yield from (path for _, path in page if path == folder or path.startswith(inside))

    def pending(self) -> list[tuple[int, str]]:
        """``(id, path)`` of every row still to embed, oldest first (including rows a killed run left)."""
        return list(self.iter_pending())

    def iter_pending(self) -> Iterator[tuple[int, str]]:
        """:meth:`pending` a page at a time (the ingest's feed: never every path in memory)."""
        return ((id_, os.fsdecode(path)) for id_, path, _, _ in self.pending_files())

    def pending_files(self) -> Iterator[tuple[int, bytes, int, int]]:
        """``(id, path key, size, mtime_ns)`` of the rows still to embed, a page at a time."""
        after = -1
        while rows := self._query(f"SELECT id, path, size, mtime_ns FROM images WHERE {NOT_OK} AND status = 'pending' "
                                  "AND id > ? ORDER BY id LIMIT 10000", (after,)):
            yield from rows
            after = rows[-1][0]

    def pending_among(self, ids: Sequence[int]) -> dict[int, tuple[bytes, int, int]]:
        """``id -> (path key, size, mtime_ns)`` of those of ``ids`` that are still pending."""
        found: dict[int, tuple[bytes, int, int]] = {}
        for chunk, marks in in_lists(ids):
            for image_id, path, size, mtime_ns in self._query(
                    f"SELECT id, path, size, mtime_ns FROM images WHERE status = 'pending' AND id IN ({marks})", chunk):
                found[image_id] = (path, size, mtime_ns)
        return found

    def holds_rows_under(self, folder: bytes) -> bool:
        """Whether any row's path lies under ``folder`` (a path key ending in a separator)."""
        return bool(self._query("SELECT 1 FROM images WHERE path >= ? AND path < ? LIMIT 1", key_range(folder)))

    def record_mount_points(self, folders: Sequence[bytes], seen_ns: int) -> None:
        """Note ``folders`` (keys ending in a separator) as mount points found mounted at ``seen_ns``."""
        with self.transaction() as db:
            db.executemany("INSERT OR REPLACE INTO mount_points(path, seen_ns) VALUES (?, ?)",
                           [(folder, seen_ns) for folder in folders])

    def mount_points_under(self, folder: bytes) -> list[bytes]:
        """The noted mount points at or under ``folder`` (a key ending in a separator), in path order; none in a
        catalog older than the table that is read without being opened for writing (which adds it)."""
        if not self._query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'mount_points'"):
            return []
        return [row[0] for row in self._query("SELECT path FROM mount_points WHERE path >= ? AND path < ? "
                                              "ORDER BY path", key_range(folder))]

    def forget_mount_points(self, folders: Sequence[bytes]) -> None:
        with self.transaction() as db:
            db.executemany("DELETE FROM mount_points WHERE path = ?", [(folder,) for folder in folders])

    def is_empty(self) -> bool:
        """Whether no image row was ever planned or stored (one indexed row read, at any size)."""
        return not self._query("SELECT 1 FROM images LIMIT 1")

    def pending_count(self) -> int:
        return int(self._query(f"SELECT COUNT(*) FROM images WHERE {NOT_OK} AND status = 'pending'")[0][0])

    def set_caption(self, path: bytes, caption: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE images SET caption = ? WHERE path = ?", (caption, path))
