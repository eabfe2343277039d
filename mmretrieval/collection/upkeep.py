"""Keeping a collection's FAISS index in step with its catalog, without readers ever writing it.

The catalog is the truth; the index is derived. :class:`IndexKeeper` loads the saved index on first use (a
command that never searches, such as ``mmr info`` or ``mmr label``, never loads it, and ``mmr index`` builds its
own without loading the old one first) and brings its in-memory copy up to the catalog's generation
(incremental adds and removals, or an in-memory rebuild when that is not possible). When another process saves
an index (``mmr index`` rebuilt it, perhaps as another type; a writer caught it up), a long-running reader (the web
UI's server) notices at its next search (one ``stat`` of the manifest) and loads the saved one, as a new process
would, instead of keeping its own or building the new type in memory itself. Only
:meth:`IndexKeeper.persist` writes files, and only writers call it, holding the collection's lock (ingest,
index, import, compact): a search process never writes, a read-only collection can be searched, and two
processes never unlink each other's files.

Builds stream: the index is trained on a random sample of stored vectors, then filled block by block from
the segments; nprobe / efSearch are then tuned to the policy's recall target on held-out queries
(:mod:`.tuning`). The index type and parameters chosen with ``mmr index`` are stored in the catalog and
reused by every rebuild, automatic ones included.

Memory (10 M x 512): a build holds the index being built (ivfpq: ~1.3 GB, measured in docs/scaling.md), the
training sample (at most 300,000 x 512 float32 = 600 MB), one block of vectors (128 MiB) and the id list (80 MB). A
reader holds the loaded index plus the vectors added since it was saved.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import numpy.typing as npt

from ..atomic import remove_stale_temporaries
from ..models.specs import ModelIdentity
from .catalog import Catalog
from .index import MIN_IVF_VECTORS, IndexConfig, VectorIndex, choose_config, fit_to_data, training_size
from .index_manifest import MANIFEST_NAME, Manifest, ManifestStamp, manifest_problem, manifest_stamp, read_manifest
from .segment_files import SEGMENT_GONE
from .sizing import IndexPolicy
from .tuning import exact_top_k, tune

logger = logging.getLogger(__name__)

Blocks = Iterable["tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]"]
# Fills a trained, empty index with (ids, vectors) blocks (count given) and returns it filled; the default adds
# them here block by block, :mod:`mmretrieval.ingest.ray_index` adds them in parallel Ray tasks.
IndexFiller = Callable[[VectorIndex, Blocks, int], VectorIndex]

_CONFIG_KEY = "index_config"  # catalog meta: {"type": "auto" | flat | ivf | hnsw | ivfpq, "params": {...}}


class IndexKeeper:
    """The index of one collection and the manifest it was saved with. Callers hold the collection's lock."""

    def __init__(self, directory: Path, catalog: Catalog, identity: ModelIdentity, policy: IndexPolicy | None = None,
                 progress: Callable[[int, int], None] | None = None):
        self.directory = directory
        self.progress = progress  # (vectors added, total) while a build fills the index
        self.catalog = catalog
        self.identity = identity
        self.policy = policy or IndexPolicy()
        self.index: VectorIndex | None = None
        self.manifest: Manifest | None = None  # what is saved on disk (None: nothing usable)
        self.generation = -1  # the catalog generation the in-memory index reflects
        # index.json as this process last took it into account (when it loaded, built or saved its index): another
        # stamp means that another process has saved an index since
        self._saved_stamp: ManifestStamp | None = None
        self.recall = -1.0  # measured when it was last tuned
        self.note = ""
        self._pending_choice: dict | None = None  # what ``rebuild`` was asked for, until the index is saved

    @property
    def loaded(self) -> bool:
        """Whether this process has loaded (or built) the index yet."""
        return self.index is not None

    def load(self) -> None:
        """Load the saved index and catch it up in memory, or build one in memory when it cannot be used."""
        self._saved_stamp = manifest_stamp(self.directory)  # before reading: a save after it is noticed later
        loaded = VectorIndex.load(self.directory, self.identity.key(), self.identity.embed_dim, use_gpu=True)
        if loaded is None or loaded[1].generation > self.catalog.generation:
            self.manifest = None
            self._build()
        else:
            self.index, self.manifest = loaded
            self.generation, self.recall, self.note = self.manifest.generation, self.manifest.recall, self.manifest.note
            self.sync()

    def rebuild(self, index_type: str | None = None, policy: dict[str, float] | None = None,
                fill: IndexFiller | None = None, **params: int | None) -> Manifest:
        """Build afresh and save (writers only); with ``index_type`` given, it, ``params`` and the ``policy``
        overrides (``memory_budget_bytes``, ``recall_target``) become the choice every later rebuild uses, once the
        index built with them is saved. A run stopped before that leaves the old choice; one killed between the
        save and storing the choice leaves the new index on disk, which the next writer rebuilds as the old choice.
        ``fill`` adds the vectors to the trained index (default: here, block by block); the choice of type,
        training, tuning and the saved file are the same whoever fills it.

        Raises:
            CollectionError: an unknown index type, or a parameter below 1.
        """
        choice = None
        if index_type is not None:
            choose_config(0, index_type, dim=self.identity.embed_dim, **params)  # validate before storing
            choice = {"type": index_type, "params": {key: value for key, value in params.items() if value is not None},
                      "policy": {key: value for key, value in (policy or {}).items() if value is not None}}
        # the new choice is stored once the index built with it is saved: an interrupted rebuild leaves the
        # collection as it was, with no choice pending that the next writer would act on
        self._pending_choice = choice
        try:
            self._build(fill)
            saved = self.persist(force=True)
            if choice is not None and choice != self._stored_choice():
                with self.catalog.transaction():
                    self.catalog.set_meta(_CONFIG_KEY, json.dumps(choice))
        finally:
            self._pending_choice = None
        return saved

    def chosen(self) -> tuple[str, dict[str, int]]:
        """The index type and parameters last chosen with ``mmr index`` (``("auto", {})`` if never)."""
        choice = self._choice()
        if choice:
            return choice["type"], dict(choice["params"])
        return self.catalog.get_meta("index_type") or "auto", {}  # collections from before params were kept

    def _choice(self) -> dict | None:
        """What ``rebuild`` is building with, else what ``mmr index`` stored (None: never chosen)."""
        return self._pending_choice or self._stored_choice()

    def _stored_choice(self) -> dict | None:
        stored = self.catalog.get_meta(_CONFIG_KEY)
        return json.loads(stored) if stored else None

    def _policy_overrides(self) -> dict[str, float]:
        choice = self._choice()
        return dict(choice.get("policy", {})) if choice else {}

    def effective_policy(self) -> IndexPolicy:
        """The policy given at open, with what ``mmr index`` stored (memory budget, recall target) on top."""
        return replace(self.policy, **self._policy_overrides())

    def _wanted(self, count: int) -> IndexConfig:
        index_type, params = self.chosen()
        return choose_config(count, index_type, dim=self.identity.embed_dim, policy=self.effective_policy(), **params)

    def _build(self, fill: IndexFiller | None = None) -> None:
        """Build in memory from the stored vectors: train on a sample, add block by block (or ``fill``), tune."""
        # what is saved now is at most as new as this build (which reads the catalog from here on): not to load
        self._saved_stamp = manifest_stamp(self.directory)
        generation = self.catalog.generation
        ids = self.catalog.vector_ids()
        config = fit_to_data(self._wanted(len(ids)), len(ids))
        rng = np.random.default_rng(0)
        sample_ids = np.sort(rng.choice(ids, training_size(config, len(ids)), replace=False))
        _, sample = self.catalog.vectors(sample_ids)
        logger.info("training %s on %d sampled vectors", config.factory(self.identity.embed_dim), len(sample))
        index = VectorIndex.trained(config, self.identity.embed_dim, sample, use_gpu=True)
        del sample
        if fill is None:
            logger.info("adding %d vectors block by block", len(ids))
            index.fill(self.catalog.iter_vectors, len(ids), self.progress)
        else:
            index = fill(index, self.catalog.iter_vectors(), len(ids))
        self.index, self.generation = self._tuned(index, ids, rng), generation
        index_type, _ = self.chosen()
        self.note = ""
        if index_type not in ("auto", config.type):
            self.note = (f"{index_type} asked for, {config.type} built: {len(ids)} vectors are too few to train "
                         f"it (needs {MIN_IVF_VECTORS}); it is built once the collection is that large")

    def _tuned(self, index: VectorIndex, ids: np.ndarray, rng: np.random.Generator) -> VectorIndex:
        _, given = self.chosen()
        policy = self.effective_policy()
        if index.config.type == "flat" or policy.tuning_queries <= 0 or "nprobe" in given or "ef_search" in given:
            self.recall = 1.0 if index.config.type == "flat" else -1.0
            return index
        query_ids = np.sort(rng.choice(ids, min(len(ids), policy.tuning_queries), replace=False))
        query_ids, queries = self.catalog.vectors(query_ids)
        truth = exact_top_k(query_ids, queries, self.catalog.iter_vectors())
        tuned = tune(index, query_ids, queries, truth, self.catalog.vectors, policy.recall_target)
        self.recall = tuned.recall
        logger.info("tuned %s to %s: recall@10 %.3f on %d held-out queries", index.config.type,
                    tuned.config.params(), tuned.recall, tuned.queries)
        return index.with_config(tuned.config)

    def sync(self) -> None:
        """Bring the in-memory index up to the catalog's generation (never writes a file).

        Reads only what changed since the index's generation (the catalog logs removals), so a search during
        a long ingest costs a few small queries, not a pass over every id.
        """
        if self.index is None:  # first use: load (which catches up) instead
            self.load()
            return
        self._adopt_saved()
        # One read snapshot: a commit by a writer elsewhere between these reads made the index look a batch ahead
        # of the catalog's count (and rebuilt it in memory, at 12 s instead of 2 s a search, during an ingest).
        try:
            with self.catalog.snapshot():
                self._catch_up()
        except SEGMENT_GONE:  # a compaction elsewhere deleted a segment it pointed into
            self.catalog.segments.forget_maps()
            with self.catalog.snapshot():
                self._catch_up()

    def _catch_up(self) -> None:
        generation = self.catalog.generation
        if self.generation == generation:
            return
        new_ids = self.catalog.vector_ids(since_generation=self.generation)
        removed = self.catalog.removed_since(self.generation)
        if removed is None:  # the log does not reach back that far: compare every id
            stored_ids, index_ids = self.catalog.vector_ids(), self.index.ids()
            removed = np.setdiff1d(index_ids, stored_ids)
            if np.setdiff1d(stored_ids, np.union1d(index_ids, new_ids)).size:
                logger.info("rebuilding the index in memory: it lacks vectors the catalog has")
                self._build()
                return
        to_remove = np.union1d(removed, new_ids)  # replaced vectors go out before their new ones come in
        count = self.catalog.vector_count()
        if not self.index.supports_remove:
            to_remove = np.intersect1d(to_remove, self.index.ids())
        if self._wanted(count).type != self.index.config.type or (to_remove.size and not self.index.supports_remove):
            self._build()
            return
        self.index.remove(to_remove)
        for block_ids, vectors in self.catalog.iter_vectors(since_generation=self.generation):
            self.index.add(block_ids, vectors)
        if self.index.count != count:
            logger.warning("the index holds %d vectors, the catalog %d; rebuilding it in memory", self.index.count, count)
            self._build()
            return
        self.generation = generation

    def persist(self, force: bool = False) -> Manifest:
        """Save the in-memory index if the saved one is older (writers only, holding the collection's lock).

        Temporaries a killed writer left are removed first: under the lock, no other write is in progress.
        """
        for pattern in ("index-*.faiss", MANIFEST_NAME):
            for path in remove_stale_temporaries(self.directory, pattern):
                logger.info("removed %s, left by an interrupted index save", path.name)
        self.sync()
        if not force and self.manifest is not None and self.manifest.generation == self.generation \
                and self.manifest.params == self.index.config.params():
            return self.manifest
        manifest = Manifest(model_key=self.identity.key(), dim=self.identity.embed_dim, index_type="",
                            params={}, count=0, generation=self.generation, model=asdict(self.identity),
                            note=self.note, recall=self.recall, memory_bytes=self.index.memory_bytes())
        self.manifest = self.index.save(self.directory, manifest)
        self._saved_stamp = manifest_stamp(self.directory)  # this process's own save: nothing to load back
        return self.manifest

    def _adopt_saved(self) -> None:
        """Use the index another process saved since this one loaded, built or saved its own (``mmr index`` may have
        rebuilt it as another type): loaded and verified as :meth:`load` does, then caught up by :meth:`sync` as
        usual. Costs one ``stat`` when nothing was saved. Only an index of another type or parameters is loaded:
        one like this process's (a writer's end-of-run save) is cheaper to catch up in memory than to read whole. A
        saved index that cannot be used (corrupt, another model's, newer than the catalog) is left alone, and this
        process keeps its own."""
        stamp = manifest_stamp(self.directory)
        if stamp is None or stamp == self._saved_stamp:
            return
        self._saved_stamp = stamp  # whatever comes of it: a bad file is read once, not at every search
        saved = read_manifest(self.directory)
        if saved is None or (self.manifest is not None and (saved.file, saved.sha256) == (self.manifest.file,
                                                                                            self.manifest.sha256)):
            return  # the same index, its manifest rewritten (or unreadable: logged)
        if self.index is not None and saved.config() == self.index.config:
            return  # a writer's catch-up of the same index (each ingest saves one): caught up here in memory, cheaper

        loaded = VectorIndex.load(self.directory, self.identity.key(), self.identity.embed_dim, use_gpu=True)
        if loaded is None or loaded[1].generation > self.catalog.generation:
            return
        self.index, self.manifest = loaded
        self.generation, self.recall, self.note = self.manifest.generation, self.manifest.recall, self.manifest.note
        logger.info("loaded the %s index that another process saved at generation %d, in place of this process's",
                    self.manifest.index_type, self.manifest.generation)

    def current(self) -> Manifest:
        """What the in-memory index is (for ``mmr info``), whether or not it has been saved."""
        self.sync()
        return Manifest(model_key=self.identity.key(), dim=self.identity.embed_dim, index_type=self.index.config.type,
                        params=self.index.config.params(), count=self.index.count, generation=self.generation,
                        file=self.manifest.file if self.manifest else "", note=self.note, recall=self.recall,
                        memory_bytes=self.index.memory_bytes())

    def saved(self) -> Manifest | None:
        """The saved index's manifest as it is on disk, without loading the index (None: none usable for this
        model): what ``mmr info`` reports when this process has not loaded the index, since building one in
        memory only to describe it costs a full build (94 s at 1 M vectors) and is then thrown away."""
        manifest = read_manifest(self.directory)
        if manifest is None or manifest_problem(manifest, self.identity.key(), self.identity.embed_dim):
            return None
        return manifest
