"""The vector half of an import's checks: every value finite, no zero vector, rows at unit length.

:func:`checked_blocks` checks a shard's vectors block by block as :mod:`.import_writer` appends them (a bad
block raises and the shard's transaction rolls back); :func:`unit_blocks` reads rows that passed again, for the
rare re-append of a shard in which some paths were already known.

Memory: one block of :data:`BLOCK_ROWS` rows at a time (64 MiB of float16 at 512-d) plus, when a block needs
renormalising, its float32 copy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np
import numpy.typing as npt

from ..errors import CollectionError

BLOCK_ROWS = 65_536  # vectors checked or landed per step: bounds memory, not results
_NORM_VALUES = 32_768  # values per torch call: torch's grain size (at::internal::GRAIN_SIZE), below which
# it computes on the calling thread
UNIT_TOLERANCE = 2e-3  # |norm - 1| above this counts as "not unit" (float16 input carries ~1e-3 of rounding)


def checked_blocks(path: Path, vectors: Any) -> Iterator[tuple[slice, np.ndarray, int]]:
    """``(rows, vectors ready to store, how many were renormalised)`` for all of ``vectors``, a block at a time.

    A block whose rows are all unit length (within :data:`UNIT_TOLERANCE`) comes in the input's own dtype,
    which saves a conversion when it is the collection's (float16 into float16); any other block comes as
    float32, every row of it renormalised.

    Raises:
        CollectionError: a NaN or infinite value, or a zero vector (no direction to normalise to), naming
            ``path`` and the row.
    """
    for start in range(0, len(vectors), BLOCK_ROWS):
        rows = slice(start, min(start + BLOCK_ROWS, len(vectors)))
        block = np.asarray(vectors[rows])
        norms = row_norms(block)  # NaN or inf anywhere in a row makes its norm so
        if not np.isfinite(norms).all():
            row = int(np.argmin(np.isfinite(norms)))
            raise CollectionError(f"{path} row {start + row} has a NaN or infinite value (or one too large to "
                                  "square); nothing of this shard was imported")
        if (norms == 0).any():
            raise CollectionError(f"{path} row {start + int(np.argmin(norms))} is a zero vector; nothing of this "
                                  "shard was imported")
        yield (rows, *_to_unit(block, norms))


def _to_unit(block: np.ndarray, norms: npt.NDArray[np.float32]) -> tuple[np.ndarray, int]:
    """``block`` as it is when every row is unit length within :data:`UNIT_TOLERANCE`, else float32 with every
    row renormalised; and how many rows were off."""
    off_unit = int((np.abs(norms - 1) > UNIT_TOLERANCE).sum())
    return (block.astype(np.float32) / norms[:, None], off_unit) if off_unit else (block, 0)


def row_norms(block: np.ndarray) -> npt.NDArray[np.float32]:
    """Each row's Euclidean norm, in float32 (NaN or inf where a row holds one, inf past float32's range).

    float16 and float32 go through torch, which widens float16 with the CPU's conversion instructions: 37 ms per
    64 k x 512 float16 block on this project's 2-core machine, where numpy (which converts one value at a time)
    takes 120 ms and a lookup table of float16 squares 60-75 ms. Each call gets fewer values than torch's
    grain size, so it runs on the calling thread: split over torch's OpenMP threads, whose spinning takes the
    core SQLite inserts on, a 10 M import ran at 125,946 vectors/s on 118 CPU-s instead of 147,469 on 89.
    """
    import torch

    if block.dtype not in (np.dtype("=f2"), np.dtype("=f4")):  # float64, or not in this machine's byte order
        as32 = np.asarray(block, np.float32)
        return np.sqrt(np.einsum("ij,ij->i", as32, as32))
    step = max(1, _NORM_VALUES // block.shape[1])
    norms = np.empty(len(block), np.float32)
    # rows are copied into a small buffer of our own first: it stays in cache, and torch wants writable
    # memory (a read-only memory map makes it warn)
    buffer = np.empty((step, block.shape[1]), block.dtype)
    rows, out = torch.from_numpy(buffer), torch.from_numpy(norms)
    for start in range(0, len(block), step):
        count = min(step, len(block) - start)
        np.copyto(buffer[:count], block[start:start + count])
        torch.linalg.vector_norm(rows[:count], dim=1, dtype=torch.float32, out=out[start:start + count])
    return norms


def unit_blocks(vectors: Any, positions: npt.NDArray[np.int64], renormalise: bool
                ) -> Iterator[tuple[slice, np.ndarray, int]]:
    """``(slice of positions, unit rows, how many were renormalised)`` for the given row positions of vectors
    that passed :func:`checked_blocks`, a block at a time, as that function stores them; without
    ``renormalise`` (the check found every row unit length) no norm is computed again."""
    for start in range(0, len(positions), BLOCK_ROWS):
        chunk = positions[start:start + BLOCK_ROWS]
        if len(chunk) and chunk[-1] - chunk[0] + 1 == len(chunk):  # contiguous: a plain slice of the map
            block = np.asarray(vectors[chunk[0]:chunk[-1] + 1])
        else:
            block = np.asarray(vectors[chunk])
        off_unit = 0
        if renormalise:
            block, off_unit = _to_unit(block, row_norms(block))
        yield slice(start, start + len(chunk)), block, off_unit
