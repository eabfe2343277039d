"""Shared-memory chunks that carry decoded pixels from the decoding workers to the model, and the two ways
results leave the pool: one record at a time (:class:`EachResult`) or in batches whose pixels are the chunks
themselves (:class:`Batcher`, :class:`DecodedBatch`). See :mod:`.pool` for the workers that fill them.

Every block of shared memory the pool makes is named ``mmr_<pid>_<random>`` after the process that made it, which
holds a shared ``flock`` on it while it is open (:func:`new_shared_memory`). Python's resource tracker unlinks a
dead process's blocks, but a kill of the whole process group (``kill -9 -PGID``, an OOM kill of a container) takes
the tracker along, and each such kill left ~100 MB in ``/dev/shm`` until a reboot;
:func:`remove_leftover_shared_memory`, run by every pool before it makes its first block, unlinks those whose
maker has ended and that nobody holds.
"""

from __future__ import annotations

import dataclasses
import fcntl
import functools
import logging
import math
import os
import queue
import secrets
import time
from multiprocessing.shared_memory import SharedMemory

import numpy as np
import numpy.typing as npt

from ..atomic import process_ended
from .batches import Decoded, Failed

logger = logging.getLogger(__name__)

_PREFIX = "mmr_"  # then the maker's process id, "_", random hex: at most 20 characters (macOS allows 30)
_SHM_FOLDER = "/dev/shm"  # where Linux lists the shared memory of the machine (of the container)
_MIN_AGE_S = 60.0  # a younger block may be one whose maker has not locked it yet


def new_shared_memory(size: int) -> SharedMemory:
    """A new block of shared memory of ``size`` bytes, named after this process and held by it until closed."""
    for _ in range(100):
        try:
            memory = SharedMemory(f"{_PREFIX}{os.getpid()}_{secrets.token_hex(4)}", create=True, size=size)
        except FileExistsError:
            continue
        descriptor = getattr(memory, "_fd", -1)  # CPython keeps the block's descriptor open until close()
        if descriptor >= 0:
            fcntl.flock(descriptor, fcntl.LOCK_SH)
        return memory
    raise FileExistsError("no free shared memory name")


def remove_leftover_shared_memory(folder: str = _SHM_FOLDER, min_age_s: float = _MIN_AGE_S) -> list[str]:
    """Unlink the blocks that :func:`new_shared_memory` made in processes that have ended, this user's only, that
    nobody holds and that are older than ``min_age_s``; returns their names. Where ``folder`` cannot be listed (not
    Linux) there is nothing to do.

    A process id is known only within its PID namespace, and the containers of a pod share ``/dev/shm`` but not
    their process ids: another container's live block may carry the id of a process that has ended here. Its
    maker's lock keeps it.
    """
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    removed = []
    for entry in entries:
        owner = entry.name[len(_PREFIX):].split("_", 1)[0] if entry.name.startswith(_PREFIX) else ""
        try:
            if not owner.isdigit() or not process_ended(int(owner)):
                continue
            stat = entry.stat()
            if stat.st_uid != os.getuid() or time.time() - stat.st_mtime < min_age_s or _held(entry.path):
                continue
            os.unlink(entry.path)
        except OSError:
            continue
        removed.append(entry.name)
    if removed:
        logger.info("removed %d blocks of shared memory left by killed runs", len(removed))
    return removed


def _held(path: str) -> bool:
    """Whether a process holds the block at ``path`` (its maker's shared lock)."""
    descriptor = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(descriptor)  # (which drops the lock it took)
    return False


@functools.cache
def remove_leftovers_once() -> None:
    """:func:`remove_leftover_shared_memory`, the first time a process asks."""
    remove_leftover_shared_memory()


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
        self.memory = new_shared_memory(max(1, rows * math.prod(shape)))
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
