"""The FAISS index of a collection, and the manifest that says what it holds.

The index is derived data: the catalog's vectors are the truth, and this module never decides on its own
whether an index is current. It builds, searches, adds to, removes from, saves and loads an index keyed by
catalog ids (``IndexIDMap2``; never positions), and reports a saved index as unusable when its file or
manifest disagree with what the caller expects, so the caller rebuilds it.

Index types (all inner product over unit vectors, i.e. cosine; the size bands and the memory each needs are
in :mod:`.sizing`):

- ``flat``: exact (``IndexFlatIP``); chosen automatically below :data:`AUTO_ANN_THRESHOLD` vectors.
- ``ivf``: ``IVF{nlist},SQfp16`` with ``nprobe`` probes: approximate, half the memory of raw float32 vectors,
  supports adds and removals. The automatic choice above the threshold.
- ``ivfpq``: ``[OPQ{m}_{4m},]IVF{nlist}_HNSW32,PQ{m}``: compressed codes (m + 8 bytes a vector), the large
  collections' choice; supports adds and removals.
- ``hnsw``: ``HNSW{m},Flat`` with ``efSearch``: approximate, no training; removals force a rebuild.

An index whose scores are not exact for the stored vectors (:meth:`VectorIndex.scores_exact`: ivfpq's PQ
codes) proposes :meth:`VectorIndex.candidates` hits (``rerank``) that the caller re-scores exactly from the
stored vectors (:meth:`Collection.nearest <mmretrieval.collection.collection.Collection.nearest>` does), so
PQ's coarse scores only decide who gets re-scored. Builds for large collections train on a sample
(:meth:`VectorIndex.trained`, :func:`training_size`) and add block by block (:mod:`.upkeep`).

Memory: a loaded index is read whole into RAM (``faiss.read_index``); at 10 M x 512 that is ~0.8 GB for
ivfpq. ``mmr index --ray`` adds in parallel Ray tasks and joins the shards with FAISS's
``faiss.contrib.ondisk.merge_ondisk`` (:mod:`mmretrieval.ingest.ray_index`), then copies the lists into memory;
serving from memory-mapped lists (past RAM) is not wired in.

Files: ``index-<generation>-<random>.faiss`` plus ``index.json`` (the manifest) naming it and carrying its sha256.
The index file is written under a temporary name and renamed before the manifest is, and each save's file has a
name of its own (a rebuild at the same generation, ``mmr index --type``, does not overwrite the file the manifest
names), so a crash at any point leaves either the old pair or the new one.

The manifest is :mod:`.index_manifest`'s, the exact search over an allowed set :mod:`.exact_search`'s.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
from pathlib import Path
from typing import Any, Callable, Iterable

import faiss
import numpy as np
import numpy.typing as npt

from ..atomic import atomic_path, atomic_write_text, file_sha256, fsync_dir
from ..errors import CollectionError
from .exact_search import drop_padding, exact_search
from .index_manifest import MANIFEST_NAME, Manifest, manifest_problem, read_manifest
from .ivf_fill import fill_presized
from .sizing import (AUTO_ANN_THRESHOLD, INDEX_TYPES, MAX_TRAIN, MIN_IVF_VECTORS, TRAIN_PER_LIST, IndexConfig,
                     IndexPolicy, choose_config, estimate_bytes)

__all__ = ["AUTO_ANN_THRESHOLD", "INDEX_TYPES", "MIN_IVF_VECTORS", "IndexConfig", "IndexPolicy", "VectorIndex",
           "choose_config"]

logger = logging.getLogger(__name__)

_IVF_TYPES = ("ivf", "ivfpq")


class VectorIndex:
    """A FAISS index keyed by catalog ids. Not thread-safe for writes; searches may run concurrently."""

    def __init__(self, index: faiss.Index, config: IndexConfig, dim: int, use_gpu: bool = False):
        """Wrap ``index``; with ``use_gpu`` (and FAISS GPU present) exact searches run on GPU 0."""
        self.faiss_index = index
        self.config = config
        self.dim = dim
        self._use_gpu = use_gpu and gpu_available()
        self._gpu_index = None

    @classmethod
    def build(cls, config: IndexConfig, ids: npt.NDArray[np.int64], vectors: npt.NDArray[np.float32],
              dim: int, use_gpu: bool = False) -> "VectorIndex":
        """A new index over ``vectors`` (unit rows, all in RAM: small collections and tests) with ``ids``."""
        vectors = _as_matrix(vectors, dim)
        config = fit_to_data(config, len(vectors))
        sample = vectors[np.random.default_rng(0).permutation(len(vectors))[:training_size(config, len(vectors))]]
        index = cls.trained(config, dim, sample, use_gpu)
        index.add(ids, vectors)
        return index

    @classmethod
    def trained(cls, config: IndexConfig, dim: int, sample: npt.NDArray[np.float32],
                use_gpu: bool = False) -> "VectorIndex":
        """An empty index of ``config`` trained on ``sample`` (see :func:`training_size`); fill it with :meth:`add`.

        This is how large collections are built: train on a sample, then add block by block from the segments.
        """
        base = _new_base(config, dim)
        if not base.is_trained:
            base.train(_as_matrix(sample, dim))
        # IVF stores ids itself; flat and HNSW store positions and need the id map. (IndexIDMap2 over IVF is
        # wrong after remove_ids: it compacts its map but IVF does not renumber.)
        return VectorIndex(base if config.type in _IVF_TYPES else faiss.IndexIDMap2(base), config, dim, use_gpu)

    def with_config(self, config: IndexConfig) -> "VectorIndex":
        """The same FAISS index searched with other parameters (nprobe, efSearch, rerank)."""
        return VectorIndex(self.faiss_index, config, self.dim, self._use_gpu)

    def candidates(self, k: int) -> int:
        """How many hits to ask for so that exact re-ranking of them yields a good top ``k``."""
        return max(k, self.config.rerank)

    def scores_exact(self, stored_dtype: str) -> bool:
        """Whether this index scores a vector exactly as its stored copy (``stored_dtype``) would: then its
        scores and order are final and re-ranking from the segments would change nothing.

        Flat and HNSW keep float32 copies; IVF's ``SQfp16`` codes (of the vectors, not of residuals) are the
        float16 values a float16 store holds.
        """
        if self.config.type == "ivf":  # indexes saved before codes were of the vectors themselves are residual
            return stored_dtype == "float16" and not faiss.extract_index_ivf(self.faiss_index).by_residual
        return self.config.type in ("flat", "hnsw")

    def memory_bytes(self) -> int:
        """Estimated resident memory (codes, ids, quantizers)."""
        return estimate_bytes(self.config, self.count, self.dim)

    @property
    def count(self) -> int:
        return int(self.faiss_index.ntotal)

    def ids(self) -> npt.NDArray[np.int64]:
        """The catalog ids the index holds."""
        if self.config.type not in _IVF_TYPES:
            return faiss.vector_to_array(self.faiss_index.id_map).astype(np.int64)
        lists = faiss.extract_index_ivf(self.faiss_index).invlists
        chunks = [faiss.rev_swig_ptr(lists.get_ids(i), lists.list_size(i)).copy()
                  for i in range(lists.nlist) if lists.list_size(i)]
        return np.concatenate(chunks).astype(np.int64) if chunks else np.zeros(0, np.int64)

    def add(self, ids: npt.NDArray[np.int64], vectors: npt.NDArray[np.float32]) -> None:
        """Add vectors under ``ids`` (which must not be in the index already: :meth:`remove` them first)."""
        if len(ids):
            self.faiss_index.add_with_ids(_as_matrix(vectors, self.dim), np.ascontiguousarray(ids, dtype=np.int64))
            self._gpu_index = None

    def fill(self, blocks: Callable[[], Iterable[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]]],
             total: int, progress: Callable[[int, int], None] | None = None) -> None:
        """Add every ``(ids, vectors)`` block that ``blocks()`` yields to this freshly trained index, with
        ``progress(added, total)``; IVF types call ``blocks()`` twice (:mod:`.ivf_fill`: lists allocated once)."""
        if self.config.type in _IVF_TYPES and self.count == 0:
            fill_presized(self.faiss_index, blocks, total, progress)
        else:
            added = 0
            for ids, vectors in blocks():
                self.add(ids, vectors)
                added += len(ids)
                if progress is not None:
                    progress(added, total)
        self._gpu_index = None

    @property
    def supports_remove(self) -> bool:
        return self.config.type != "hnsw"

    def remove(self, ids: npt.NDArray[np.int64]) -> int:
        """Remove ``ids``; returns how many were there. Raises CollectionError for HNSW (rebuild instead)."""
        if not len(ids):
            return 0
        if not self.supports_remove:
            raise CollectionError("an HNSW index cannot remove vectors; rebuild it")
        self._gpu_index = None
        return int(self.faiss_index.remove_ids(np.ascontiguousarray(ids, dtype=np.int64)))

    def search(self, queries: npt.NDArray[np.float32], k: int,
               allowed_ids: npt.NDArray[np.int64] | None = None) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """Top-``k`` per query as ``(scores, ids)`` lists per row, without FAISS's ``-1`` padding.

        Args:
            queries: ``(q, dim)`` unit vectors.
            k: hits wanted per query; fewer come back when the index (or the allowed set) is smaller.
            allowed_ids: only these ids may be returned.

        Returns:
            ``(scores, ids)`` of shape ``(q, k')``, k' <= k; rows are padded only if some queries found fewer,
            with score ``-inf`` and id ``-1``. Callers with one query get no padding at all.
        """
        queries = _as_matrix(queries, self.dim)
        limit = self.count if allowed_ids is None else min(self.count, len(allowed_ids))
        k = min(k, limit)
        if k <= 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        if allowed_ids is not None and self.config.type == "hnsw":
            # A graph walk only meets allowed ids near the query; a small allowed set may lie elsewhere.
            return exact_search(queries, k, allowed_ids, self._reconstruct)
        nprobe = self.config.nprobe
        scores, ids = self._searchable().search(queries, k, params=self._search_params(k, allowed_ids, nprobe))
        if allowed_ids is None and self.config.type in _IVF_TYPES:
            # A query whose probed lists held fewer than k vectors (a large k, or a query between clusters) probes
            # more, up to all of them, rather than return fewer hits than the collection has. Only those queries:
            # the others' results stay what this nprobe gives, which is what tuning measures it by.
            nlist = faiss.extract_index_ivf(self.faiss_index).nlist
            short = np.flatnonzero(ids.min(axis=1) < 0)
            while len(short) and nprobe < nlist:
                nprobe = min(nlist, 2 * nprobe)
                scores[short], ids[short] = self._searchable().search(
                    queries[short], k, params=self._search_params(k, None, nprobe))
                short = short[ids[short].min(axis=1) < 0]
        return drop_padding(scores, ids, k)

    def _search_params(self, k: int, allowed_ids: npt.NDArray[np.int64] | None, nprobe: int) -> Any:
        selector = None if allowed_ids is None else faiss.IDSelectorBatch(np.ascontiguousarray(allowed_ids, np.int64))
        if self.config.type in _IVF_TYPES:
            # Filtered, every list is visited: the allowed ids may all sit in lists the query would not probe.
            nprobe = nprobe if selector is None else faiss.extract_index_ivf(self.faiss_index).nlist
            params = faiss.SearchParametersIVF(sel=selector, nprobe=nprobe)
            if self.config.type == "ivfpq":  # the HNSW coarse quantizer must return nprobe lists
                params.quantizer_params = faiss.SearchParametersHNSW(efSearch=max(2 * nprobe, 64))
            return params
        if self.config.type == "hnsw":
            return faiss.SearchParametersHNSW(efSearch=max(self.config.ef_search, k))
        return None if selector is None else faiss.SearchParameters(sel=selector)

    def _reconstruct(self, ids: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        present = np.intersect1d(ids, self.ids())
        if not present.size:
            return present, np.zeros((0, self.dim), np.float32)
        return present, self.faiss_index.reconstruct_batch(np.ascontiguousarray(present, np.int64))

    def _searchable(self) -> faiss.Index:
        if not self._use_gpu or self.config.type != "flat":
            return self.faiss_index
        if self._gpu_index is None:
            self._gpu_index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, self.faiss_index)
        return self._gpu_index

    # -- persistence ------------------------------------------------------------------------------------------
    def save(self, directory: Path, manifest: Manifest) -> Manifest:
        """Write ``index-<generation>-<random>.faiss`` (a new name: the manifest's file is never overwritten) then
        ``index.json``, each atomically; then remove the other index files."""
        name = f"index-{manifest.generation}-{secrets.token_hex(4)}.faiss"
        with atomic_path(directory / name) as tmp, open(tmp, "wb") as handle:
            # through Python's file, not a path: FAISS takes a path only as UTF-8, and a folder's name need not be
            # (as fast: 614 MB in 0.24 s against 0.21 s)
            faiss.write_index(self.faiss_index, faiss.PyCallbackIOWriter(handle.write))
        saved = dataclasses.replace(manifest, file=name, sha256=file_sha256(directory / name), count=self.count,
                                    dim=self.dim, index_type=self.config.type, params=self.config.params())
        atomic_write_text(directory / MANIFEST_NAME, json.dumps(dataclasses.asdict(saved), indent=1, sort_keys=True))
        for old in directory.glob("index-*.faiss"):
            if old.name != name:
                old.unlink(missing_ok=True)
        fsync_dir(directory)
        return saved

    @classmethod
    def load(cls, directory: Path, model_key: str, dim: int, use_gpu: bool = False
             ) -> tuple["VectorIndex", Manifest] | None:
        """The saved index, or None (with the reason logged) when it is missing, corrupt or for another model."""
        manifest = read_manifest(directory)
        if manifest is None:
            return None
        path = directory / manifest.file
        problem = manifest_problem(manifest, model_key, dim)
        if problem is None and (not manifest.file or not path.is_file()):
            problem = f"index file {manifest.file!r} is missing"
        if problem is None and file_sha256(path) != manifest.sha256:
            problem = f"{path.name} does not match its checksum (corrupt or truncated)"
        if problem is None:
            try:
                with open(path, "rb") as handle:  # (see save)
                    faiss_index = faiss.read_index(faiss.PyCallbackIOReader(handle.read))
            except RuntimeError as exc:
                problem = f"{path.name} is unreadable: {exc}"
        if problem is None and (faiss_index.ntotal != manifest.count or faiss_index.d != dim):
            problem = f"{path.name} holds {faiss_index.ntotal} x {faiss_index.d}, manifest says {manifest.count} x {dim}"
        if problem is not None:
            logger.warning("ignoring the saved index: %s; it will be rebuilt from the stored vectors", problem)
            return None
        return cls(faiss_index, manifest.config(), dim, use_gpu), manifest


def gpu_available() -> bool:
    """True when FAISS was built with GPU support (``faiss-gpu-cu12`` installed instead of ``faiss-cpu``) and sees a
    GPU."""
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def fit_to_data(config: IndexConfig, count: int) -> IndexConfig:
    """``config`` shrunk to what ``count`` vectors can train: IVF needs a training point per list at least."""
    if config.type in _IVF_TYPES:
        nlist = max(1, min(config.nlist or 1, count))
        return dataclasses.replace(config, nlist=nlist, nprobe=max(1, min(config.nprobe or 1, nlist)))
    return config


def training_size(config: IndexConfig, count: int) -> int:
    """Vectors to sample for training ``config`` over ``count`` (0 for types that need no training)."""
    if config.type not in _IVF_TYPES:
        return 0
    wanted = config.nlist * TRAIN_PER_LIST
    if config.type == "ivfpq":
        wanted = max(wanted, (1 << config.pq_bits) * 64)  # each PQ sub-quantizer is a k-means of its own
    return min(count, wanted, MAX_TRAIN)


def _new_base(config: IndexConfig, dim: int) -> faiss.Index:
    base = faiss.index_factory(dim, config.factory(dim), faiss.METRIC_INNER_PRODUCT)
    if config.type == "hnsw":
        base.hnsw.efConstruction = 80
    if config.type == "ivf":
        # codes of the vector itself, not of its residual: then they are exactly a float16 store's values
        # and search scores need no re-ranking (see VectorIndex.scores_exact)
        faiss.extract_index_ivf(base).by_residual = False
    if config.type == "ivfpq" and config.opq:
        rotation = faiss.downcast_VectorTransform(base.chain.at(0))
        rotation.niter = 20  # FAISS's 50 costs minutes on a few cores for little recall after exact re-ranking
    return base


def _as_matrix(vectors: npt.NDArray[np.float32], dim: int) -> npt.NDArray[np.float32]:
    return np.ascontiguousarray(np.asarray(vectors, dtype=np.float32).reshape(-1, dim))
