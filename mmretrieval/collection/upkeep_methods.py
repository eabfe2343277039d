"""The upkeep methods of :class:`~mmretrieval.collection.collection.Collection`: ``check``, ``compact`` and
``rebuild_index``. A mixin, as :mod:`.label_methods`; it uses the collection's catalog, folder, writer lock and
index keeper and nothing else of it.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ContextManager

from ..errors import CollectionError
from .arguments import is_real
from .catalog import Catalog
from .check import CheckReport, check_beside_writers, check_catalog, forget_damaged
from .compaction import CompactionSummary, compact, vacuum_catalog
from .index_manifest import Manifest
from .sizing import refuse_foreign_params

if TYPE_CHECKING:
    from .upkeep import IndexFiller, IndexKeeper

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (done, total)


class UpkeepMethods:
    """Checks, compaction and index rebuilds of an open collection; mixed into
    :class:`~mmretrieval.collection.collection.Collection`."""

    catalog: Catalog
    directory: Path
    _lock: threading.RLock
    _indexes: "IndexKeeper"
    _forgotten_on_entry: list[int]
    _check_process: Callable[[], None]
    busy_message: Callable[[str], "str | None"]
    writing: Callable[..., ContextManager[Catalog]]

    def check(self, repair: bool = False, progress: Progress | None = None) -> CheckReport:
        """Read the whole collection back and report what is damaged (``mmr check``; see :mod:`.check`); with
        ``repair``, as the collection's writer, set the images whose vectors are damaged to be embedded again by
        the next ingest. ``progress(done, total)`` counts vectors.

        Raises:
            CollectionError: without ``repair``, other processes rewrote the collection under three checks in a
                row; with ``repair``, a read-only collection or another writer at work.
        """
        self._check_process()
        if repair:
            with self.writing(self.busy_message("check --repair")) as catalog:
                report = check_catalog(catalog, self.directory, progress, forgotten=self._forgotten_on_entry)
                return dataclasses.replace(report, reset=forget_damaged(catalog, report))
        return check_beside_writers(self.catalog, self.directory, progress)

    def compact(self, min_waste_ratio: float = 0.0,
                progress: Callable[[int, int], None] | None = None) -> CompactionSummary:
        """Rewrite segments that waste more than ``min_waste_ratio`` of their rows, then the catalog when over a
        tenth of it is free pages (``mmr compact``: removed label sets, pruned rows).

        Safe to kill at any point: nothing is lost or duplicated, and the next writer cleans up.

        Raises:
            CollectionError: ``min_waste_ratio`` out of [0, 1], a read-only collection, another writer at work, or too
                little disk to rewrite the catalog (the segments' compaction is done and kept; the catalog is left
                as it was).
        """
        if not is_real(min_waste_ratio) or not 0 <= min_waste_ratio <= 1:  # -1 rewrote every segment
            raise CollectionError(f"min_waste_ratio is a share of dead rows from 0 to 1, got {min_waste_ratio!r}")
        with self.writing(self.busy_message("compact")):
            summary = compact(self.catalog, min_waste_ratio, progress)
            return dataclasses.replace(summary, catalog_bytes_freed=vacuum_catalog(self.catalog))

    def rebuild_index(self, index_type: str = "auto", *, memory_budget_bytes: int | None = None,
                      recall_target: float | None = None, fill: "IndexFiller | None" = None,
                      **params: int | None) -> Manifest:
        """Build the index afresh from the stored vectors (``mmr index``); ``auto`` picks by size and memory.

        The type, parameters, memory budget and recall target are remembered: automatic rebuilds (after
        removals from HNSW, a lost or corrupt index file) use them too. ``fill`` adds the vectors to the trained
        index (default: here; :class:`~mmretrieval.ingest.ray_index.RayIndexFill` adds them on Ray).

        An ``ivf`` or ``ivfpq`` asked for over too few vectors to train it (:data:`~.sizing.MIN_IVF_VECTORS`) is
        built ``flat`` (exact) instead, with a logged warning and the manifest's ``note`` saying so; the choice is
        kept, so the asked-for type is built once the collection is large enough.

        Raises:
            CollectionError: an unknown index type, a parameter below 1 or of another index type, a recall
                target for ``flat``, a read-only collection, or another writer at work.
        """
        if recall_target is not None and not (is_real(recall_target) and 0 < recall_target <= 1):
            raise CollectionError(f"recall target must be in (0, 1], got {recall_target!r}")
        if memory_budget_bytes is not None and not (is_real(memory_budget_bytes) and memory_budget_bytes > 0):
            raise CollectionError(f"a memory budget is a positive number of bytes, got {memory_budget_bytes!r}")
        if recall_target is not None and index_type == "flat":
            raise CollectionError("--recall-target: a flat index is exact (recall 1.0); the target tunes the "
                                  "ivf, hnsw and ivfpq types' search parameters")
        refuse_foreign_params(index_type, params)
        policy = {"memory_budget_bytes": memory_budget_bytes, "recall_target": recall_target}
        with self.writing(self.busy_message("index")):
            with self._lock:
                manifest = self._indexes.rebuild(index_type, policy, fill, **params)
        if index_type not in ("auto", manifest.index_type):
            logger.warning("%s", manifest.note or f"{index_type} index asked for, {manifest.index_type} built")
        return manifest
