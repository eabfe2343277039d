"""Label sets: each labelling run writes a named set, kept apart from the others and replaced only on request.

Storage (in the catalog; schema in :mod:`.migrations`, version 3): ``labels`` rows carry their ``label_set``;
``label_sets`` describes each run (its labels, mode, threshold, when); ``label_scored`` names every image the run
scored, labelled or not (a multi-label run may give an image no label), so that an export lists exactly those. A
run streams its assignments, chunk by chunk, into ``labels_staging`` (and the ids it scored into a temporary table
of its connection) and moves them into ``labels`` and ``label_scored`` in one transaction at the end, so memory
stays bounded by one chunk and a run that dies half-way leaves the set as it was.

What a set scored is kept as true as its labels: a pruned image goes with its row, and one whose bytes changed, or
that failed or was skipped since, counts as scored by no set (triggers in :mod:`.migrations`, which also clear
what a set scored when an mmretrieval that predates ``label_scored`` rewrites or removes the set). A set made
before ``label_scored`` existed names no scored image: :func:`scored_ids` says so with None.

Names: labels of the set called ``default`` read as plain ``LABEL``; labels of any other set read as
``SET:LABEL``. A filter may name ``SET:LABEL`` or just ``LABEL`` (that label in any set).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np
import numpy.typing as npt

from ..errors import CollectionError, QueryError
from ..models.label_text import check_utf8
from .sql_keys import in_lists

if TYPE_CHECKING:
    from .catalog import Catalog

DEFAULT_SET = "default"
_SCORED_STAGING = "temp.label_scored_staging"  # a run's scored ids until it commits (its connection's own)
_NAME = re.compile(r"^[^:\s.][^:]{0,63}$")


@dataclass(frozen=True)
class LabelSet:
    """One labelling run as stored."""

    name: str  # the set's name ("default" unless the run named one)
    labels: tuple[str, ...]  # the labels the run scored, in the order given
    multi_label: bool
    threshold: float | None  # multi-label cutoff; None for single-label
    created_s: float  # Unix time of the run
    counts: dict[str, int]  # label -> images assigned it


def qualified(label_set: str, label: str) -> str:
    """How a label of ``label_set`` reads in results and filters."""
    return label if label_set == DEFAULT_SET else f"{label_set}:{label}"


def check_name(name: str) -> str:
    """``name`` stripped, if it can name a label set.

    Raises:
        CollectionError: empty, too long, has a colon, starts with a dot or a space, or is not UTF-8 text.
    """
    name = check_utf8((name or "").strip(), "label set name", CollectionError)
    if not _NAME.match(name):
        raise CollectionError(f"a label set cannot be named {name!r}: use 1 to 64 characters, no ':', not "
                              "starting with '.' (for example animals)")
    return name


def check_known(catalog: "Catalog", name: str | None) -> str | None:
    """``name`` if a stored set has it (None, meaning every set, passes too).

    Raises:
        QueryError: no set of that name (the message names the stored ones), or a name that is not UTF-8 text.
    """
    if name is not None:
        check_utf8(name, "label set name")
    if name is None or catalog.select("SELECT 1 FROM label_sets WHERE name = ?", (name,)):
        return name
    known = ", ".join(row[0] for row in catalog.select("SELECT name FROM label_sets ORDER BY name"))
    raise QueryError(f"no label set {name!r} in this collection; label sets: "
                     f"{known or 'none yet; label the collection first (mmr label, or the web UI’s Label tab)'}")


def sets(catalog: "Catalog") -> list[LabelSet]:
    """Every stored label set, oldest first."""
    counts: dict[str, dict[str, int]] = {}
    for name, label, count in catalog.select(
            "SELECT label_set, label, COUNT(*) FROM labels GROUP BY label_set, label"):
        counts.setdefault(name, {})[label] = count
    found = []
    for name, labels, multi, threshold, created in catalog.select(
            "SELECT name, labels, multi_label, threshold, created_s FROM label_sets ORDER BY created_s, name"):
        ordered = tuple(json.loads(labels))
        found.append(LabelSet(name, ordered, bool(multi), threshold, created,
                              {label: counts.get(name, {}).get(label, 0) for label in ordered}))
    return found


def vocabulary_sizes(catalog: "Catalog") -> dict[str, int]:
    """Every stored label set, oldest first, with the number of labels it was run with (a set that gave no image a
    label included: it shows nowhere in the labels' counts)."""
    return {name: len(json.loads(labels)) for name, labels in catalog.select(
        "SELECT name, labels FROM label_sets ORDER BY created_s, name")}


def resolve(catalog: "Catalog", ref: str) -> tuple[str | None, str]:
    """``(set, label)`` that a filter ``ref`` names: ``SET:LABEL`` for a stored set, else ``LABEL`` in any set.

    Raises:
        QueryError: ``ref`` is not UTF-8 text (no label is, :func:`~mmretrieval.models.label_text.check_utf8`).
    """
    head, sep, tail = check_utf8(ref, "label filter").partition(":")
    if sep and catalog.select("SELECT 1 FROM label_sets WHERE name = ?", (head,)):
        return head, tail
    return None, ref


def declared_labels(catalog: "Catalog") -> list[str]:
    """Every label a stored set was run with, qualified as filters name them, whether or not an image got it."""
    return [qualified(found.name, label) for found in sets(catalog) for label in found.labels]


def is_declared(catalog: "Catalog", ref: str) -> bool:
    """Whether filter ``ref`` names a label some stored set was run with (a multi-label set may give it to none)."""
    label_set, label = resolve(catalog, ref)
    return any(label in found.labels for found in sets(catalog) if label_set in (None, found.name))


def ids_with_label(catalog: "Catalog", ref: str) -> npt.NDArray[np.int64]:
    """Ids assigned label ``ref`` (``SET:LABEL`` or ``LABEL`` in any set).

    Raises:
        QueryError: ``ref`` is not UTF-8 text.
    """
    label_set, label = resolve(catalog, ref)
    if label_set is None:
        rows = catalog.select("SELECT DISTINCT image_id FROM labels WHERE label = ? ORDER BY image_id", (label,))
    else:
        rows = catalog.select("SELECT image_id FROM labels WHERE label_set = ? AND label = ? ORDER BY image_id",
                              (label_set, label))
    return np.array([r[0] for r in rows], dtype=np.int64)


def has_label(catalog: "Catalog", ref: str) -> bool:
    """Whether some image is assigned label ``ref`` (one indexed row read, at any size)."""
    label_set, label = resolve(catalog, ref)
    only, params = ("", [label]) if label_set is None else (" AND label_set = ?", [label, label_set])
    return bool(catalog.select(f"SELECT EXISTS(SELECT 1 FROM labels WHERE label = ?{only})", params)[0][0])


def probabilities_of_label(catalog: "Catalog", ref: str) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Ids assigned label ``ref`` (as :func:`ids_with_label`) and each one's probability of it (the highest, when
    several sets gave it), by id: read from one cursor a page at a time into arrays (16 bytes a labelled
    image, and as much again while they are sorted)."""
    label_set, label = resolve(catalog, ref)
    only, params = ("", [label]) if label_set is None else (" AND label_set = ?", [label, label_set])
    rows = catalog.select_array(f"SELECT image_id, probability FROM labels WHERE label = ?{only}", params)
    found, probability = rows[:, 0].astype(np.int64), rows[:, 1]
    order = np.lexsort((-probability, found))  # by id, the highest first
    first = np.unique(found[order], return_index=True)[1]
    return found[order][first], probability[order][first]


def counts(catalog: "Catalog") -> dict[str, int]:
    """Images per qualified label, over every set."""
    rows = catalog.select("SELECT label_set, label, COUNT(*) FROM labels GROUP BY label_set, label")
    return dict(sorted((qualified(name, label), count) for name, label, count in rows))


def labels_of(catalog: "Catalog", ids: Sequence[int],
              label_set: str | None = None) -> dict[int, tuple[tuple[str, float], ...]]:
    """Assigned ``(label, probability)`` pairs per id, best first: of every set, qualified (``SET:LABEL``
    outside the default set), or of ``label_set`` alone, by the labels' own names."""
    only, extra = ("", []) if label_set is None else ("label_set = ? AND ", [label_set])
    found: dict[int, list[tuple[str, float]]] = {}
    for chunk, marks in in_lists(ids):
        for image_id, name, label, probability in catalog.select(
                "SELECT image_id, label_set, label, probability FROM labels "
                f"WHERE {only}image_id IN ({marks}) ORDER BY probability DESC", [*extra, *chunk]):
            found.setdefault(image_id, []).append((label if label_set else qualified(name, label), probability))
    return {image_id: tuple(pairs) for image_id, pairs in found.items()}


class LabelSetWriter:
    """Streams one run's assignments into the catalog; :meth:`commit` makes them the set, atomically."""

    def __init__(self, catalog: "Catalog", name: str, labels: Sequence[str], *, multi_label: bool,
                 threshold: float | None, replace: bool):
        """Start writing set ``name``; the caller holds the collection's writer lock, so no other run is labelling.

        Raises:
            CollectionError: a bad name, or a set of that name exists and ``replace`` is False.
        """
        self._catalog, self.name = catalog, check_name(name)
        self._labels, self._multi_label, self._threshold = tuple(labels), multi_label, threshold
        if not replace and catalog.select("SELECT 1 FROM label_sets WHERE name = ?", (self.name,)):
            raise CollectionError(f"label set {self.name!r} exists already; replace it on purpose (--replace, or "
                                  "tick “replace” in the UI) or name a new set (--set NAME)")
        with catalog.transaction() as db:  # what runs that died half-way left behind, whatever set they wrote
            db.execute("DELETE FROM labels_staging")
            # The ids scored so far live with this connection: a run that dies takes them with it, and one that
            # raised left them for this DELETE.
            db.execute(f"CREATE TEMP TABLE IF NOT EXISTS {_SCORED_STAGING} (image_id INTEGER PRIMARY KEY)")
            db.execute(f"DELETE FROM {_SCORED_STAGING}")

    def add(self, assignments: Iterable[tuple[int, str, float]]) -> None:
        """Stage one chunk of ``(image_id, label, probability)`` rows."""
        with self._catalog.transaction() as db:
            db.executemany("INSERT INTO labels_staging(label_set, image_id, label, probability) VALUES (?, ?, ?, ?)",
                           ((self.name, int(i), label, float(p)) for i, label, p in assignments))

    def add_scored(self, ids: Iterable[int]) -> None:
        """Stage the ids of one chunk's scored images, labelled or not (a temporary table: no write to the
        catalog's file, so no sync)."""
        with self._catalog.transaction() as db:
            db.executemany(f"INSERT OR IGNORE INTO {_SCORED_STAGING}(image_id) VALUES (?)", ((int(i),) for i in ids))

    def commit(self) -> None:
        """Replace the set's stored labels, and the record of what it scored, with the staged ones, in one
        transaction."""
        with self._catalog.transaction() as db:
            db.execute("DELETE FROM labels WHERE label_set = ?", (self.name,))
            # Only images still in the catalog: a file pruned during the run must not come back as a label.
            db.execute("INSERT OR REPLACE INTO labels(label_set, image_id, label, probability) "
                       "SELECT s.label_set, s.image_id, s.label, s.probability FROM labels_staging s "
                       "JOIN images i ON i.id = s.image_id WHERE s.label_set = ?", (self.name,))
            db.execute("DELETE FROM labels_staging WHERE label_set = ?", (self.name,))
            db.execute("INSERT OR REPLACE INTO label_sets(name, labels, multi_label, threshold, created_s) "
                       "VALUES (?, ?, ?, ?, ?)", (self.name, json.dumps(list(self._labels)), int(self._multi_label),
                                                  self._threshold, time.time()))
            # After label_sets: writing the set's row clears what it scored before (a trigger, see .migrations).
            db.execute("DELETE FROM label_scored WHERE label_set = ?", (self.name,))
            db.execute(f"INSERT INTO label_scored(label_set, image_id) SELECT ?, s.image_id FROM {_SCORED_STAGING} s "
                       "JOIN images i ON i.id = s.image_id", (self.name,))
            db.execute(f"DELETE FROM {_SCORED_STAGING}")


def delete(catalog: "Catalog", name: str) -> int:
    """Remove label set ``name`` and the record of what it scored; returns the assignments removed (0 for an
    unknown set)."""
    with catalog.transaction() as db:
        removed = db.execute("DELETE FROM labels WHERE label_set = ?", (name,)).rowcount
        db.execute("DELETE FROM label_scored WHERE label_set = ?", (name,))
        db.execute("DELETE FROM label_sets WHERE name = ?", (name,))
    return removed


def scored_ids(catalog: "Catalog", label_set: str | None) -> npt.NDArray[np.int64] | None:
    """Ids, sorted, of the embedded images that ``label_set`` (None: any stored set) scored, labelled or not; None
    when that is not recorded: a set made before ``label_scored`` existed (None: any such set among the stored
    ones), or a catalog of that time opened read-only (the table cannot be added there).

    An image labelled in the set counts even without a ``label_scored`` row (sets scored by mmretrieval before a
    moved file took its old row's record as well as its labels:
    :func:`~.label_moves.take_labels_of_moved_files`).
    """
    if not catalog.select("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'label_scored'"):
        return None
    unrecorded = ("SELECT 1 FROM label_sets s WHERE NOT EXISTS "
                  "(SELECT 1 FROM label_scored r WHERE r.label_set = s.name)")
    if label_set is None:
        if catalog.select(unrecorded + " LIMIT 1"):
            return None
        scored, params = "SELECT image_id FROM label_scored UNION SELECT image_id FROM labels", ()
    else:
        if catalog.select(unrecorded + " AND s.name = ?", (label_set,)):
            return None
        scored = ("SELECT image_id FROM label_scored WHERE label_set = ? "
                  "UNION SELECT image_id FROM labels WHERE label_set = ?")
        params = (label_set, label_set)
    return catalog.select_ids(f"SELECT s.image_id FROM ({scored}) s JOIN vector_rows v ON v.image_id = s.image_id "
                              "ORDER BY s.image_id", params)
