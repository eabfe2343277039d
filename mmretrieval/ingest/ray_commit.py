"""The driver's half of a Ray ingestion: commit finished results into the catalog, idempotently.

Ray executes at least once: a retried task or a restarted actor can write the same rows into two results,
and a driver killed between committing a result and deleting it finds it again on the next run. So a row
of a result is committed only while its catalog row is still ``pending`` with the same path, size and
mtime it was planned with; once committed it is no longer pending, and any later copy of it is a no-op.
A row planned again because its file changed carries the new size or mtime, so a result computed from
the old bytes is dropped rather than attached to the new ones.

A result whose rows all still belong is committed whole with ``Catalog.commit_segment`` (its segment is
hard-linked into the collection, not copied; idempotent by the segment's sha256). A result with some rows
that no longer belong is committed row by row through ``Catalog.write_results`` instead. Duplicates of
content already in the catalog are counted as the single-machine runner counts them, so both paths report
the same numbers.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass, field

import numpy as np

from ..collection.catalog import Catalog
from ..collection.places import FailureWrite, RowMetadata, VectorWrite
from ..images.metadata import PhotoMetadata
from .batches import IngestSummary
from .ray_segments import Result

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlannedRow:
    """A pending catalog row as the planner left it: what a result row must match to be committed."""

    path: bytes
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class CommitCounts:
    """What committing one result did."""

    rows: int = 0  # rows committed (embedded, duplicate or failed)
    embedded: int = 0  # distinct new contents
    duplicates: int = 0  # rows whose bytes were already embedded (in the catalog or earlier in this result)
    failed: dict[str, int] = field(default_factory=dict)  # reason -> rows
    stale: int = 0  # rows dropped: already committed, or planned again since


class ResultCommitter:
    """Commits results into one catalog, each row only while its catalog row is pending as planned."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog

    def commit(self, result: Result) -> CommitCounts:
        """Commit the rows of ``result`` that still belong to a pending row (one transaction)."""
        rows = result.rows
        take = self._belonging(result)
        ok = [row for row in take if rows.ok[row]]
        failures = [FailureWrite(int(rows.image_ids[row]), rows.reasons[row], rows.messages[row])
                    for row in take if not rows.ok[row]]
        hashes = [rows.content_hashes[row] for row in ok]
        known = self.catalog.vectors_by_hash(hashes)
        new_hashes = list(dict.fromkeys(h for h in hashes if h not in known))
        if len(take) == len(rows) and ok:
            metadata = [RowMetadata(int(rows.image_ids[row]), rows.content_hashes[row], int(rows.widths[row]),
                                    int(rows.heights[row]), rows.formats[row], PhotoMetadata.from_json(rows.photos[row]))
                        for row in ok]
            done = self.catalog.commit_segment(result.segment, metadata, failures, source=f"ray:{result.name}")
            whole = not done.already_committed  # the same bytes committed before (a file touched, not changed)
        else:
            whole = False
        if not whole and take:
            vectors = _vectors_of(result, ok)
            self.catalog.write_results([VectorWrite(int(rows.image_ids[row]), rows.content_hashes[row],
                                                    int(rows.widths[row]), int(rows.heights[row]), rows.formats[row],
                                                    vectors[row], PhotoMetadata.from_json(rows.photos[row]))
                                        for row in ok], failures)
        return CommitCounts(rows=len(take), embedded=len(new_hashes), duplicates=len(ok) - len(new_hashes),
                            failed=dict(collections.Counter(f.reason for f in failures)),
                            stale=len(rows) - len(take))

    def _belonging(self, result: Result) -> list[int]:
        """Rows of ``result`` whose catalog row is pending as planned (the first copy of an id wins)."""
        rows = result.rows
        pending = self.catalog.pending_among(rows.image_ids.tolist())  # a query per result: no to-do list in RAM
        take: dict[int, int] = {}
        for row, image_id in enumerate(rows.image_ids.tolist()):
            planned = pending.get(image_id)
            if planned is not None and image_id not in take and PlannedRow(*planned) == PlannedRow(
                    rows.paths[row], int(rows.sizes[row]), int(rows.mtimes_ns[row])):
                take[image_id] = row
        return sorted(take.values())


def _vectors_of(result: Result, ok_rows: list[int]) -> dict[int, np.ndarray]:
    """float32 vectors of the given result rows, read from its sealed segment (ok rows are stored in order)."""
    segment = result.segment
    stored = np.fromfile(segment.vec_path, dtype=np.dtype(segment.dtype).newbyteorder("<"))
    stored = stored.reshape(segment.count, segment.dim).astype(np.float32)
    position = np.cumsum(result.rows.ok) - 1  # a result row's place among the stored (ok) rows
    return {row: stored[position[row]] for row in ok_rows}


class Tally:
    """Adds up commits into the :class:`IngestSummary` the single-machine runner would report."""

    def __init__(self, skipped: dict[str, int]):
        self.skipped = skipped  # skips by reason (:func:`~.batches.skip_counts`)
        self.counts: collections.Counter[str] = collections.Counter()
        self.embedded = 0
        self.duplicates = 0
        self.rows = 0

    def add(self, counts: CommitCounts) -> None:
        self.embedded += counts.embedded
        self.duplicates += counts.duplicates
        self.rows += counts.rows
        self.counts.update(counts.failed)

    def summary(self, unchanged: int, pruned: int) -> IngestSummary:
        return IngestSummary(embedded=self.embedded, unchanged=unchanged, duplicates=self.duplicates,
                             failed=dict(sorted(self.counts.items())), pruned=pruned, skipped=self.skipped)
