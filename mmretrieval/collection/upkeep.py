"""Keeping a collection's FAISS index in step with its catalog.

The catalog is the truth; the index is derived. :class:`IndexKeeper` loads the saved index (or rebuilds it
when it is missing, corrupt or from the future), brings it up to the catalog's generation with incremental
adds and removals, and rebuilds it when that is not possible. The index type and parameters the user chose
with ``mmr index`` are stored in the catalog and reused by every rebuild, automatic ones included.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..atomic import remove_stale_temporaries
from .index import MANIFEST_NAME, MIN_IVF_VECTORS, IndexConfig, Manifest, VectorIndex, choose_config
from ..models.specs import ModelIdentity
from .catalog import Catalog

logger = logging.getLogger(__name__)

_CONFIG_KEY = "index_config"  # catalog meta: {"type": "auto" | flat | ivf | hnsw, "params": {name: value}}


class IndexKeeper:
    """The index of one collection and the manifest it was saved with. Callers hold the collection's lock."""

    def __init__(self, directory: Path, catalog: Catalog, identity: ModelIdentity):
        self.directory = directory
        self.catalog = catalog
        self.identity = identity
        self.index: VectorIndex | None = None
        self.manifest: Manifest | None = None

    def load(self) -> None:
        """Load the saved index and catch it up, or rebuild it when it cannot be used.

        Index temporaries left by a process killed mid-save are removed first (loading may save an index).
        """
        for pattern in ("index-*.faiss", MANIFEST_NAME):
            for path in remove_stale_temporaries(self.directory, pattern):
                logger.info("removed %s, left by an interrupted index save", path.name)
        loaded = VectorIndex.load(self.directory, self.identity.key(), self.identity.embed_dim, use_gpu=True)
        if loaded is None or loaded[1].generation > self.catalog.generation:
            self.rebuild()
        else:
            self.index, self.manifest = loaded
            self.sync()

    def rebuild(self, index_type: str | None = None, **params: int | None) -> Manifest:
        """Build afresh from the stored vectors; with ``index_type`` given, it (and ``params``) become the choice.

        Without ``index_type`` the stored choice is used (``auto`` for a collection that never made one).

        Raises:
            CollectionError: an unknown index type, or a parameter below 1.
        """
        ids, vectors = self.catalog.vectors()
        if index_type is None:
            index_type, params = self.chosen()
        config = choose_config(len(ids), index_type, **params)
        self.index = VectorIndex.build(config, ids, vectors, self.identity.embed_dim, use_gpu=True)
        given = {key: value for key, value in params.items() if value is not None}
        if (index_type, given) != self.chosen():
            with self.catalog.transaction():
                self.catalog.set_meta(_CONFIG_KEY, json.dumps({"type": index_type, "params": given}))
        note = ""
        if index_type not in ("auto", config.type):
            note = (f"{index_type} asked for, {config.type} built: {len(ids)} vectors are too few to train it "
                    f"(needs {MIN_IVF_VECTORS}); it is built once the collection is that large")
        return self.save(self.catalog.generation, note)

    def chosen(self) -> tuple[str, dict[str, int]]:
        """The index type and parameters last chosen with ``mmr index`` (``("auto", {})`` if never)."""
        stored = self.catalog.get_meta(_CONFIG_KEY)
        if stored:
            choice = json.loads(stored)
            return choice["type"], dict(choice["params"])
        return self.catalog.get_meta("index_type") or "auto", {}  # collections from before params were kept

    def save(self, generation: int, note: str = "") -> Manifest:
        manifest = Manifest(model_key=self.identity.key(), dim=self.identity.embed_dim, index_type="",
                            params={}, count=0, generation=generation, model=asdict(self.identity), note=note)
        self.manifest = self.index.save(self.directory, manifest)
        return self.manifest

    def sync(self) -> None:
        """Bring the index up to the catalog's generation: remove deleted ids, (re)add newer vectors."""
        generation = self.catalog.generation
        if self.manifest.generation == generation:
            return
        stored_ids = self.catalog.vector_ids()
        index_ids = self.index.ids()
        new_ids, new_vectors = self.catalog.vectors(since_generation=self.manifest.generation)
        to_remove = np.union1d(np.setdiff1d(index_ids, stored_ids), np.intersect1d(index_ids, new_ids))
        missing = np.setdiff1d(stored_ids, np.union1d(index_ids, new_ids))
        index_type, params = self.chosen()
        wanted: IndexConfig = choose_config(len(stored_ids), index_type, **params)
        if missing.size or wanted.type != self.index.config.type or (to_remove.size and not self.index.supports_remove):
            logger.info("rebuilding the index (%d vectors missing, type %s)", missing.size, wanted.type)
            self.rebuild()
            return
        self.index.remove(to_remove)
        self.index.add(new_ids, new_vectors)
        self.save(generation, self.manifest.note)
