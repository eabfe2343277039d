"""The driver's half of a Ray ingestion: commit finished segments into the catalog, idempotently.

Ray executes at least once: a retried task or a restarted actor can write the same rows into two segments,
and a driver killed between committing a segment and deleting it finds it again on the next run. So a row
of a segment is committed only while its catalog row is still ``pending`` with the same path, size and
mtime it was planned with; once committed it is no longer pending, and any later copy of it is a no-op.
A row planned again because its file changed carries the new size or mtime, so a result computed from
the old bytes is dropped rather than attached to the new ones.

Vectors are reused by content hash exactly as the single-machine writer does (bytes already embedded
elsewhere in the catalog count as duplicates and get the stored vector), so both paths give the same
counts and the same vectors.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass, field

import numpy as np

from ..collection.catalog import Catalog
from .batches import Decoded, EmbeddedBatch, Failed, IngestSummary, Skipped
from .ray_segments import SegmentRows
from .writer import CatalogWriter

logger = logging.getLogger(__name__)

_NO_PIXELS = np.zeros((0,), dtype=np.uint8)  # committed rows need no pixels


@dataclass(frozen=True)
class PlannedRow:
    """A pending catalog row as the planner left it: what a segment row must match to be committed."""

    path: bytes
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class CommitCounts:
    """What committing one segment did."""

    rows: int = 0  # rows committed (embedded, duplicate or failed)
    embedded: int = 0  # distinct new contents
    duplicates: int = 0  # rows whose bytes were already embedded (in the catalog or earlier in this segment)
    failed: dict[str, int] = field(default_factory=dict)  # reason -> rows
    stale: int = 0  # rows dropped: already committed, or planned again since


def pending_rows(catalog: Catalog) -> dict[int, PlannedRow]:
    """Every ``pending`` row of the catalog, by id."""
    return {state.id: PlannedRow(path, state.size, state.mtime_ns)
            for path, state in catalog.file_states().items() if state.status == "pending"}


class SegmentCommitter:
    """Commits segments into one catalog; tracks which planned rows are still waiting for a result."""

    def __init__(self, catalog: Catalog, pending: dict[int, PlannedRow]):
        self.catalog = catalog
        self.pending = dict(pending)
        self._writer = CatalogWriter(catalog)

    def commit(self, rows: SegmentRows) -> CommitCounts:
        """Commit the rows of one segment that still belong to a pending row, in one transaction."""
        take: dict[int, int] = {}  # image id -> row in the segment (first copy wins)
        for row, image_id in enumerate(rows.image_ids.tolist()):
            planned = self.pending.get(image_id)
            if planned is not None and image_id not in take and planned == PlannedRow(
                    rows.paths[row], int(rows.sizes[row]), int(rows.mtimes_ns[row])):
                take[image_id] = row
        ok = [row for row in take.values() if rows.ok[row]]
        failed = [row for row in take.values() if not rows.ok[row]]
        hashes = [rows.content_hashes[row] for row in ok]
        known = self.catalog.vectors_by_hash(hashes)
        new_hashes = list(dict.fromkeys(h for h in hashes if h not in known))
        for row in ok:
            known.setdefault(rows.content_hashes[row], rows.embeddings[row])
        decoded = tuple(Decoded(int(rows.image_ids[row]), rows.content_hashes[row], int(rows.widths[row]),
                                int(rows.heights[row]), rows.formats[row], _NO_PIXELS) for row in ok)
        dim = rows.embeddings.shape[1]
        embeddings = np.stack([known[h] for h in hashes]) if ok else np.zeros((0, dim), np.float32)
        failures = tuple(Failed(int(rows.image_ids[row]), rows.reasons[row], rows.messages[row]) for row in failed)
        if take:
            self._writer.write(EmbeddedBatch(decoded, embeddings.astype(np.float32), failures,
                                             duplicates=len(ok) - len(new_hashes)))
        for image_id in take:
            del self.pending[image_id]
        return CommitCounts(rows=len(take), embedded=len(new_hashes), duplicates=len(ok) - len(new_hashes),
                            failed=dict(collections.Counter(f.reason for f in failures)),
                            stale=len(rows) - len(take))


class Tally:
    """Adds up commits into the :class:`IngestSummary` the single-machine runner would report."""

    def __init__(self, skipped: list[Skipped]):
        self.counts: collections.Counter[str] = collections.Counter(s.reason for s in skipped)
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
                             failed=dict(sorted(self.counts.items())), pruned=pruned)
