"""Shared-memory chunks that carry decoded pixels from the decoding workers to the model, and the two ways
results leave the pool: one record at a time (:class:`EachResult`) or in batches whose pixels are the chunks
themselves (:class:`Batcher`, :class:`DecodedBatch`). See :mod:`.pool` for the workers that fill them.
"""

from __future__ import annotations

import dataclasses
import math
import queue
from multiprocessing.shared_memory import SharedMemory

import numpy as np
import numpy.typing as npt

from .batches import Decoded, Failed


@dataclasses.dataclass(frozen=True)
class DecodedBatch:
    """Results of :meth:`DecodePool.batches`. The pixels of ``decoded`` are the rows of ``chunks`` taken in
    order (the records' own ``pixels`` fields are empty)."""

    decoded: tuple[Decoded, ...]
    failed: tuple[Failed, ...]
    chunks: tuple[npt.NDArray[np.uint8], ...] = dataclasses.field(repr=False)  # (rows, 3, H, W) each

    @property
    def pixels(self) -> npt.NDArray[np.uint8]:
        """All pixels as one ``(len(decoded), 3, H, W)`` array (a copy unless there is a single chunk)."""
        if len(self.chunks) == 1:
            return self.chunks[0]
        if not self.chunks:
            return np.zeros((0,), dtype=np.uint8)
        return np.concatenate(self.chunks)


class Chunk:
    """Shared memory for the pixels of one group: ``rows`` images of ``shape``."""

    def __init__(self, rows: int, shape: tuple[int, ...]):
        self.memory = SharedMemory(create=True, size=max(1, rows * math.prod(shape)))
        self.rows = np.ndarray((rows, *shape), dtype=np.uint8, buffer=self.memory.buf)

    @property
    def name(self) -> str:
        return self.memory.name

    def close(self) -> None:
        self.rows = None  # the view must go before the mapping can close
        try:
            self.memory.close()
        except BufferError:  # a consumer kept a batch past its lifetime: the mapping goes when its views do
            _orphans.append(self.memory)  # (and SharedMemory.__del__ would complain about them meanwhile)
        self.memory.unlink()


_orphans: list[SharedMemory] = []


class Chunks:
    """The pool's chunks: made as needed up to ``limit``, given back by whoever holds them (thread-safe)."""

    def __init__(self, shape: tuple[int, ...], limit: int, rows: int):
        self.shape = shape
        self.limit = limit
        self.rows = rows
        self.free: queue.SimpleQueue[Chunk] = queue.SimpleQueue()
        self.made: list[Chunk] = []

    def take(self) -> Chunk | None:
        """A free chunk, or None when ``limit`` are all in use (the caller waits for one to come back)."""
        try:
            return self.free.get_nowait()
        except queue.Empty:
            if len(self.made) >= self.limit:
                return None
            self.made.append(Chunk(self.rows, self.shape))
            return self.made[-1]

    def give_back(self, chunk: Chunk) -> None:
        self.free.put(chunk)

    def close(self) -> None:
        for chunk in self.made:
            chunk.close()
        self.made.clear()


class EachResult:
    """Hands results on one by one, each with its own copy of its pixels; chunks go back at once."""

    def __init__(self, chunks: Chunks):
        self.chunks = chunks

    def emit(self, results: list[Decoded | Failed], chunk: Chunk | None) -> list[list[Decoded | Failed]]:
        if chunk is None:
            return [results]
        rows = iter(chunk.rows)
        out = [dataclasses.replace(r, pixels=next(rows).copy()) if isinstance(r, Decoded) else r for r in results]
        self.chunks.give_back(chunk)
        return [out]

    def finish(self) -> list:
        return []


class Batcher:
    """Packs groups of results (each at most ``size``) into batches of at most ``size``, whole groups each."""

    def __init__(self, size: int):
        self.size = size
        self.decoded: list[Decoded] = []
        self.failed: list[Failed] = []
        self.chunks: list[Chunk] = []
        self.views: list[npt.NDArray[np.uint8]] = []

    def emit(self, results: list[Decoded | Failed], chunk: Chunk | None) -> list[tuple[DecodedBatch, list]]:
        full = self.finish() if len(self.decoded) + len(self.failed) + len(results) > self.size else []
        decoded = [r for r in results if isinstance(r, Decoded)]
        self.decoded += decoded
        self.failed += [r for r in results if not isinstance(r, Decoded)]
        if chunk is not None:
            self.chunks.append(chunk)
            if decoded:
                self.views.append(chunk.rows[:len(decoded)])
        elif decoded:  # pixels came in the records (no known shape)
            self.views.append(np.stack([r.pixels for r in decoded]))
        return full + (self.finish() if len(self.decoded) + len(self.failed) >= self.size else [])

    def finish(self) -> list[tuple[DecodedBatch, list]]:
        """The batch being filled (and the chunks it holds), if it holds anything."""
        if not self.decoded and not self.failed:
            return []
        batch = DecodedBatch(tuple(self.decoded), tuple(self.failed), tuple(self.views))
        out = [(batch, self.chunks)]
        self.decoded, self.failed, self.chunks, self.views = [], [], [], []
        return out
