"""Labels follow content: a row whose bytes changed loses its labels, and a row that gets bytes a labelled row had
(the same picture moved, renamed, or two names swapped) takes that row's labels. Called by the catalog's vector
writes (:mod:`.places`), inside their transaction.
"""

from __future__ import annotations

import sqlite3
from typing import Sequence

from .pruning import vanished
from .sql_keys import in_lists


# Labels (and records of having been scored) that rows lost as their bytes changed, by the hash of those bytes,
# for one ingest (Catalog.forget_dropped_labels at its start): a file that gets those bytes later in the run (two
# names swapped, a renumbering) takes them back (take_labels_of_moved_files). TEMP: on this connection only, never
# in the catalog file, made when a catalog opens for writing; a few rows per changed labelled file.
DROPPED_TABLES = (
    "CREATE TEMP TABLE IF NOT EXISTS dropped_labels (content_hash TEXT NOT NULL, label_set TEXT NOT NULL, "
    "label TEXT NOT NULL, probability REAL NOT NULL, PRIMARY KEY (content_hash, label_set, label))",
    "CREATE TEMP TABLE IF NOT EXISTS dropped_scored (content_hash TEXT NOT NULL, label_set TEXT NOT NULL, "
    "PRIMARY KEY (content_hash, label_set))",
)


def drop_labels_of_new_content(db: sqlite3.Connection, vectors: Sequence[tuple[int, str | None]]) -> None:
    """Before ``(image id, content hash)`` rows get their new vector: drop the labels, in every set, of those whose
    bytes changed or are unknown (``None``). A label describes content: a file only touched (same hash, same
    vector) keeps its labels, a file whose bytes changed gets them back from the next ``mmr label``, or at once
    when the bytes it had are met again (their labels are kept aside: ``dropped_labels``)."""
    labelled: set[int] = set()  # one look per batch: most rows (new files) have no labels to set aside
    for chunk, marks in in_lists([image_id for image_id, _ in vectors]):
        labelled.update(row[0] for row in db.execute(
            f"SELECT image_id FROM labels WHERE image_id IN ({marks}) UNION "
            f"SELECT image_id FROM label_scored WHERE image_id IN ({marks})", chunk + chunk))
    aside = [(image_id, content_hash) for image_id, content_hash in vectors if image_id in labelled]
    changed = "i.id = ? AND i.content_hash IS NOT NULL AND i.content_hash IS NOT ?"  # bytes known, now others
    db.executemany("INSERT OR REPLACE INTO temp.dropped_labels SELECT i.content_hash, l.label_set, l.label, "
                   f"l.probability FROM labels l JOIN images i ON i.id = l.image_id WHERE {changed}", aside)
    db.executemany("INSERT OR IGNORE INTO temp.dropped_scored SELECT i.content_hash, s.label_set "
                   f"FROM label_scored s JOIN images i ON i.id = s.image_id WHERE {changed}", aside)
    db.executemany("DELETE FROM labels WHERE image_id = ? AND NOT EXISTS "
                   "(SELECT 1 FROM images WHERE id = ? AND content_hash = ?)",
                   [(image_id, image_id, content_hash) for image_id, content_hash in vectors])


def take_labels_of_moved_files(db: sqlite3.Connection, rows: Sequence[tuple[int, str | None]]) -> None:
    """After ``(image id, content hash)`` rows got their new hash: give each, in every label set where it has no
    labels, what a labelled or scored row with the same bytes had there (its labels, and its record of having been
    scored, with no label or some): the same picture moved or renamed. That row is one whose file is gone (a prune
    removes it later in the run), else one whose file changed and is to be embedded again (``pending``: two names
    swapped, a renumbering), else the bytes' labels kept aside when their row changed earlier (``dropped_labels``).
    Labels are scored from the vector alone and the same bytes have the same vector, so they are as true here. A
    copy whose original is still there, unchanged, takes none: the set was scored over the images its filter chose
    then (``--prefix``...), and the copy was not among them.

    An index lookup by content hash per row; a file is looked at only when a labelled or scored row has the same
    bytes.
    """
    aside = bool(db.execute("SELECT 1 FROM temp.dropped_labels UNION ALL SELECT 1 FROM temp.dropped_scored "
                            "LIMIT 1").fetchone())  # nearly always none: one look per batch, not two per row
    unlabelled_here = "label_set NOT IN (SELECT label_set FROM labels WHERE image_id = ?)"
    for image_id, content_hash in rows:
        if content_hash is None:
            continue
        candidates = db.execute(
            "SELECT i.id, i.path, i.status FROM images i WHERE i.content_hash = ? AND i.id != ? AND "
            "(EXISTS (SELECT 1 FROM labels l WHERE l.image_id = i.id) "
            "OR EXISTS (SELECT 1 FROM label_scored s WHERE s.image_id = i.id))", (content_hash, image_id)).fetchall()
        moved = next((other for other, path, status in candidates if vanished(path, status)), None)
        if moved is None:
            moved = next((other for other, _, status in candidates if status == "pending"), None)
        if moved is not None:
            db.execute(f"INSERT OR IGNORE INTO label_scored(label_set, image_id) SELECT label_set, ? FROM "
                       f"label_scored WHERE image_id = ? AND {unlabelled_here}", (image_id, moved, image_id))
            db.execute(f"INSERT OR IGNORE INTO labels(label_set, image_id, label, probability) "
                       f"SELECT label_set, ?, label, probability FROM labels WHERE image_id = ? AND {unlabelled_here}",
                       (image_id, moved, image_id))
        elif aside and not candidates:  # no row holds these bytes now: those that did may have left labels aside
            db.execute(f"INSERT OR IGNORE INTO label_scored(label_set, image_id) SELECT label_set, ? FROM "
                       f"temp.dropped_scored WHERE content_hash = ? AND {unlabelled_here} AND label_set IN "
                       "(SELECT name FROM label_sets)", (image_id, content_hash, image_id))
            db.execute(f"INSERT OR IGNORE INTO labels(label_set, image_id, label, probability) SELECT label_set, ?, "
                       f"label, probability FROM temp.dropped_labels WHERE content_hash = ? AND {unlabelled_here} "
                       "AND label_set IN (SELECT name FROM label_sets)", (image_id, content_hash, image_id))
