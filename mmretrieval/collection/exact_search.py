"""Exact top-k search over an allowed set of ids, scored from their stored vectors a chunk at a time, and FAISS
results cleared of their ``-1`` padding (both :func:`exact_search` and
:meth:`VectorIndex.search <mmretrieval.collection.index.VectorIndex.search>` return hits this way). Needs no FAISS.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import numpy.typing as npt

_EXACT_CHUNK = 65_536  # allowed vectors scored per matmul in a filtered search: bounds memory, not results

VectorLoader = Callable[[npt.NDArray[np.int64]], "tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]"]


def exact_search(queries: npt.NDArray[np.float32], k: int, allowed_ids: npt.NDArray[np.int64],
                 load: VectorLoader, chunk: int = _EXACT_CHUNK
                 ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Exact top-``k`` among ``allowed_ids``, scoring their vectors (from ``load``) ``chunk`` ids at a time.

    Filtered search on an approximate index misses allowed ids outside the probed lists or graph region;
    scoring the allowed set directly is exact, and as fast as the index when the filter is selective.

    Args:
        queries: ``(q, dim)`` unit vectors.
        k: hits wanted per query.
        allowed_ids: the candidate ids.
        load: ids -> ``(ids found, (n, dim) vectors)``; unknown ids are left out.
        chunk: ids scored per matmul, so memory stays bounded whatever the allowed set's size.

    Returns:
        ``(scores, ids)`` as :meth:`VectorIndex.search` returns them.
    """
    queries = np.asarray(queries, dtype=np.float32).reshape(len(queries), -1)
    best_scores = np.full((len(queries), 0), -np.inf, np.float32)
    best_ids = np.full((len(queries), 0), -1, np.int64)
    allowed_ids = np.unique(np.asarray(allowed_ids, dtype=np.int64))
    for start in range(0, len(allowed_ids), chunk):
        ids, vectors = load(allowed_ids[start:start + chunk])
        if not len(ids):
            continue
        scores = (queries @ vectors.T).astype(np.float32)
        best_scores = np.concatenate([best_scores, scores], axis=1)
        best_ids = np.concatenate([best_ids, np.broadcast_to(ids, scores.shape)], axis=1)
        keep = np.argsort(-best_scores, axis=1, kind="stable")[:, :k]
        best_scores, best_ids = np.take_along_axis(best_scores, keep, 1), np.take_along_axis(best_ids, keep, 1)
    return drop_padding(best_scores, best_ids, k)


def drop_padding(scores: npt.NDArray[np.float32], ids: npt.NDArray[np.int64], k: int
                 ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """``(scores, ids)`` with FAISS's padding (id ``-1``) moved to the end of each row with score ``-inf``, rows
    best first, and the columns that hold only padding cut off (at most ``k`` wide)."""
    if ids.size and ids.min() >= 0:  # nothing missing: FAISS's rows are already best first
        return scores, ids
    scores = np.where(ids >= 0, scores, -np.inf).astype(np.float32)
    order = np.argsort(-scores, axis=1, kind="stable")  # filtering HNSW results leaves holes mid-row
    scores, ids = np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
    width = min(k, int((ids >= 0).sum(axis=1).max())) if len(ids) else 0
    return scores[:, :width], ids[:, :width]
