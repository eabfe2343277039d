"""Files touched but not changed: a new modification time over the same bytes (a copy without ``-p``, a sync
tool, a restore from a backup).

Planning hashes such a file (one embedded before, of the same size) and compares the content hash the catalog
holds, instead of marking it pending: an ingest over 210 demo images that found one touched file took 5.49 s,
loading torch and the model only to learn that its bytes were the same, and takes 0.35 s now (the old and the
new code in one run). With ``--checksum`` every embedded file is hashed so, whatever its time says. Hashing
reads each file once, on a few threads (blake2b releases the GIL), as the decoding workers would have.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Callable, Sequence, TypeVar

from ..errors import ImageDecodeError
from ..images.decode import read_image_file
from .batches import content_hash

if TYPE_CHECKING:
    from ..collection.catalog import FileState

T, R = TypeVar("T"), TypeVar("R")
HASH_THREADS = 4  # files read and hashed at once (each held whole, as a decoding worker holds it)


def maybe_touched(state: "FileState | None", size: int) -> bool:
    """Whether a file seen with a new mtime may hold the bytes it was embedded from: same size, a known hash."""
    return state is not None and state.status == "ok" and state.content_hash is not None and state.size == size


def file_hash(path: bytes) -> str | None:
    """The file's content hash as ingestion computes it (:func:`.batches.content_hash`); None if it cannot be
    read."""
    try:
        return content_hash(read_image_file(path))
    except ImageDecodeError:
        return None


def unchanged_bytes(candidates: Sequence[tuple[bytes, str]],
                    hashed: Callable[[], None] | None = None) -> list[bool | None]:
    """For each ``(path, stored hash)``, whether the file's bytes still have that hash (None: it could not be
    read, so nothing is known); ``hashed`` is called as each file is done."""
    found = file_hashes([path for path, _ in candidates], hashed)
    return [None if digest is None else digest == stored for digest, (_, stored) in zip(found, candidates)]


def file_hashes(paths: Sequence[bytes], hashed: Callable[[], None] | None = None) -> list[str | None]:
    """:func:`file_hash` of each of ``paths``; ``hashed`` is called as each file is done."""
    return in_threads(file_hash, paths, hashed)


def in_threads(function: Callable[[T], R], items: Sequence[T], done: Callable[[], None] | None = None) -> list[R]:
    """``function`` of each of ``items``, :data:`HASH_THREADS` at a time (reading and hashing release the GIL);
    ``done`` is called as each is done."""
    if not items:
        return []

    def one(item: T) -> R:
        result = function(item)
        if done is not None:
            done()
        return result

    with ThreadPoolExecutor(min(HASH_THREADS, len(items)), thread_name_prefix="mmr-hash") as pool:
        return list(pool.map(one, items))
