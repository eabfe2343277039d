"""Writing stage: commit one embedded batch to the catalog in one transaction.

Vectors are stored by catalog id, so a batch with failures in it keeps every vector on its own file.
A process killed between two commits loses only the batches in flight: their rows are still ``pending``.
"""

from __future__ import annotations

import logging

from ..collection.catalog import Catalog, FailureWrite, VectorWrite
from .batches import EmbeddedBatch

logger = logging.getLogger(__name__)


class CatalogWriter:
    """Writes :class:`EmbeddedBatch` records into a :class:`~mmretrieval.collection.catalog.Catalog`."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog

    def write(self, batch: EmbeddedBatch) -> int:
        """Commit ``batch``; returns the catalog generation it created."""
        vectors = [
            VectorWrite(item.image_id, item.content_hash, item.width, item.height, item.format, embedding,
                        photo=item.metadata)
            for item, embedding in zip(batch.decoded, batch.embeddings, strict=True)
        ]
        failures = [FailureWrite(item.image_id, item.reason, item.message) for item in batch.failed]
        generation = self.catalog.write_results(vectors, failures)
        logger.debug("committed %d vectors, %d failures (generation %d)", len(vectors), len(failures), generation)
        return generation
