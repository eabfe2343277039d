"""Filling a freshly trained IVF index with its inverted lists allocated once, at their final size.

FAISS grows each inverted list as a ``std::vector``: adding block by block leaves up to twice a list's codes
allocated, so a build's index held a third more memory than its codes (400,000 x 512 ``IVF1024,SQfp16``: 528 MB
for 393 MB of codes; at 1 M vectors a build peaked at 2.44 GB against 1.7 GB derived). Here the blocks are read
twice: the first pass assigns each vector to its list (the costly part of an IVF add) and counts the lists'
lengths, each list is then allocated at its length, and the second pass adds the vectors with the assignments
of the first (``add_core`` with precomputed lists), which only encodes them: the same index as
``add_with_ids``, 411 MB for those 393 MB of codes.

Memory: the assignments, 4 bytes a vector (40 MB at 10 M), beside one block of vectors.
"""

from __future__ import annotations

from typing import Callable, Iterable

import faiss
import numpy as np
import numpy.typing as npt

from ..errors import CollectionError

Blocks = Callable[[], Iterable[tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]]]
Progress = Callable[[int, int], None]


def fill_presized(index: faiss.Index, blocks: Blocks, total: int, progress: Progress | None = None) -> int:
    """Add every ``(ids, vectors)`` block that ``blocks()`` yields (called twice: it must yield the same blocks)
    to ``index``, an empty trained IVF index, optionally behind a vector transform (OPQ); returns vectors added.

    ``progress`` gets ``(assigned, total)`` during the first pass, which takes most of the time.

    Raises:
        CollectionError: the second pass saw other blocks than the first (the stored vectors changed).
    """
    ivf = faiss.extract_index_ivf(index)
    wrapped = isinstance(index, faiss.IndexPreTransform)
    transforms = [index.chain.at(i) for i in range(index.chain.size())] if wrapped else []

    def coarse_input(vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        for transform in transforms:
            x = np.ascontiguousarray(transform.apply(x))
        return x

    assignments, shapes, counts, assigned = [], [], np.zeros(ivf.nlist, np.int64), 0
    for ids, vectors in blocks():
        _, lists = ivf.quantizer.search(coarse_input(vectors), 1)
        lists = lists.ravel().astype(np.int32)
        counts += np.bincount(lists, minlength=ivf.nlist)
        assignments.append(lists)
        shapes.append((len(ids), int(ids[0]) if len(ids) else -1))
        assigned += len(ids)
        if progress is not None:
            progress(assigned, total)
    invlists = ivf.invlists
    for list_no in np.flatnonzero(counts).tolist():
        size = invlists.list_size(list_no)
        invlists.resize(list_no, size + int(counts[list_no]))  # allocates exactly that much (from its size)
        invlists.resize(list_no, size)  # and keeps it: the adds below fill it without reallocating
    changed = CollectionError("the stored vectors changed while the index was being built; build it again")
    block = -1
    for block, (ids, vectors) in enumerate(blocks()):
        if block >= len(shapes) or (len(ids), int(ids[0]) if len(ids) else -1) != shapes[block]:
            raise changed
        x = coarse_input(vectors)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        lists = assignments[block].astype(np.int64)
        ivf.add_core(len(x), faiss.swig_ptr(x), faiss.swig_ptr(ids), faiss.swig_ptr(lists))
    if block + 1 != len(shapes):
        raise changed
    if wrapped:
        index.ntotal = ivf.ntotal  # the transform's wrapper counts what passes through its own add only
    return assigned
