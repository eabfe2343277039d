"""Reading another collection's vector segments as import shards (``mmr import OTHER_COLLECTION``).

One shard per segment of the source collection: the rows its catalog still points at (tombstones are left
behind), with their paths and captions. The source is opened read-only and never written; its model must be
the importing collection's model (same :meth:`~mmretrieval.models.specs.ModelIdentity.key`), since vectors of
another model, even of the same dimension, would be silently wrong neighbours.

Memory: one segment's paths and captions as Python objects (~100 bytes a row) and one block of vectors.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ..errors import CollectionError
from ..models.specs import ModelIdentity
from .catalog import Catalog
from .import_sources import CheckedShard

logger = logging.getLogger(__name__)


class _SegmentRows:
    """Rows ``rows`` of segment ``number``, indexable like an array (slices and position arrays)."""

    def __init__(self, catalog: Catalog, number: int, rows: npt.NDArray[np.int64]):
        self._catalog, self._number, self._rows = catalog, number, rows

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, where: slice | npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
        rows = self._rows[where]
        return self._catalog.segments.gather(np.full(len(rows), self._number), rows)


@dataclass(frozen=True)
class SegmentShard:
    """One segment of a source collection."""

    name: str  # segment-NNNNNN
    catalog: Catalog
    number: int
    live_rows: int
    sha256: str  # of a sealed segment's file; empty for the source's active segment

    def fingerprint(self) -> str:
        return self.sha256 or f"active:{self.catalog.segments.rows_in(self.number)}:{self.live_rows}"

    def rows(self) -> int:
        return self.live_rows

    def check(self, dim: int, root: Path) -> CheckedShard:
        """Paths, captions and vectors of the segment's live rows (the vectors are checked as they land)."""
        if self.catalog.segments.dim != dim:
            raise CollectionError(f"{self.catalog.segments.directory} holds {self.catalog.segments.dim}-d vectors, "
                                  f"this collection's model makes {dim}-d ones")
        places = self.catalog.select(
            "SELECT v.row, i.path, i.caption FROM vector_rows v JOIN images i ON i.id = v.image_id "
            "WHERE v.segment = ? ORDER BY v.row", (self.number,))
        rows = np.array([place[0] for place in places], dtype=np.int64)
        vectors = _SegmentRows(self.catalog, self.number, rows)
        label = self.catalog.segments.directory / f"{self.number:06d}.vec"
        return CheckedShard(self.name, label, [bytes(place[1]) for place in places], [place[2] for place in places],
                            vectors)


def refuse_another_model(source: Path, theirs: ModelIdentity, identity: ModelIdentity) -> None:
    """Refuse vectors that ``source`` says another model made (a collection, or an ``mmr export`` folder).

    Raises:
        CollectionError: the models' identity keys differ.
    """
    if theirs.key() != identity.key():
        raise CollectionError(f"{source} was made with {theirs.spec} (key {theirs.key()}, {theirs.embed_dim}-d), "
                              f"this collection with {identity.spec} (key {identity.key()}, {identity.embed_dim}-d); "
                              "import only vectors of the same model")


def find_segment_shards(source: Path, identity: ModelIdentity) -> list[SegmentShard]:
    """The segments of the collection in ``source`` that hold live rows, in order.

    Raises:
        CollectionError: the source is unreadable, has another model, or is the importing collection itself.
    """
    from .catalog import CATALOG_NAME

    catalog = Catalog(source / CATALOG_NAME, writable=False)
    stored = catalog.get_meta("model_identity")
    if stored is None:
        raise CollectionError(f"{source} has no model recorded; it is not a collection that can be imported")
    refuse_another_model(source, ModelIdentity.from_json(stored), identity)
    if not catalog.segments.exists:
        return []
    live = dict(catalog.rows_per_segment())
    return [SegmentShard(f"segment-{info.number:06d}", catalog, info.number, live[info.number], info.sha256)
            for info in catalog.segments.segments() if live.get(info.number)]

