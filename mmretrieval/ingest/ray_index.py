"""Building a large IVF index in parallel on Ray: train once, add shards in parallel, merge on disk.

The FAISS recipe for indexes past one machine's patience (its ``demos/demo_ondisk_ivf.py``, and how
clip-retrieval's LAION indexes were built)::

    driver   train an empty index on a sample (the collection's own choice of type and parameters)
    tasks    each adds one block of (global id, vector) to a copy of the trained index, writes it as a shard
    driver   faiss.contrib.ondisk.merge_ondisk: the shards' inverted lists -> one .ivfdata file

The merged index keeps its inverted lists in the ``.ivfdata`` file (memory-mapped by FAISS: page cache, not
anonymous memory) and only the coarse quantizer and list offsets in RAM. Ids are catalog ids throughout,
so the result answers exactly as an index filled in one process from the same trained copy.

A merged index must not be changed afterwards in that form. Read back with a plain ``faiss.read_index``, its
inverted lists are writable views of the ``.ivfdata`` file: ``add_with_ids`` or ``remove_ids`` then rewrite
that file in place, and every saved index file that refers to it no longer matches it (tried with FAISS
1.15.1: after adding 10 vectors to a loaded 5,000-vector merged index and removing 5 ids (it reported 3
removed), another process reading the saved pair found 5,000 entries but 4,873 distinct ids, ids never
removed among the missing). A collection's index is changed after every ingest (its upkeep catches readers
up with adds and removals), so :class:`RayIndexFill`, which ``mmr index --ray`` uses, copies the merged lists
into ordinary in-memory lists (:func:`lists_into_memory`) and deletes the ``.ivfdata`` file: the collection
then saves one self-contained index file, exactly as a one-process build does. The
parallel part is the add (assigning every vector to its list and encoding it), which is what costs hours at
10 M vectors; the copy is one pass over the codes.

Blocks are streamed from the catalog's segments (live rows only) and shipped through Ray's object store,
at most ``in_flight`` at a time, so the driver never holds more than that many blocks. Shards are written to
``work_dir``, which must be a folder every node reaches (on one machine, any folder).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import faiss
import numpy as np
import numpy.typing as npt

from ..collection.index import VectorIndex
from ..errors import CollectionError

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (vectors added, total)
Blocks = Iterable["tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]"]


@dataclass(frozen=True)
class ShardPlan:
    """How to cut the add phase into Ray tasks."""

    in_flight: int = 4  # blocks shipped and being added at once (bounds driver and object-store memory)
    cpus_per_task: float = 1.0  # FAISS threads each add task may use (it is told so)
    rows_per_task: int = 65_536  # most vectors one add task gets (a larger block is cut); one shard each

    def __post_init__(self) -> None:
        if self.in_flight < 1 or self.rows_per_task < 1 or self.cpus_per_task <= 0:
            raise CollectionError(f"a shard plan needs in_flight and rows_per_task of at least 1 and cpus_per_task "
                                  f"above 0, got {self}")


def _add_shard(trained: npt.NDArray[np.uint8], ids: npt.NDArray[np.int64], vectors: npt.NDArray[np.float32],
               work_dir: str, threads: int) -> str:
    """A Ray task: add one block to a copy of the trained index and write it as a shard; returns its path."""
    faiss.omp_set_num_threads(max(1, threads))
    index = faiss.deserialize_index(trained)
    faiss.extract_index_ivf(index).make_direct_map(False)
    index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), np.ascontiguousarray(ids, dtype=np.int64))
    path = os.path.join(work_dir, f"shard-{uuid.uuid4().hex}.faiss")
    faiss.write_index(index, path + ".partial")
    os.replace(path + ".partial", path)  # a retried task leaves at most an unused .partial, never half a shard
    return path


def add_on_ray(trained_index: faiss.Index, blocks: Blocks, total: int, work_dir: str | os.PathLike,
               ivfdata_path: str | os.PathLike, plan: ShardPlan = ShardPlan(),
               progress: Progress | None = None, address: str | None = None) -> faiss.Index:
    """Fill ``trained_index`` (an empty, trained IVF index) with ``blocks`` of (ids, vectors), in parallel.

    Args:
        trained_index: from :meth:`~mmretrieval.collection.index.VectorIndex.trained` (IVF types only).
        blocks: (catalog ids, unit vectors) blocks, e.g. ``catalog.iter_vectors()``.
        total: how many vectors ``blocks`` yields (for progress).
        work_dir: where shards are written; a folder all Ray nodes reach. Shards are deleted after the merge.
        ivfdata_path: the merged inverted lists' file (beside the index file that will refer to it).
        plan: blocks in flight and CPUs per task.
        progress: ``(added, total)`` after each shard.
        address: the Ray cluster to join; None: ``$RAY_ADDRESS``, else a local Ray (or the connection this
            process already has).

    Returns:
        ``trained_index`` itself, now holding every vector, its inverted lists on disk in ``ivfdata_path``.

    Raises:
        CollectionError: the index is not an empty trained IVF index, Ray is missing or the cluster cannot
            be reached.
    """
    from faiss.contrib.ondisk import merge_ondisk

    from .ray_connect import ray_connection

    _check_mergeable(trained_index)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    shards: list[str] = []
    try:
        with ray_connection(address) as _:
            shards = _add_all(trained_index, blocks, total, str(work), plan, progress)
        with _c_stdout_to_stderr():  # FAISS prints "resizing <file> to <n> bytes" on stdout, where results go
            merge_ondisk(trained_index, shards, str(ivfdata_path))
    finally:
        for path in shards:
            Path(path).unlink(missing_ok=True)
        for partial in work.glob("shard-*.partial"):
            partial.unlink(missing_ok=True)
    if trained_index.ntotal != total:
        raise CollectionError(f"the merged index holds {trained_index.ntotal} vectors, expected {total}; the "
                              "catalog changed during the build, run the build again")
    return trained_index


def _add_all(trained_index: faiss.Index, blocks: Blocks, total: int, work_dir: str, plan: ShardPlan,
             progress: Progress | None) -> list[str]:
    import ray

    trained = ray.put(faiss.serialize_index(trained_index))
    add = ray.remote(num_cpus=plan.cpus_per_task, max_retries=3)(_add_shard)
    threads = max(1, int(plan.cpus_per_task))
    waiting: dict[Any, int] = {}
    shards: list[str] = []
    added = 0

    def collect(until: int) -> None:
        nonlocal added
        while len(waiting) > until:
            ready, _ = ray.wait(list(waiting), num_returns=1)
            shards.append(ray.get(ready[0]))
            added += waiting.pop(ready[0])
            if progress:
                progress(added, total)

    for block_ids, block_vectors in blocks:
        for start in range(0, len(block_ids), plan.rows_per_task):
            ids, vectors = block_ids[start:start + plan.rows_per_task], block_vectors[start:start + plan.rows_per_task]
            waiting[add.remote(trained, ray.put(ids), ray.put(vectors), work_dir, threads)] = len(ids)
            collect(plan.in_flight - 1)
    collect(0)
    return shards


@contextmanager
def _c_stdout_to_stderr() -> Iterator[None]:
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _check_mergeable(index: faiss.Index) -> None:
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError as exc:
        raise CollectionError("a parallel build needs an IVF index (ivf or ivfpq), not flat or HNSW; build those "
                              "with `mmr index` in one process") from exc
    if not index.is_trained or index.ntotal or ivf.ntotal:
        raise CollectionError("a parallel build starts from an empty, trained index; train one first "
                              "(VectorIndex.trained)")


def lists_into_memory(index: faiss.Index) -> None:
    """Replace ``index``'s inverted lists (a merged index's on-disk ones) by an in-memory copy.

    Afterwards adds and removals change memory only, and ``faiss.write_index`` writes one self-contained
    file; the ``.ivfdata`` file the lists came from is no longer used and may be deleted.
    """
    ivf = faiss.extract_index_ivf(index)
    on_disk = ivf.invlists
    in_memory = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    for list_no in range(ivf.nlist):
        size = on_disk.list_size(list_no)
        if size:
            ids, codes = on_disk.get_ids(list_no), on_disk.get_codes(list_no)
            in_memory.add_entries(list_no, size, ids, codes)
            on_disk.release_ids(list_no, ids)
            on_disk.release_codes(list_no, codes)
    ivf.replace_invlists(in_memory, True)  # frees the on-disk lists (merge_ondisk gave the index their ownership)
    in_memory.this.disown()  # the index owns the copy now; Python must not free it too


@dataclass(frozen=True)
class RayIndexFill:
    """Fills a collection's trained, empty index on Ray (an :data:`~mmretrieval.collection.upkeep.IndexFiller`).

    IVF indexes (``ivf``, ``ivfpq``) are filled by :func:`add_on_ray` and their lists copied into memory;
    flat and HNSW indexes are filled in this process, as without Ray (they have no lists to add in parallel).
    """

    work_dir: str  # shards and the merged lists go in a fresh folder under it; every node must reach it
    address: str | None = None  # cluster to join; None: $RAY_ADDRESS, else a local Ray
    plan: ShardPlan = ShardPlan()  # blocks in flight, CPUs per add task
    progress: Progress | None = None  # (added, total) after each shard
    clean_stale: bool = False  # first delete build folders a killed build left (only if no one else uses work_dir)

    def __post_init__(self) -> None:
        """Check the work folder and the cluster address now, before the index is trained (minutes at scale), not
        after."""
        from .ray_connect import check_reachable
        from .ray_segments import check_utf8_location

        check_utf8_location(os.fspath(self.work_dir), "give --ray-work a folder whose path is UTF-8 (one every node "
                                                      "reaches)")
        target = self.address or os.environ.get("RAY_ADDRESS")
        if target:
            check_reachable(target)

    def __call__(self, index: VectorIndex, blocks: Blocks, total: int) -> VectorIndex:
        if self.clean_stale:
            for folder in sorted(Path(self.work_dir).glob("index-build-*")):
                logger.info("removing %s, left by an interrupted build", folder)
                shutil.rmtree(folder, ignore_errors=True)
        if index.config.type not in ("ivf", "ivfpq"):
            logger.info("a %s index has no inverted lists to fill in parallel: adding %d vectors in this process",
                        index.config.type, total)
            for ids, vectors in blocks:
                index.add(ids, vectors)
            return index
        build_dir = Path(self.work_dir) / f"index-build-{uuid.uuid4().hex}"
        try:
            merged = add_on_ray(index.faiss_index, blocks, total, build_dir, build_dir / "merged.ivfdata", self.plan,
                                self.progress, self.address)
            lists_into_memory(merged)
        finally:
            shutil.rmtree(build_dir, ignore_errors=True)
        return index

