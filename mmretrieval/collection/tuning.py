"""Tuning an approximate index to a recall target on held-out queries sampled from the collection.

Queries are stored vectors of randomly chosen rows; each query's own row is left out of both the truth and
the results, so it measures how well the index finds the *other* neighbours. The truth is exact top-k over
every stored vector, computed block by block from the segments (never all vectors in RAM). Candidates the
index proposes are re-ranked exactly from the stored vectors, as :meth:`Collection.search` does, so the
recall measured is the recall users get.

The search breadth (``nprobe`` for IVF types, ``efSearch`` for HNSW) grows in powers of two until the
target is met or recall stops growing; for ``ivfpq`` the re-ranked candidate count then doubles (PQ codes
lose the order inside a cluster, which only re-ranking more candidates restores).

Memory: the queries (200 x dim), their running top-k, and one block of stored vectors (128 MiB at 512-d).
Time: one pass over the stored vectors (matrix products, ~200 x n x dim flops) plus a few hundred searches
per setting tried.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import numpy.typing as npt

from .index import IndexConfig, VectorIndex

logger = logging.getLogger(__name__)

Blocks = Iterable[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]]
Loader = Callable[[npt.NDArray[np.int64]], "tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]"]
K = 10  # recall@K is what is tuned and reported


@dataclass(frozen=True)
class Tuned:
    """The search parameters chosen and the recall they measured."""

    config: IndexConfig
    recall: float  # recall@10 on the held-out queries after exact re-ranking
    queries: int  # how many held-out queries it was measured on


def exact_top_k(query_ids: npt.NDArray[np.int64], queries: npt.NDArray[np.float32], blocks: Blocks,
                k: int = K) -> npt.NDArray[np.int64]:
    """Exact top-``k`` ids per query over ``blocks`` of ``(ids, vectors)``, each query's own id left out."""
    best_scores = np.full((len(queries), 0), -np.inf, np.float32)
    best_ids = np.full((len(queries), 0), -1, np.int64)
    for ids, vectors in blocks:
        scores = queries @ vectors.T
        scores[query_ids[:, None] == ids[None, :]] = -np.inf
        best_scores = np.concatenate([best_scores, scores], axis=1)
        best_ids = np.concatenate([best_ids, np.broadcast_to(ids, scores.shape)], axis=1)
        keep = np.argpartition(-best_scores, min(k, best_scores.shape[1] - 1), axis=1)[:, :k]
        best_scores, best_ids = np.take_along_axis(best_scores, keep, 1), np.take_along_axis(best_ids, keep, 1)
    order = np.argsort(-best_scores, axis=1, kind="stable")
    return np.take_along_axis(best_ids, order, 1)


def recall_at_k(index: VectorIndex, query_ids: npt.NDArray[np.int64], queries: npt.NDArray[np.float32],
                truth: npt.NDArray[np.int64], load: Loader, k: int = K) -> float:
    """Mean share of each query's true top-``k`` found after exact re-ranking of the index's candidates."""
    _, candidates = index.search(queries, index.candidates(k) + 1)
    found = 0
    wanted = 0
    for query_id, query, row, true in zip(query_ids, queries, candidates, truth):
        row = row[(row >= 0) & (row != query_id)]
        ids, vectors = load(row)
        top = ids[np.argsort(-(vectors @ query), kind="stable")[:k]] if len(ids) else ids
        true = true[true >= 0]
        found += len(np.intersect1d(top, true))
        wanted += len(true)
    return found / wanted if wanted else 1.0


def tune(index: VectorIndex, query_ids: npt.NDArray[np.int64], queries: npt.NDArray[np.float32],
         truth: npt.NDArray[np.int64], load: Loader, target: float) -> Tuned:
    """The cheapest search breadth (and re-rank depth) reaching ``target`` recall@10, or the best tried.

    Breadths are tried in doubling steps per re-rank depth; a depth whose recall stops improving (less than
    0.002 per doubling) is left for the next, deeper one.
    """
    if index.config.type == "flat" or not len(queries):
        return Tuned(index.config, 1.0 if index.config.type == "flat" else -1.0, len(queries))
    best: Tuned | None = None
    for settings in _settings(index):
        previous = -1.0
        for config in settings:
            recall = recall_at_k(index.with_config(config), query_ids, queries, truth, load)
            logger.debug("tuning %s: recall@10 %.3f", config.params(), recall)
            if best is None or recall > best.recall + 1e-9:
                best = Tuned(config, recall, len(queries))
            if recall >= target:
                return Tuned(config, recall, len(queries))
            if recall < previous + 0.002:
                break
            previous = recall
    logger.warning("recall@10 %.3f is below the target %.2f at the widest search tried (%s)",
                   best.recall, target, best.config.params())
    return best


def _settings(index: VectorIndex) -> Iterable[list[IndexConfig]]:
    """Lists of configurations of growing breadth, one list per re-rank depth."""
    config = index.config
    if config.type == "hnsw":
        yield [dataclasses.replace(config, ef_search=ef) for ef in (16, 32, 64, 128, 256, 512, 1024)]
        return
    reranks = [config.rerank] if config.type == "ivf" else [config.rerank, 2 * config.rerank, 4 * config.rerank]
    probes = [p for p in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024) if p < config.nlist] + [min(config.nlist, 1024)]
    for rerank in reranks:
        yield [dataclasses.replace(config, nprobe=nprobe, rerank=rerank) for nprobe in probes]
